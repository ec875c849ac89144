#!/usr/bin/env bash
# Builds the node image: a UKI (systemd-stub 252 + Linux 6.1 + initrd + command line with roothash=), the
# erofs root partition, its dm-verity hash partition and a bootable GPT disk for QEMU.
#
# Usage: image/mkosi/build.sh [--bootstrapper FILE] [--imagepackages FILE] [--out DIR] [--no-cache]
#                             [--locked] [--lock FILE] [--update-lock] [--bundle DIR|FILE.tar]
#                             [--save-bundle DIR|FILE.tar]
#   --bootstrapper   the bootstrapper binary to pack (default: built with Bazel)
#   --imagepackages  the image/cmd/imagepackages tool (default: built with Bazel)
#   --out            where to link the finished image (default: out/image; empty: no link)
#   --no-cache       build even when an image of the same inputs exists, into a new directory outside the
#                    cache (reproducibility checks compare it with the cached one)
#   --locked         fail unless the image holds exactly the packages of the lock (release builds; also
#                    CONSTELLATION_LOCKED=1); without it, other versions are reported in a notice and the
#                    build goes on
#   --lock           the lock to compare with (default: image/mkosi/packages.lock)
#   --update-lock    build from the archive and rewrite packages.lock from what the build installed
#   --bundle         build only from the packages of a bundle (saved by --save-bundle), with every network
#                    address but the bundle's own loopback repository blocked: no archive access
#   --save-bundle    after the build, save every package it used (verified by sha256) as a bundle: a
#                    directory, or a tar if the name ends in .tar
#
# From the archive (the default), apt installs the versions Debian serves today. Every build records what
# went in (name, version, architecture, sha256 of each .deb) in <image>/packages.lock and keeps the .deb
# files in <image>/bundle (hard links into the package cache), then compares the record with the committed
# lock: a difference is a notice (the image's measurements differ from a release's), or an error with
# --locked.
#
# Images are cached by a hash of their inputs (this directory except the lock, the bootstrapper, the tools
# tree's packages and, with --bundle, the bundle's packages) in $MKOSI_IMAGES/<hash>; a re-run with the same
# inputs only re-links and re-checks the lock.
#
# Prints the image directory on stdout.
set -euo pipefail

# Resolved, so that a run from Bazel's execroot (symlinks to the sources) hashes and reads the same files.
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=image/mkosi/env.sh
source "$here/env.sh"

UKI_MAX_BYTES=$((60 * 1024 * 1024))

# CONSTELLATION_LOCKED=1 makes every build of the tree strict (release builds), as --locked does here.
bootstrapper="" imagepackages="" out="$repo/out/image" use_cache=1 update_lock=0 locked=0
[ "${CONSTELLATION_LOCKED:-}" != 1 ] || locked=1
lock="$here/packages.lock" bundle="" save_bundle=""
while [ $# -gt 0 ]; do
  case "$1" in
  --bootstrapper) bootstrapper=$(realpath "$2"); shift 2 ;;
  --imagepackages) imagepackages=$(realpath "$2"); shift 2 ;;
  --out) out=$2; shift 2 ;;
  --no-cache) use_cache=0; shift ;;
  --locked) locked=1; shift ;;
  --lock) lock=$(realpath "$2"); shift 2 ;;
  --update-lock) update_lock=1; use_cache=0; shift ;;
  --bundle) bundle=$(realpath "$2"); shift 2 ;;
  --save-bundle) save_bundle=$(realpath -m "$2"); shift 2 ;;
  *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

log() { printf '[image-build] %s\n' "$*" >&2; }

if [ "$update_lock" = 1 ] && [ -n "$bundle" ]; then
  log "--update-lock records what the archive serves today; it does not go with --bundle"
  exit 2
fi

