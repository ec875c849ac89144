#!/usr/bin/env bash
# Sets up a hermetic Bazel on a fresh Debian bookworm machine that reaches only the Go module proxy and
# Debian's apt repositories. Idempotent: every step is skipped when its stamp matches the pinned inputs.
#
# Bazel 7.x exists in Debian only from forky on, and needs a newer libc/JDK than bookworm, so it runs in a
# debootstrapped forky chroot (see bazel/bazel for how the chroot is entered). rules_go and gazelle are Go
# modules, fetched through the module proxy and handed to Bazel with --override_module. Nothing is fetched
# from the Bazel Central Registry: the registry is an empty local one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bazel/env.sh
source "$here/env.sh"

RULES_GO_VERSION=v0.65.0
GAZELLE_VERSION=v0.54.0
# buildtools has no tagged Go module versions; this is a pinned pseudo-version.
BUILDTOOLS_VERSION=v0.0.0-20260904073137-eaa4d125b423
# Debian's bazel-bootstrap; the version is checked after install so a mirror bump is noticed.
BAZEL_DEB_VERSION_PREFIX=7.7.1
CHROOT_BASE_PACKAGES="bazel-bootstrap bazel-rules-shell gcc g++ git python3 ca-certificates"
# Tools that tests run inside the chroot (Bazel tests see the chroot's /usr): swtpm for real vTPMs,
# containerd for importing images.
CHROOT_TEST_PACKAGES="swtpm containerd"
CHROOT_PACKAGES="$CHROOT_BASE_PACKAGES $CHROOT_TEST_PACKAGES"
CHROOT_STAMP="forky|$CHROOT_BASE_PACKAGES"
MODULES_STAMP="$RULES_GO_VERSION|$GAZELLE_VERSION|$BUILDTOOLS_VERSION|$(cd "$here/modules" && find . -type f | sort | xargs sha256sum | sha256sum | cut -c1-16)"

log() { printf '[bazel-setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "must run as root (debootstrap and chroot need it)"
    exit 1
  fi
}

host_mirror() {
  # The machine's own Debian mirror; never hard-code a host name.
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  if [ -z "$uri" ]; then
    log "cannot find the Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    exit 1
  fi
  echo "$uri"
}

ensure_host_packages() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v unshare >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing host packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# in_chroot runs a command inside the chroot with /proc and /dev mounted in a private mount namespace,
# so nothing stays mounted on the host afterwards.
in_chroot() {
  local root=$1
  shift
  unshare -m --propagation private -- sh -c '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" "$@"
  ' sh "$root" "$@"
}

build_chroot() {
  local stamp="$BAZEL_CHROOT/.constellation-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$CHROOT_STAMP" ]; then
    install_chroot_packages "$BAZEL_CHROOT"
    return
  fi
  local tmp="$BAZEL_CACHE/chroot.tmp"
  rm -rf "$tmp"
  local mirror
  mirror=$(host_mirror)
  log "debootstrapping a Debian forky chroot from $mirror (takes a few minutes)"
  debootstrap --variant=minbase --include=ca-certificates forky "$tmp" "$mirror" \
    /usr/share/debootstrap/scripts/sid >"$BAZEL_CACHE/debootstrap.log" 2>&1 || {
    log "debootstrap failed; see $BAZEL_CACHE/debootstrap.log"
    tail -20 "$BAZEL_CACHE/debootstrap.log" >&2
    exit 1
  }
  # Registries are reached through a TLS proxy whose CA is only in the host's bundle.
  cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  # The mirror's testing Release files may be past Valid-Until; signatures are still checked.
  echo 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99constellation-no-valid-until"
  install_chroot_packages "$tmp"
  local have
  have=$(in_chroot "$tmp" dpkg-query -W -f '${Version}' bazel-bootstrap)
  case "$have" in
  "$BAZEL_DEB_VERSION_PREFIX"*) ;;
  *)
    # Debian's testing archive moves: a fresh machine gets what it serves today. Go on with a notice; only a
    # build that asked for strictness (CONSTELLATION_LOCKED=1, as release builds do) stops here.
    if [ "${CONSTELLATION_LOCKED:-}" = 1 ]; then
      log "chroot has bazel-bootstrap $have, expected $BAZEL_DEB_VERSION_PREFIX* (CONSTELLATION_LOCKED=1); update bazel/setup.sh"
      exit 1
    fi
    log "NOTICE: Debian's archive now serves bazel-bootstrap $have; this tree was tested with $BAZEL_DEB_VERSION_PREFIX*."
    log "  Going on with $have. If the build fails, update BAZEL_DEB_VERSION_PREFIX (and the Bazel modules) in bazel/setup.sh."
    ;;
  esac
  echo "$CHROOT_STAMP" >"$tmp/.constellation-stamp"
  rm -rf "$BAZEL_CHROOT"
  mv "$tmp" "$BAZEL_CHROOT"
}

