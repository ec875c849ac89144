#!/usr/bin/env bash
# Builds the node image: a UKI (systemd-stub 252 + Linux 6.1 + initrd + command line with roothash=), the
# erofs root partition, its dm-verity hash partition and a bootable GPT disk for QEMU.
#
# Usage: image/mkosi/build.sh [--bootstrapper FILE] [--out DIR] [--no-cache] [--update-lock]
#   --bootstrapper  the bootstrapper binary to pack (default: built with Bazel from
#                   //bootstrapper/cmd/bootstrapper)
#   --out           where to link the finished image (default: out/image; empty: no link)
#   --no-cache      build even when an image of the same inputs exists, into a new directory outside the
#                   cache (reproducibility checks compare it with the cached one)
#   --update-lock   rewrite packages.lock from what the build installed instead of checking it
#
# Images are cached by a hash of their inputs (this directory, the bootstrapper, the tools tree's stamp) in
# $MKOSI_IMAGES/<hash>; a re-run with the same inputs only re-links. Every build checks the package
# versions it installed against packages.lock: Debian's archive moves, and an image built from other
# versions would not reproduce the published measurements.
#
# Prints the image directory on stdout.
set -euo pipefail

# Resolved, so that a run from Bazel's execroot (symlinks to the sources) hashes and reads the same files.
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=image/mkosi/env.sh
source "$here/env.sh"

UKI_MAX_BYTES=$((60 * 1024 * 1024))

bootstrapper="" out="$repo/out/image" use_cache=1 update_lock=0
while [ $# -gt 0 ]; do
  case "$1" in
  --bootstrapper) bootstrapper=$(realpath "$2"); shift 2 ;;
  --out) out=$2; shift 2 ;;
  --no-cache) use_cache=0; shift ;;
  --update-lock) update_lock=1; use_cache=0; shift ;;
  *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

log() { printf '[image-build] %s\n' "$*" >&2; }

