#!/usr/bin/env bash
# Bazel's --workspace_status_command: stable keys for stamped binaries. Only the commit and whether the tree
# had changes, never a time, so two builds of one commit are identical.
set -euo pipefail
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
state=clean
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  state=dirty
fi
echo "STABLE_GIT_COMMIT $commit"
echo "STABLE_GIT_TREE_STATE $state"