targets=()
[ -n "$bootstrapper" ] || targets+=(//bootstrapper/cmd/bootstrapper)
[ -n "$imagepackages" ] || targets+=(//image/cmd/imagepackages)
if [ ${#targets[@]} -gt 0 ]; then
  log "building ${targets[*]} with Bazel"
  (cd "$repo" && bazel/bazel build "${targets[@]}" >&2)
  [ -n "$bootstrapper" ] || bootstrapper="$repo/bazel-bin/bootstrapper/cmd/bootstrapper/bootstrapper_/bootstrapper"
  [ -n "$imagepackages" ] || imagepackages="$repo/bazel-bin/image/cmd/imagepackages/imagepackages_/imagepackages"
fi
[ -x "$bootstrapper" ] || { log "bootstrapper binary $bootstrapper is missing or not executable"; exit 1; }
[ -x "$imagepackages" ] || { log "imagepackages binary $imagepackages is missing or not executable"; exit 1; }
command -v dpkg-deb >/dev/null || { log "dpkg-deb is missing (Debian's dpkg package)"; exit 1; }

mkdir -p "$MKOSI_CACHE" "$MKOSI_IMAGES" "$MKOSI_PACKAGES"
work=$(mktemp -d "$MKOSI_CACHE/build.XXXXXX")
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# With a bundle, its packages are checked and served as two apt repositories on loopback (bookworm for the
# image and initrd, trixie for the tools tree); nothing else is reachable during the build.
mode="archive"
if [ -n "$bundle" ]; then
  log "checking the package bundle $bundle"
  bundle_repo=$("$imagepackages" bundle-repo --bundle "$bundle" --work "$work/bundle" \
    --suite image,initrd=bookworm --suite tools=trixie)
  "$imagepackages" serve --dir "$bundle_repo" --port-file "$work/port" &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
  [ -s "$work/port" ] || { log "the bundle's repository server did not start"; exit 1; }
  bundle_url="http://127.0.0.1:$(cat "$work/port")"
  mode="bundle $(grep -v "^#" "$work/bundle/bundle.lock" | sha256sum | cut -c1-64)"
  tools=$("$here/setup.sh" --imagepackages "$imagepackages" --repo "$bundle_url/trixie" --lock "$work/bundle/bundle.lock")
else
  tools=$("$here/setup.sh" --imagepackages "$imagepackages")
fi

# The input hash: every file of the image definition except the lock (which does not change what is
# installed), the bootstrapper's bytes, the tools tree's packages and where the packages come from.
inputs=$(
  cd "$here"
  find . -type f ! -name '*.md' ! -name packages.lock -print0 | sort -z | xargs -0 sha256sum
  sha256sum <"$bootstrapper" | sed 's/-$/bootstrapper/'
  cat "$tools/.constellation-stamp" "$tools/.constellation-packages.lock"
  echo "packages from: $mode"
)
key=$(printf '%s' "$inputs" | sha256sum | cut -c1-32)
dest="$MKOSI_IMAGES/$key"

link_out() {
  [ -n "$out" ] || return 0
  mkdir -p "$(dirname "$out")"
  ln -sfn "$1" "$out"
}

# Compares what the image holds with the committed lock: a notice, or with --locked an error.
check_lock() {
  local img=$1
  local args=(--lock "$lock" --lock-name "${lock#"$repo"/}" --got "$img/packages.lock" --recorded "$img/packages.lock")
  [ "$locked" = 0 ] || args+=(--locked)
  "$imagepackages" check "${args[@]}"
}

save_bundle_of() {
  [ -n "$save_bundle" ] || return 0
  "$imagepackages" bundle-save --lock "$1/packages.lock" --debs "$1/bundle/debs" --out "$save_bundle" >&2
}

# The cache keeps the images used most recently and drops the others: each is about 1 GiB, and a machine
# that builds two per commit (CI builds image A and B) otherwise fills its disk until a build fails deep
# inside mkosi. Work directories of builds that were killed go too; a live one is younger than any build.
keep_images=${CONSTELLATION_KEEP_IMAGES:-4}
prune_cache() {
  local old=()
  mapfile -t old < <(ls -1dt "$MKOSI_IMAGES"/*/ 2>/dev/null | tail -n +$((keep_images + 1)))
  if [ ${#old[@]} -gt 0 ]; then
    log "removing ${#old[@]} image(s) not used recently from the cache (it keeps $keep_images)"
    rm -rf "${old[@]}"
  fi
  find "$MKOSI_CACHE" -mindepth 1 -maxdepth 1 -type d \( -name 'build.*' -o -name 'rebuild.*' \) \
    ! -path "$work" -mmin +180 -exec rm -rf {} +
}

# An image build needs about this much room for its workspace and result. Checked up front, because mkosi
# out of space fails late, and once hung until CI's time limit.
need_gib=6
check_disk() {
  local free_kib
  free_kib=$(df -Pk "$MKOSI_CACHE" | awk 'NR == 2 { print $4 }')
  if [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
    log "only $((free_kib / 1024)) MiB are free on the file system of $MKOSI_CACHE; an image build needs about ${need_gib} GiB"
    log "free some space (every cache under ${CONSTELLATION_CACHE:-/var/cache/constellation} may be deleted: it is rebuilt when needed), then run this again"
    exit 1
  fi
}

if [ "$use_cache" = 1 ] && [ -f "$dest/SHA256SUMS" ]; then
  log "image for these inputs already built: $dest"
  touch "$dest" # most recently used: pruning keeps it
  if ! check_lock "$dest"; then
    log "this image came from the cache; if the archive serves the lock's versions again, rebuild with --no-cache --locked"
    exit 1
  fi
  save_bundle_of "$dest"
  link_out "$dest"
  echo "$dest"
  exit 0
fi

# Builds run one at a time: they share the package cache.
exec 9>"$MKOSI_CACHE/.build.lock"
flock 9
prune_cache
check_disk

mkdir -p "$work/out" "$work/ws" "$work/extra/usr/bin"
install -m 0755 "$bootstrapper" "$work/extra/usr/bin/bootstrapper"

if [ -n "$bundle" ]; then
  # A sandbox tree whose only repository is the bundle's, a package cache of its own (nothing from earlier
  # downloads), and every other address blocked.
  sandbox="$work/sandbox"
  packages="$work/packages"
  mkdir -p "$sandbox/etc/apt/sources.list.d" "$sandbox/etc/apt/apt.conf.d" "$packages"
  cat >"$sandbox/etc/apt/sources.list.d/mkosi.sources" <<EOF
Types: deb
URIs: $bundle_url/bookworm
Suites: bookworm
Components: main
Trusted: yes
EOF
  cat >"$sandbox/etc/apt/apt.conf.d/50constellation-bundle-only" <<'EOF'
Acquire::http::Proxy "http://127.0.0.1:9/";
Acquire::http::Proxy::127.0.0.1 "DIRECT";
Acquire::https::Proxy "http://127.0.0.1:9/";
EOF
  package_debs="$packages/cache/apt/archives"
else
  sandbox="$here/mkosi.sandbox"
  packages="$MKOSI_PACKAGES"
  package_debs="$MKOSI_PACKAGE_DEBS"
fi

mkosi() {
  PYTHONPATH="$tools/usr/lib/python3/dist-packages" /usr/bin/python3 -m mkosi \
    --tools-tree="$tools" --sandbox-tree="$sandbox" \
    --package-cache-dir="$packages" --workspace-dir="$work/ws" --output-dir="$work/out" "$@"
}

start=$(date +%s)
log "building the initrd (packages from the $([ -n "$bundle" ] && echo bundle || echo archive))"
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

# Name the artifacts independently of mkosi's naming and check what the rest of the project relies on.
o="$work/out"
img="$work/image"
mkdir -p "$img"
cp --reflink=auto "$o/constellation.efi" "$img/constellation.efi"
cp --reflink=auto "$o/constellation.root-x86-64.raw" "$img/root.erofs"
cp --reflink=auto "$o/constellation.root-x86-64-verity.raw" "$img/root.verity"
cp --reflink=auto "$o/constellation.raw" "$img/disk.raw"
cp "$o/systemd-bootx64.efi" "$img/systemd-bootx64.efi"
cp "$o/constellation.manifest" "$img/manifest.json"
cp "$o/initrd.manifest" "$img/initrd-manifest.json"

# What went in: every package with the sha256 of its .deb, and the files themselves (hard links).
debs=(--debs "$package_debs")
if [ -n "$bundle" ]; then debs+=(--debs "$work/bundle/bundle/debs" --debs "$bundle/debs"); else debs+=(--debs "$MKOSI_TOOLS_DEBS"); fi
"$imagepackages" record --manifest "image=$img/manifest.json" --manifest "initrd=$img/initrd-manifest.json" \
  --include "$tools/.constellation-packages.lock" "${debs[@]}" --out "$img/packages.lock"
"$imagepackages" bundle-save --lock "$img/packages.lock" "${debs[@]}" --out "$img/bundle" >/dev/null
if [ -n "$bundle" ]; then
  # apt resolved the same dependencies from the bundle as from the archive, or the build is not a rebuild.
  "$imagepackages" check --locked --lock "$work/bundle/bundle.lock" --lock-name "the bundle's lock" --got "$img/packages.lock"
fi

size=$(stat -c %s "$img/constellation.efi")
if [ "$size" -ge "$UKI_MAX_BYTES" ]; then
  log "the UKI is $size bytes; it must stay below $UKI_MAX_BYTES (check the initrd's packages and modules)"
  exit 1
fi
(cd "$img" && sha256sum constellation.efi root.erofs root.verity disk.raw systemd-bootx64.efi >SHA256SUMS)

if [ "$update_lock" = 1 ]; then
  "$imagepackages" update-lock --got "$img/packages.lock" --out "$here/packages.lock" >&2
elif [ "$locked" = 1 ]; then
  # Strict: an image of other packages is never cached under these inputs.
  check_lock "$img"
fi
if [ "$use_cache" = 0 ] && [ "$update_lock" = 0 ]; then
  # A rebuild for comparison must not replace the cached image it is compared with.
  dest=$(mktemp -d "$MKOSI_CACHE/rebuild.XXXXXX")
  rmdir "$dest"
fi
rm -rf "$dest.tmp"
mv "$img" "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
log "image ready: $dest (UKI $((size / 1024 / 1024)) MiB)"
prune_cache
cat "$dest/SHA256SUMS" >&2
[ "$locked" = 1 ] || [ "$update_lock" = 1 ] || check_lock "$dest"
save_bundle_of "$dest"
link_out "$dest"
echo "$dest"
