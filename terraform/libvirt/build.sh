#!/usr/bin/env bash
# Builds the libvirt Terraform provider the qemu module uses (dmacvicar/libvirt v0.7.6; the registry is not
# reachable here) from the Go module proxy, with the versions and checksums pinned in go.mod.pin/go.sum.pin,
# in a throwaway module. The binary is cached by the inputs' hash.
# Usage: terraform/libvirt/build.sh <output file>
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out=${1:?usage: build.sh <output file>}
cache="${CONSTELLATION_CACHE:-/var/cache/constellation}/terraform"
key=$(cat "$here/main.go" "$here/go.mod.pin" "$here/go.sum.pin" <(go version) | sha256sum | cut -c1-16)
bin="$cache/terraform-provider-libvirt-$key"
if [ ! -x "$bin" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp "$here/main.go" "$work/main.go"
  sed -i '/^\/\/go:build ignore$/d' "$work/main.go"
  cp "$here/go.mod.pin" "$work/go.mod"
  cp "$here/go.sum.pin" "$work/go.sum"
  mkdir -p "$cache"
  echo "building terraform-provider-libvirt v0.7.6 from the Go module proxy"
  (cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags=-buildid= -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
fi
install -m 0755 "$bin" "$out"
