#!/usr/bin/env bash
# Fails when a BUILD file or MODULE.bazel's use_repo calls differ from what `make generate` would write,
# e.g. after a Go import was added without regenerating. Changes nothing in the work tree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bazel=bazel/bazel
status=0

gazelle_diff() { # repo_root
  "$bazel" run //:gazelle -- -mode=diff -repo_root="$1" "$1" 2>&1
}

# --self-test proves the check can fail: in a copy of the tree, a Go file gains an import that its BUILD
# file lacks, and the gazelle check must report it.
if [ "${1:-}" = "--self-test" ]; then
  # shellcheck source=bazel/env.sh
  source bazel/env.sh
  # The copy must be visible inside the Bazel chroot, which mounts the output root.
  copy=$(mktemp -d "$BAZEL_OUTPUT_ROOT/check-generated-selftest.XXXXXX")
  trap 'rm -rf "$copy"' EXIT
  git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$copy"
  if ! gazelle_diff "$copy" >/dev/null; then
    echo "self-test: the unchanged copy was reported as stale" >&2
    exit 1
  fi
  printf 'package versions\n\nimport _ "github.com/spf13/afero"\n' >"$copy/internal/versions/selftest.go"
  if out=$(gazelle_diff "$copy"); then
    echo "self-test: an import missing from a BUILD file went unnoticed" >&2
    exit 1
  fi
  echo "$out" | grep -q 'com_github_spf13_afero' || { echo "self-test: unexpected diff: $out" >&2; exit 1; }
  echo "self-test: the stale-BUILD check fails on a missing import, as it must"
  exit 0
fi

if ! out=$(gazelle_diff "$PWD"); then
  echo "$out" | grep -v '^\(INFO\|WARNING\|Loading\|Analyzing\|Computing\)' >&2 || true
  echo "BUILD files are stale: run 'make generate' and commit the result." >&2
  status=1
fi

# bazel mod tidy rewrites MODULE.bazel in place: compare against a copy and put the original back.
backup=$(mktemp)
cp MODULE.bazel "$backup"
restore() { cp "$backup" MODULE.bazel; rm -f "$backup"; }
trap restore EXIT
"$bazel" mod tidy >/dev/null 2>&1 || { echo "bazel mod tidy failed" >&2; exit 1; }
if ! diff -u "$backup" MODULE.bazel >&2; then
  echo "MODULE.bazel's use_repo calls are stale: run 'make generate' and commit the result." >&2
  status=1
fi
exit $status
