#!/usr/bin/env bash
# Makes the tools tree mkosi builds the node image with: a Debian trixie tree (debootstrap) holding mkosi
# 25.3 itself, systemd 257's repart and ukify, erofs-utils, dosfstools and mtools. mkosi runs from it on the
# host's Python and executes every build tool inside it, so the host's own versions never matter.
#
# Usage: image/mkosi/setup.sh --imagepackages FILE [--repo URL --lock FILE]
#   --imagepackages  the image/cmd/imagepackages binary (records the tree's packages)
#   --repo, --lock   build the tree only from the packages of a bundle (build.sh --bundle): URL is the bundle's
#                    trixie repository served on loopback, FILE the bundle's lock; every other address is
#                    blocked, and the tree must end up with exactly the lock's tools packages
#
# From the archive the tree is made once and rebuilt only when TOOLS_PACKAGES, the release or the recipe
# change; its packages are recorded in <tree>/.constellation-packages.lock and their .debs kept in
# $MKOSI_TOOLS_DEBS (what a package bundle of a build needs). A tree from a bundle lives in
# $MKOSI_CACHE/tools-bundle-<hash of its packages>.
#
# Prints the tools tree's path on stdout.
set -euo pipefail

here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
# shellcheck source=image/mkosi/env.sh
source "$here/env.sh"

TOOLS_RELEASE=trixie
TOOLS_PACKAGES="mkosi systemd systemd-repart systemd-ukify erofs-utils dosfstools mtools zstd cpio kmod
python3 python3-pefile apt dpkg debian-archive-keyring libcryptsetup12 cryptsetup-bin util-linux fdisk
coreutils ca-certificates"
TOOLS_PACKAGES=$(echo $TOOLS_PACKAGES) # one line
# Bump when the way the tree is made changes in a way the variables above do not capture.
RECIPE=2
STAMP="$TOOLS_RELEASE|$TOOLS_PACKAGES|recipe=$RECIPE"

log() { printf '[image-setup] %s\n' "$*" >&2; }

imagepackages="" repo="" bundle_lock=""
while [ $# -gt 0 ]; do
  case "$1" in
  --imagepackages) imagepackages=$(realpath "$2"); shift 2 ;;
  --repo) repo=$2; shift 2 ;;
  --lock) bundle_lock=$(realpath "$2"); shift 2 ;;
  *) log "unknown argument $1 (see the header of $0)"; exit 2 ;;
  esac
done
[ -x "$imagepackages" ] || { log "--imagepackages must name the image/cmd/imagepackages binary"; exit 2; }
if { [ -n "$repo" ] && [ -z "$bundle_lock" ]; } || { [ -z "$repo" ] && [ -n "$bundle_lock" ]; }; then
  log "--repo and --lock go together"
  exit 2
fi

if [ "$(id -u)" != 0 ]; then
  log "must run as root (debootstrap, chroot and mkosi's namespaces need it)"
  exit 1
fi

mkdir -p "$MKOSI_CACHE"
exec 9>"$MKOSI_CACHE/.setup.lock"
flock 9

if [ -n "$repo" ]; then
  want_tools=$(grep '^tools ' "$bundle_lock" || true)
  [ -n "$want_tools" ] || { log "the bundle's lock $bundle_lock has no tools packages"; exit 1; }
  tree="$MKOSI_CACHE/tools-bundle-$(printf '%s\n%s\n' "$STAMP" "$want_tools" | sha256sum | cut -c1-32)"
else
  tree="$MKOSI_TOOLS"
fi

if [ -f "$tree/.constellation-stamp" ] && [ "$(cat "$tree/.constellation-stamp")" = "$STAMP" ] &&
  [ -f "$tree/.constellation-packages.lock" ]; then
  echo "$tree"
  exit 0
fi

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v unshare >/dev/null || missing+=(util-linux)
command -v wget >/dev/null || missing+=(wget)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ -n "$repo" ]; then
    log "missing host tools for a build without the archive: ${missing[*]} (install them first: make setup)"
    exit 1
  fi
  log "installing host packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

tmp="$tree.tmp"
rm -rf "$tmp"
if [ -n "$repo" ]; then
  mirror=$repo
  # Only the bundle's repository on loopback is reachable: any other address goes to a closed port.
  export http_proxy=http://127.0.0.1:9/ https_proxy=http://127.0.0.1:9/ no_proxy=127.0.0.1
  gpg=(--no-check-gpg)
  log "debootstrapping the $TOOLS_RELEASE tools tree from the package bundle ($repo)"
else
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  gpg=()
  log "debootstrapping the $TOOLS_RELEASE tools tree from $mirror (about a minute)"
fi
debootstrap "${gpg[@]}" --variant=minbase --include=ca-certificates "$TOOLS_RELEASE" "$tmp" "$mirror" \
  /usr/share/debootstrap/scripts/sid >"$MKOSI_CACHE/debootstrap.log" 2>&1 || {
  log "debootstrap failed; see $MKOSI_CACHE/debootstrap.log"
  tail -20 "$MKOSI_CACHE/debootstrap.log" >&2
  exit 1
}
# Package downloads go through a TLS-intercepting proxy whose CA only the host's bundle has.
cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
if [ -n "$repo" ]; then
  echo "deb [trusted=yes] $repo $TOOLS_RELEASE main" >"$tmp/etc/apt/sources.list"
  cat >"$tmp/etc/apt/apt.conf.d/50constellation-bundle-only" <<'EOF'
// Built from a package bundle: nothing but the bundle's repository on loopback may be reached.
Acquire::http::Proxy "http://127.0.0.1:9/";
Acquire::http::Proxy::127.0.0.1 "DIRECT";
Acquire::https::Proxy "http://127.0.0.1:9/";
EOF
fi
log "installing the tools: $TOOLS_PACKAGES"
unshare -m --propagation private -- sh -c '
  root=$1; shift
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  exec chroot "$root" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $*"
' sh "$tmp" $TOOLS_PACKAGES >"$MKOSI_CACHE/tools-apt.log" 2>&1 || {
  log "installing the tools failed; see $MKOSI_CACHE/tools-apt.log"
  tail -20 "$MKOSI_CACHE/tools-apt.log" >&2
  exit 1
}

# Record what the tree holds, with the sha256 of each .deb it was installed from.
"$imagepackages" record --dpkg-status "tools=$tmp/var/lib/dpkg/status" --debs "$tmp/var/cache/apt/archives" \
  --out "$tmp/.constellation-packages.lock"
if [ -n "$repo" ]; then
  "$imagepackages" check --locked --lock <(echo "$want_tools") --lock-name "the bundle's tools packages" \
    --got "$tmp/.constellation-packages.lock"
  # The bundle keeps the files; the tree must not name a repository that is gone after this build.
  rm -f "$tmp/etc/apt/sources.list" "$tmp/etc/apt/apt.conf.d/50constellation-bundle-only"
  rm -rf "$tmp/var/lib/apt/lists/"*
else
  mkdir -p "$MKOSI_TOOLS_DEBS"
  for f in "$tmp/var/cache/apt/archives/"*.deb; do
    [ -e "$MKOSI_TOOLS_DEBS/$(basename "$f")" ] || cp --reflink=auto "$f" "$MKOSI_TOOLS_DEBS/"
  done
fi
# apt's downloads are not part of the tree.
rm -rf "$tmp/var/cache/apt/archives/"*.deb
echo "$STAMP" >"$tmp/.constellation-stamp"
rm -rf "$tree"
mv "$tmp" "$tree"
log "tools tree ready: $tree"
echo "$tree"