# install_chroot_packages installs CHROOT_PACKAGES into the chroot at $1 unless its stamp says they are there,
# so adding a package does not rebuild the chroot.
install_chroot_packages() {
  local root=$1 stamp="$1/.constellation-packages"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$CHROOT_PACKAGES" ]; then
    return
  fi
  log "installing packages in the chroot: $CHROOT_PACKAGES"
  # shellcheck disable=SC2086
  in_chroot "$root" env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends $CHROOT_PACKAGES" \
    >"$BAZEL_CACHE/chroot-apt.log" 2>&1 || {
    log "apt-get in the chroot failed; see $BAZEL_CACHE/chroot-apt.log"
    tail -20 "$BAZEL_CACHE/chroot-apt.log" >&2
    exit 1
  }
  echo "$CHROOT_PACKAGES" >"$stamp"
}

go_module_dir() {
  local mod=$1
  # Outside any module, so the repository's go.mod is neither read nor changed.
  (cd / && GOFLAGS= go mod download -json "$mod") | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# copy_module copies a Go module's source into the chroot as a Bazel module. Module zips drop executable
# bits, so they are restored on scripts.
copy_module() {
  local src=$1 dst=$2
  rm -rf "$dst"
  mkdir -p "$(dirname "$dst")"
  cp -r "$src" "$dst"
  chmod -R u+w "$dst"
  local f
  while IFS= read -r -d '' f; do
    if [ "$(head -c2 "$f")" = '#!' ]; then
      chmod +x "$f"
    fi
  done < <(find "$dst" -type f -print0)
}

# stand_in_module writes an empty Bazel module. Used for modules that rules_go and gazelle declare but a
# pure Go build never loads (protobuf code is generated outside Bazel and checked in).
stand_in_module() {
  local name=$1 dir="$MODULES_DIR/$1"
  mkdir -p "$dir"
  printf 'module(name = "%s", version = "0.0.0")\n' "$name" >"$dir/MODULE.bazel"
  : >"$dir/BUILD.bazel"
}

prepare_modules() {
  local stamp="$MODULES_DIR/.constellation-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$MODULES_STAMP" ]; then
    return
  fi
  log "preparing Bazel modules (rules_go $RULES_GO_VERSION, gazelle $GAZELLE_VERSION)"
  rm -rf "$MODULES_DIR"
  mkdir -p "$MODULES_DIR"

  copy_module "$(go_module_dir "github.com/bazelbuild/rules_go@$RULES_GO_VERSION")" "$MODULES_DIR/rules_go"
  local gz
  gz=$(go_module_dir "github.com/bazelbuild/bazel-gazelle@$GAZELLE_VERSION")
  copy_module "$gz" "$MODULES_DIR/gazelle"
  # gazelle's Bazel module contains v2/, a separate Go module the zip of the main module lacks.
  local v2ver
  v2ver=$(awk '$1 == "github.com/bazel-contrib/bazel-gazelle/v2" {print $2; exit}' "$gz/go.mod")
  copy_module "$(go_module_dir "github.com/bazel-contrib/bazel-gazelle/v2@$v2ver")" "$MODULES_DIR/gazelle/v2"
  [ -f "$MODULES_DIR/gazelle/v2/go.sum" ] || : >"$MODULES_DIR/gazelle/v2/go.sum"

  # Debian's bazel_features 1.11.0: its Bazel reports no version, and rules_go asks for a feature 1.11 lacks.
  local feat="$MODULES_DIR/bazel_features"
  cp -r "$BAZEL_CHROOT/usr/share/bazel/tools/features" "$feat"
  local bazel_version="$BAZEL_DEB_VERSION_PREFIX"
  sed -i "s/native.bazel_version/(native.bazel_version or \"$bazel_version\")/" \
    "$feat/private/version_repo.bzl" "$feat/private/globals_repo.bzl"
  sed -i 's/^    instrumented_files_info_has_metadata_files = \(.*\)$/&\n    instrumented_files_info_has_baseline_coverage_files = ge("8.0.0"),/' \
    "$feat/features.bzl"
  grep -q instrumented_files_info_has_baseline_coverage_files "$feat/features.bzl" || {
    log "patching bazel_features failed: features.bzl changed shape"
    exit 1
  }

  for m in apple_support protobuf zlib; do
    stand_in_module "$m"
  done
  cp -r "$here/modules/package_metadata" "$MODULES_DIR/package_metadata"
  cp -r "$here/modules/buildozer" "$MODULES_DIR/buildozer"
  # A static binary, so it runs inside the chroot whatever its libc.
  (
    export GOBIN="$MODULES_DIR/buildozer" CGO_ENABLED=0 GOFLAGS=
    cd /
    go install "github.com/bazelbuild/buildtools/buildozer@$BUILDTOOLS_VERSION"
  )

  mkdir -p "$REGISTRY_DIR"
  echo '{}' >"$REGISTRY_DIR/bazel_registry.json"
  echo "$MODULES_STAMP" >"$stamp"
}