tools=$("$here/setup.sh")
if [ -z "$bootstrapper" ]; then
  log "building //bootstrapper/cmd/bootstrapper with Bazel"
  (cd "$repo" && bazel/bazel build //bootstrapper/cmd/bootstrapper >&2)
  bootstrapper="$repo/bazel-bin/bootstrapper/cmd/bootstrapper/bootstrapper_/bootstrapper"
fi
[ -x "$bootstrapper" ] || { log "bootstrapper binary $bootstrapper is missing or not executable"; exit 1; }

# The input hash: every file of the image definition, the bootstrapper's bytes and the tools tree's stamp.
inputs=$(
  cd "$here"
  find . -type f ! -name '*.md' ! -path './groundtruth/*' -print0 | sort -z | xargs -0 sha256sum
  sha256sum <"$bootstrapper" | sed 's/-$/bootstrapper/'
  cat "$tools/.constellation-stamp"
)
key=$(printf '%s' "$inputs" | sha256sum | cut -c1-32)
dest="$MKOSI_IMAGES/$key"
mkdir -p "$MKOSI_IMAGES" "$MKOSI_PACKAGES"

link_out() {
  [ -n "$out" ] || return 0
  mkdir -p "$(dirname "$out")"
  ln -sfn "$1" "$out"
}

if [ "$use_cache" = 1 ] && [ -f "$dest/SHA256SUMS" ]; then
  log "image for these inputs already built: $dest"
  link_out "$dest"
  echo "$dest"
  exit 0
fi

# Builds run one at a time: they share the package cache.
exec 9>"$MKOSI_CACHE/.build.lock"
flock 9

work=$(mktemp -d "$MKOSI_CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out" "$work/ws" "$work/extra/usr/bin"
install -m 0755 "$bootstrapper" "$work/extra/usr/bin/bootstrapper"

mkosi() {
  PYTHONPATH="$tools/usr/lib/python3/dist-packages" /usr/bin/python3 -m mkosi \
    --tools-tree="$tools" --sandbox-tree="$here/mkosi.sandbox" \
    --package-cache-dir="$MKOSI_PACKAGES" --workspace-dir="$work/ws" --output-dir="$work/out" "$@"
}

start=$(date +%s)
log "building the initrd"
(cd "$here/initrd" && mkosi --force build) >"$work/initrd.log" 2>&1 || {
  tail -30 "$work/initrd.log" >&2
  log "initrd build failed (log above)"
  exit 1
}
log "building the image"
(cd "$here" && mkosi --initrd="$work/out/initrd.cpio.zst" --extra-tree="$work/extra" --force build) \
  >"$work/image.log" 2>&1 || {
  tail -30 "$work/image.log" >&2
  log "image build failed (log above)"
  exit 1
}
log "mkosi took $(($(date +%s) - start)) s"

# Package versions: one line per package, "<image|initrd|tools> <name> <version>".
manifest_versions() {
  /usr/bin/python3 -c '
import json, sys
for p in json.load(open(sys.argv[2]))["packages"]:
    print(sys.argv[1], p["name"], p["version"])
' "$1" "$2" | sort
}
{
  manifest_versions image "$work/out/constellation.manifest"
  manifest_versions initrd "$work/out/initrd.manifest"
  chroot "$tools" dpkg-query -W -f 'tools ${Package} ${Version}\n' | sort
} >"$work/packages.lock"
lock="$here/packages.lock"
if [ "$update_lock" = 1 ]; then
  {
    echo "# Every package version in the node image, its initrd and the tools tree that built them."
    echo "# image/mkosi/build.sh fails when a build installs anything else; after a deliberate update"
    echo "# (Debian point release, security fix) run image/mkosi/build.sh --update-lock and commit this file."
    cat "$work/packages.lock"
  } >"$lock"
  log "wrote $lock"
elif ! diff -u <(grep -v '^#' "$lock") "$work/packages.lock" >"$work/lock.diff"; then
  cat "$work/lock.diff" >&2
  log "the build installed other package versions than packages.lock pins (diff above: - pinned, + installed)."
  log "Debian's archive has moved. Review the change, then run image/mkosi/build.sh --update-lock and commit."
  exit 1
fi

# Name the artifacts independently of mkosi's naming and check what the rest of the project relies on.
o="$work/out"
mkdir -p "$work/image"
cp --reflink=auto "$o/constellation.efi" "$work/image/constellation.efi"
cp --reflink=auto "$o/constellation.root-x86-64.raw" "$work/image/root.erofs"
cp --reflink=auto "$o/constellation.root-x86-64-verity.raw" "$work/image/root.verity"
cp --reflink=auto "$o/constellation.raw" "$work/image/disk.raw"
cp "$o/systemd-bootx64.efi" "$work/image/systemd-bootx64.efi"
cp "$o/constellation.manifest" "$work/image/manifest.json"
cp "$o/initrd.manifest" "$work/image/initrd-manifest.json"
size=$(stat -c %s "$work/image/constellation.efi")
if [ "$size" -ge "$UKI_MAX_BYTES" ]; then
  log "the UKI is $size bytes; it must stay below $UKI_MAX_BYTES (check the initrd's packages and modules)"
  exit 1
fi
(cd "$work/image" && sha256sum constellation.efi root.erofs root.verity disk.raw systemd-bootx64.efi >SHA256SUMS)
if [ "$use_cache" = 0 ] && [ "$update_lock" = 0 ]; then
  # A rebuild for comparison must not replace the cached image it is compared with.
  dest=$(mktemp -d "$MKOSI_CACHE/rebuild.XXXXXX")
  rmdir "$dest"
fi
rm -rf "$dest.tmp"
mv "$work/image" "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
log "image ready: $dest (UKI $((size / 1024 / 1024)) MiB)"
cat "$dest/SHA256SUMS" >&2
link_out "$dest"
echo "$dest"
