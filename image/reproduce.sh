#!/usr/bin/env bash
# Reproduces a published node image's measurements from this source tree: rebuilds the image, precomputes
# the PCRs its UKI gives and compares them with a published measurements.json. Exit code 0 only if every
# PCR matches; otherwise each differing PCR is named (constellation image compare).
#
# Usage: image/reproduce.sh --measurements FILE [--public-key FILE] [--signature FILE] [--bundle DIR|FILE.tar]
#                           [--boot-path direct|systemd-boot] [--cli FILE] [build.sh flags ...]
#   --measurements  the published measurements.json
#   --public-key    the publisher's cosign public key: the file's signature (--signature, default
#                   <file>.sig) must verify, or nothing is compared
#   --bundle        the release's package bundle: the image is built only from it, with every address but
#                   the bundle's own loopback repository blocked. Without it, the image is built from the
#                   live Debian archive with --locked, which works only while the archive still serves
#                   exactly the versions of image/mkosi/packages.lock
#   --boot-path     how the published measurements boot the UKI (default direct; systemd-boot uses the
#                   image's own systemd-bootx64.efi)
#   --cli           the constellation CLI to compare with (default: built with Bazel)
# Other arguments (--bootstrapper, --imagepackages) go to image/mkosi/build.sh.
set -euo pipefail

here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
repo="$(cd "$here/.." && pwd)"
log() { printf '[reproduce] %s\n' "$*" >&2; }

measurements="" public_key="" signature="" bundle="" boot_path=direct cli=""
build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
  --measurements) measurements=$(realpath "$2"); shift 2 ;;
  --public-key) public_key=$(realpath "$2"); shift 2 ;;
  --signature) signature=$(realpath "$2"); shift 2 ;;
  --bundle) bundle=$(realpath "$2"); shift 2 ;;
  --boot-path) boot_path=$2; shift 2 ;;
  --cli) cli=$(realpath "$2"); shift 2 ;;
  --bootstrapper | --imagepackages) build_args+=("$1" "$(realpath "$2")"); shift 2 ;;
  *) log "unknown argument $1 (see the header of $0)"; exit 2 ;;
  esac
done
[ -n "$measurements" ] || { log "--measurements is required (see the header of $0)"; exit 2; }
[ -f "$measurements" ] || { log "$measurements does not exist"; exit 2; }

if [ -z "$cli" ]; then
  (cd "$repo" && bazel/bazel build //cli/cmd/constellation >&2)
  cli="$repo/bazel-bin/cli/cmd/constellation/constellation_/constellation"
fi

if [ -n "$bundle" ]; then
  log "rebuilding the image from this tree and the package bundle $bundle (no archive access)"
  build_args+=(--bundle "$bundle")
else
  log "rebuilding the image from this tree and the live Debian archive (--locked: it must still serve image/mkosi/packages.lock)"
  build_args+=(--locked)
fi
if ! image=$("$repo/image/mkosi/build.sh" --out '' "${build_args[@]}"); then
  if [ -z "$bundle" ]; then
    log "the image could not be rebuilt from the archive as the release's lock pins it; pass the release's package bundle with --bundle"
  fi
  exit 1
fi
log "rebuilt image: $image"

compare=(image compare "$image/constellation.efi" --measurements "$measurements" --boot-path "$boot_path")
[ "$boot_path" != systemd-boot ] || compare+=(--boot-loader "$image/systemd-bootx64.efi")
[ -z "$public_key" ] || compare+=(--public-key "$public_key")
[ -z "$signature" ] || compare+=(--signature "$signature")
exec "$cli" "${compare[@]}"
