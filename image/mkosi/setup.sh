#!/usr/bin/env bash
# Makes the pinned tools tree mkosi builds the node image with: a Debian trixie tree (debootstrap) holding
# mkosi 25.3 itself, systemd 257's repart and ukify, erofs-utils, dosfstools and mtools. mkosi runs from it
# on the host's Python and executes every build tool inside it, so the host's own versions never matter.
#
# Idempotent: the tree is rebuilt only when TOOLS_PACKAGES (or the release) changes. The versions it holds
# are checked against image/mkosi/packages.lock by build.sh.
#
# Prints the tools tree's path on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=image/mkosi/env.sh
source "$here/env.sh"

TOOLS_RELEASE=trixie
TOOLS_PACKAGES="mkosi systemd systemd-repart systemd-ukify erofs-utils dosfstools mtools zstd cpio kmod
python3 python3-pefile apt dpkg debian-archive-keyring libcryptsetup12 cryptsetup-bin util-linux fdisk
coreutils ca-certificates"
TOOLS_PACKAGES=$(echo $TOOLS_PACKAGES) # one line
STAMP="$TOOLS_RELEASE|$TOOLS_PACKAGES"

log() { printf '[image-setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (debootstrap, chroot and mkosi's namespaces need it)"
  exit 1
fi

mkdir -p "$MKOSI_CACHE"
exec 9>"$MKOSI_CACHE/.setup.lock"
flock 9

if [ -f "$MKOSI_TOOLS/.constellation-stamp" ] && [ "$(cat "$MKOSI_TOOLS/.constellation-stamp")" = "$STAMP" ]; then
  echo "$MKOSI_TOOLS"
  exit 0
fi

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v unshare >/dev/null || missing+=(util-linux)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing host packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
tmp="$MKOSI_CACHE/tools.tmp"
rm -rf "$tmp"
log "debootstrapping the $TOOLS_RELEASE tools tree from $mirror (about a minute)"
debootstrap --variant=minbase --include=ca-certificates "$TOOLS_RELEASE" "$tmp" "$mirror" \
  /usr/share/debootstrap/scripts/sid >"$MKOSI_CACHE/debootstrap.log" 2>&1 || {
  log "debootstrap failed; see $MKOSI_CACHE/debootstrap.log"
  tail -20 "$MKOSI_CACHE/debootstrap.log" >&2
  exit 1
}
# Package downloads go through a TLS-intercepting proxy whose CA only the host's bundle has.
cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
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
# apt's downloads are not part of the tree.
rm -rf "$tmp/var/cache/apt/archives/"*.deb
echo "$STAMP" >"$tmp/.constellation-stamp"
rm -rf "$MKOSI_TOOLS"
mv "$tmp" "$MKOSI_TOOLS"
log "tools tree ready: $MKOSI_TOOLS"
echo "$MKOSI_TOOLS"