write_system_bazelrc() {
  # Debian's /etc/bazel/bazelrc overrides its packaged modules; ours must come after it to win (the last
  # --override_module for a name counts), so the file is Debian's original followed by our settings.
  local rc="$BAZEL_CHROOT/etc/bazel/bazelrc" orig="$BAZEL_CHROOT/etc/bazel/bazelrc.debian"
  [ -f "$orig" ] || cp "$rc" "$orig"
  local tmp="$rc.tmp"
  {
    cat "$orig"
    echo
    echo "# Added by constellation's bazel/setup.sh; do not edit."
    echo "startup --output_user_root=$BAZEL_OUTPUT_ROOT"
    # A server outliving its checkout would pin the bind mounts of a deleted workspace.
    echo "startup --max_idle_secs=900"
    echo "common --registry=file://$REGISTRY_DIR"
    for m in rules_go gazelle bazel_features apple_support buildozer package_metadata protobuf zlib; do
      echo "common --override_module=$m=$MODULES_DIR/$m"
    done
    echo "common --override_module=rules_shell=/usr/share/bazel/rules/shell"
    echo "build --disk_cache=$BAZEL_DISK_CACHE"
    # Without a bound the disk cache only grows (every dependency bump adds gigabytes) until the machine's
    # disk is full; Bazel trims it to this size, least recently used first, once its server is idle.
    echo "build --experimental_disk_cache_gc_max_size=8G"
    echo "common --repo_env=GO_REPOSITORY_USE_HOST_MODCACHE=1"
    echo "common --repo_env=GOMODCACHE=$GOMODCACHE_DIR"
    echo "common --repo_env=GOPROXY=$(go env GOPROXY)"
  } >"$tmp"
  mv "$tmp" "$rc"
}

# Each checkout has its own output base (several GiB) under the shared output root. Those of checkouts that
# no longer exist and were not used for two days (clones, removed worktrees) are dead weight on the disk and
# are removed. A path that only exists while its run does (CI clones the same path each time) is used more
# often than that and keeps its output base. Bazel names the checkout in the output base's README and
# touches its lock file at every command.
remove_orphaned_output_bases() {
  local base ws pid
  for base in "$BAZEL_OUTPUT_ROOT"/*/; do
    [ -f "$base/README" ] || continue
    ws=$(sed -n 's/^WORKSPACE: //p' "$base/README" | head -n 1)
    [ -n "$ws" ] && [ ! -e "$ws" ] || continue
    [ -z "$(find "$base/lock" -mmin -2880 2>/dev/null)" ] || continue
    pid=$(cat "$base/server/server.pid.txt" 2>/dev/null || true)
    [ -z "$pid" ] || [ ! -e "/proc/$pid" ] || continue
    log "removing the Bazel output base of $ws, which no longer exists"
    chmod -R u+w "$base" 2>/dev/null || true
    rm -rf "$base"
  done
}

main() {
  need_root
  mkdir -p "$BAZEL_CACHE" "$BAZEL_OUTPUT_ROOT" "$BAZEL_DISK_CACHE"
  remove_orphaned_output_bases
  ensure_host_packages
  build_chroot
  # Modules live inside the chroot: only Bazel reads them.
  MODULES_DIR="$BAZEL_CHROOT/opt/constellation/modules"
  REGISTRY_DIR="$BAZEL_CHROOT/opt/constellation/registry"
  prepare_modules
  MODULES_DIR=/opt/constellation/modules
  REGISTRY_DIR=/opt/constellation/registry
  write_system_bazelrc
  [ -d "$BAZEL_CHROOT/usr/share/bazel/rules/shell" ] || {
    log "rules_shell is missing from the chroot (package bazel-rules-shell)"
    exit 1
  }
}

main "$@"
