#!/usr/bin/env bash
# Fails when the admin CLI links a package it must not: the local provider's runtime (node manager, PID 1,
# network, launcher, dm-verity, swtpm, component server, the provider itself) or the Terraform plugin SDK.
# The CLI only drives Terraform and talks to nodes; what it needs of the local provider is in
# localprovider/providerinfo. Prints the CLI's package count.
#   --self-test  shows the check can fail: a copy of the tree whose CLI imports the provider must fail it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

module=github.com/constellation-go/constellation
# Of localprovider/ the CLI may link providerinfo only.
forbidden="^($module/(localprovider|internal/tpm/swtpm)(/|\$)|github.com/hashicorp/terraform-plugin-|github.com/vishvananda/)"
allowed="^$module/localprovider/providerinfo\$"

check() { # dir
  local deps bad
  deps=$(cd "$1" && go list -deps ./cli/cmd/constellation)
  bad=$(grep -E "$forbidden" <<<"$deps" | grep -v -E "$allowed" || true)
  if [ -n "$bad" ]; then
    echo "the CLI (cli/cmd/constellation) links packages it must not:" >&2
    echo "$bad" | sed 's/^/  /' >&2
    echo "Import the constants it needs from a dependency-free package (e.g. localprovider/providerinfo) instead." >&2
    return 1
  fi
  echo "cli/cmd/constellation: $(wc -l <<<"$deps") packages, none of the local runtime or the Terraform plugin SDK"
}

if [ "${1:-}" = "--self-test" ]; then
  copy=$(mktemp -d)
  trap 'rm -rf "$copy"' EXIT
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | xargs -0 cp --parents -t "$copy"
  check "$copy" >/dev/null
  printf 'package cmd\n\nimport _ "%s/localprovider/tfprovider"\n' "$module" >"$copy/cli/internal/cmd/selftest.go"
  if check "$copy" >/dev/null 2>&1; then
    echo "self-test: a CLI that imports the provider went unnoticed" >&2
    exit 1
  fi
  echo "self-test: passed"
  exit 0
fi
check .
