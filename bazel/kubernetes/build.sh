#!/usr/bin/env bash
# Builds the pinned Kubernetes components of one Kubernetes version from source through the Go module proxy,
# and the container images kubeadm runs them from.
#
# Usage: bazel/kubernetes/build.sh [--version VERSION] [--locked] [component ... | all]
#   versions:   v1.33.13 (default) v1.34.10
#   --locked:   fail when Debian's mirror no longer serves a package of debs.lock (the kube-proxy image's
#               iptables) instead of building from the versions it serves today (also CONSTELLATION_LOCKED=1)
#   --debs-lock: another lock than bazel/kubernetes/debs.lock (tests)
#   components: pause etcd coredns kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet
#               kubeadm kubectl images
#   all:        every binary, then images; default: etcd kube-apiserver
#
# Output, under ${CONSTELLATION_CACHE:-/var/cache/constellation}/kubernetes/<VERSION>/:
#   bin/<component>       binaries, plus SHA256SUMS and a stamp per binary (.<component>.stamp)
#   images/<name>.tar     docker-archive images (for `ctr -n k8s.io images import`) tagged exactly as kubeadm
#                         references them, for kube-apiserver, kube-controller-manager, kube-scheduler,
#                         kube-proxy, etcd, coredns and pause ("images"; builds the binaries it needs)
#   components.json       every file above with its sha256 (written by "images"); bazel/kubernetes/pin.sh
#                         turns it into the pins in internal/versions
#
# A stamp records the inputs a binary was built from (versions, build flags, ldflags, Go version and platform)
# and its sha256; a component is rebuilt only when its binary is missing, its stamp differs from the current
# inputs, or the binary no longer matches the recorded sha256. Builds are reproducible: same inputs, same
# bytes.
#
# Kubernetes is built in a throwaway module (a temp dir, never this repository) that requires
# k8s.io/kubernetes and replaces every staging repository (the list is read from kubernetes' own go.mod)
# with its published k8s.io/<repo> v0.<minor>.<patch> module. etcd (go.etcd.io/etcd/server/v3) and CoreDNS
# (github.com/coredns/coredns) are built the same way from their main modules, pause from
# bazel/kubernetes/pause/main.go (copied into a throwaway module, so its bytes depend on that file alone).
# The versions of etcd, CoreDNS and pause are the ones kubeadm of that Kubernetes version expects; the script
# checks them against kubeadm's constants (cmd/kubeadm/app/constants) and refuses to build on a mismatch.
#
# Each link needs about 2 GB of memory, so components are built one at a time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# --- version sets ------------------------------------------------------------------------------------------
# Everything that selects source code. The go directives and godebug defaults are those of the upstream main
# modules (checked at build time), so the default GODEBUG settings are the ones upstream builds get.
set_version() {
	case "$1" in
	v1.33.13)
		STAGING_VERSION=v0.33.13 # the staging repos' module version matching KUBE_VERSION
		KUBE_GO_DIRECTIVE=1.24.0 # kubernetes' go.mod: "go 1.24.0" and "godebug default=go1.24"
		KUBE_GODEBUG_DEFAULT=go1.24
		ETCD_VERSION=v3.5.24 # kubeadm: constants.SupportedEtcdVersion[33] = "3.5.24-0"
		ETCD_IMAGE_TAG=3.5.24-0
		ETCD_GO_DIRECTIVE=1.24 # go.etcd.io/etcd/server/v3's go.mod
		COREDNS_VERSION=v1.12.0 # kubeadm: constants.CoreDNSVersion
		COREDNS_GO_DIRECTIVE=1.22.7
		PAUSE_VERSION=3.10 # kubeadm: constants.PauseVersion
		;;
	v1.34.10)
		# The newest v1.34 patch the proxy serves whose checksum the checksum database knows (v1.34.11 and
		# v1.34.12 are listed but sum.golang.org answers 404; v1.34.13 is refused with 403).
		STAGING_VERSION=v0.34.10
		KUBE_GO_DIRECTIVE=1.24.0
		KUBE_GODEBUG_DEFAULT=go1.24
		ETCD_VERSION=v3.6.5 # kubeadm: constants.SupportedEtcdVersion[34] = "3.6.5-0"
		ETCD_IMAGE_TAG=3.6.5-0
		ETCD_GO_DIRECTIVE=1.24
		COREDNS_VERSION=v1.12.1
		COREDNS_GO_DIRECTIVE=1.23.0
		PAUSE_VERSION=3.10.1
		;;
	*) die "unsupported Kubernetes version '$1'; supported: ${SUPPORTED_VERSIONS[*]}" ;;
	esac
	KUBE_VERSION="$1"
	KUBE_MINOR="${KUBE_VERSION#v1.}"
	KUBE_MINOR="${KUBE_MINOR%%.*}"
}
SUPPORTED_VERSIONS=(v1.33.13 v1.34.10)
DEFAULT_VERSION=v1.33.13
PAUSE_GO_DIRECTIVE=1.24.0
# Bump when the way binaries are built changes in a way the variables below do not capture.
RECIPE=1

BINARIES=(pause etcd coredns kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)
# The binaries the images are made of.
IMAGE_BINARIES=(pause etcd coredns kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
DEFAULT_COMPONENTS=(etcd kube-apiserver)
# Debian packages whose files go into the kube-proxy image (iptables); versions and hashes pinned there.
DEBS_LOCK="$here/debs.lock"

log() { printf '%s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# --- arguments ---------------------------------------------------------------------------------------------
version="$DEFAULT_VERSION"
locked=false
[[ "${CONSTELLATION_LOCKED:-}" != 1 ]] || locked=true
components=()
want_images=false
while [[ $# -gt 0 ]]; do
	arg="$1"
	shift
	case "$arg" in
	-h | --help)
		usage
		exit 0
		;;
	--version)
		[[ $# -gt 0 ]] || die "--version needs a value"
		version="$1"
		shift
		continue
		;;
	--version=*)
		version="${arg#--version=}"
		continue
		;;
	--locked)
		locked=true
		continue
		;;
	--debs-lock)
		[[ $# -gt 0 ]] || die "--debs-lock needs a value"
		DEBS_LOCK="$(realpath "$1")"
		shift
		continue
		;;
	-*) die "unknown flag $arg (see --help)" ;;
	all)
		components+=("${BINARIES[@]}")
		want_images=true
		continue
		;;
	images)
		components+=("${IMAGE_BINARIES[@]}")
		want_images=true
		continue
		;;
	esac
	known=false
	for c in "${BINARIES[@]}"; do
		[[ "$arg" == "$c" ]] && known=true
	done
	$known || die "unknown component '$arg'; known: ${BINARIES[*]} images all"
	components+=("$arg")
done
[[ ${#components[@]} -gt 0 ]] || components=("${DEFAULT_COMPONENTS[@]}")
set_version "$version"
# Build each requested binary once, in the order of BINARIES (cheap ones first).
ordered=()
for c in "${BINARIES[@]}"; do
	for r in "${components[@]}"; do
		if [[ "$r" == "$c" ]]; then
			ordered+=("$c")
			break
		fi
	done
done
components=("${ordered[@]}")

is_kube() {
	local k
	for k in "${KUBE_BINARIES[@]}"; do
		[[ "$1" == "$k" ]] && return 0
	done
	return 1
}

command -v "${GO:-go}" >/dev/null || die "go not found (set GO or PATH)"
command -v sha256sum >/dev/null || die "sha256sum not found"
GO="${GO:-go}"

CACHE_ROOT="${CONSTELLATION_CACHE:-/var/cache/constellation}"
VERSION_DIR="$CACHE_ROOT/kubernetes/$KUBE_VERSION"
OUT="$VERSION_DIR/bin"
IMAGES_OUT="$VERSION_DIR/images"
DEBS_DIR="$CACHE_ROOT/kubernetes/debs"
# What the kube-proxy image of this version is built from: debs.lock, or newer versions (see fetch_debs).
RESOLVED_DEBS="$VERSION_DIR/debs.resolved.lock"

kube_version_ldflags() {
	# Like hack/lib/version.sh: set both component-base's and client-go's version variables. -s -w as in
	# upstream release builds (no symbol table, no DWARF). buildDate is fixed so builds are reproducible.
	local pkg key flags=()
	local -a kv=(
		"gitVersion=$KUBE_VERSION"
		"gitMajor=1"
		"gitMinor=$KUBE_MINOR"
		"gitTreeState=clean"
		"buildDate=1970-01-01T00:00:00Z"
	)
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		for key in "${kv[@]}"; do
			flags+=("-X $pkg.$key")
		done
	done
	echo "-s -w ${flags[*]}"
}
KUBE_LDFLAGS="$(kube_version_ldflags)"
# hack/lib/golang.sh always builds with these tags.
KUBE_TAGS="selinux,notest"
# etcd's build.sh sets GitSHA; the module zip carries no git metadata, so record the version instead.
ETCD_LDFLAGS="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
# CoreDNS' Makefile: CGO_ENABLED=0, -ldflags="-s -w -X github.com/coredns/coredns/coremain.GitCommit=...".
COREDNS_LDFLAGS="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
PAUSE_LDFLAGS="-s -w -X main.version=$PAUSE_VERSION"

# The build environment. Everything that can change the output is pinned here or recorded in the stamp.
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false"
unset GOOS GOARCH GOEXPERIMENT GOAMD64 GOARM64 2>/dev/null || true
GO_VERSION="$("$GO" version)"
GO_PLATFORM="$("$GO" env GOOS GOARCH GOAMD64 GOARM64 GOEXPERIMENT | xargs)"
# Modules come from the Go module proxy only: a trailing "direct" (fetching from version control hosts)
# is dropped, so a module missing from the proxy fails instead of reaching out elsewhere.
GOPROXY_VALUE="$("$GO" env GOPROXY)"
case "$GOPROXY_VALUE" in
*,direct | *"|direct") GOPROXY_VALUE="${GOPROXY_VALUE%direct}" && GOPROXY_VALUE="${GOPROXY_VALUE%?}" ;;
esac
export GOPROXY="$GOPROXY_VALUE"

mkdir -p "$OUT"
# Serialise concurrent runs on the same output directory.
exec 9>"$OUT/.lock"
if command -v flock >/dev/null && ! flock -n 9; then
	log "waiting for another build.sh run on $OUT to finish"
	flock 9
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/kubebuild.XXXXXX")"
cleanup() { rm -rf "$workdir"; }
trap cleanup EXIT

# Runs a go command; on failure prints its output and, if it looks like a network problem, says that the
# Go module proxy is unreachable.
run_go() {
	local log_file="$workdir/go.log"
	if "$GO" "$@" >"$log_file" 2>&1; then
		return 0
	fi
	cat "$log_file" >&2
	if grep -qiE 'dial tcp|no such host|connection refused|i/o timeout|network is unreachable|tls handshake|proxyconnect|server misbehaving|temporary failure in name resolution|unexpected eof|connection reset|could not resolve host|failed to connect|tls: |x509: ' "$log_file"; then
		die "the Go module proxy ($GOPROXY_VALUE) is unreachable; building Kubernetes/etcd/CoreDNS needs it (or a Go module cache that already holds every module)"
	fi
	die "go $1 failed (see above)"
}

# Prints the module cache directory of module@version, downloading it if needed.
module_dir() {
	# Outside any module, so nothing but the module cache is touched.
	(cd "$workdir" && GOFLAGS="" run_go mod download -json "$1") || exit 1
	local dir
	dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' "$workdir/go.log")"
	[[ -f "$dir/go.mod" ]] || die "could not locate $1 in the module cache"
	echo "$dir"
}

# Fails unless the upstream main module's go.mod has the go directive (and godebug default) pinned above.
check_go_directive() {
	local mod="$1" want_go="$2" want_godebug="${3:-}" got
	got="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$mod/go.mod")"
	[[ "$got" == "$want_go" ]] || die "$mod/go.mod says 'go $got'; build.sh pins 'go $want_go' for $KUBE_VERSION: update the version set"
	if [[ -n "$want_godebug" ]]; then
		got="$(sed -n 's/^godebug default=\(.*\)$/\1/p' "$mod/go.mod")"
		[[ "$got" == "$want_godebug" ]] || die "$mod/go.mod says 'godebug default=$got'; build.sh pins $want_godebug"
	fi
}

# The versions of etcd, CoreDNS and pause must be the ones this kubeadm references (its constants package);
# otherwise kubeadm would look for images that do not exist.
check_kubeadm_constants() {
	local kdir="$1" f want got
	f="$kdir/cmd/kubeadm/app/constants/constants.go"
	[[ -f "$f" ]] || die "kubeadm's constants not found at $f"
	got="$(sed -n "s/^[[:space:]]*$KUBE_MINOR: \"\(.*\)\",\$/\1/p" "$f")"
	[[ "$got" == "$ETCD_IMAGE_TAG" ]] || die "kubeadm $KUBE_VERSION expects etcd '$got' (SupportedEtcdVersion[$KUBE_MINOR]), build.sh pins $ETCD_IMAGE_TAG"
	want="${ETCD_VERSION#v}-0"
	[[ "$want" == "$ETCD_IMAGE_TAG" ]] || die "etcd module version $ETCD_VERSION does not match image tag $ETCD_IMAGE_TAG"
	got="$(sed -n 's/^[[:space:]]*CoreDNSVersion = "\(.*\)"$/\1/p' "$f")"
	[[ "$got" == "$COREDNS_VERSION" ]] || die "kubeadm $KUBE_VERSION expects CoreDNS '$got' (CoreDNSVersion), build.sh pins $COREDNS_VERSION"
	got="$(sed -n 's/^[[:space:]]*PauseVersion = "\(.*\)"$/\1/p' "$f")"
	[[ "$got" == "$PAUSE_VERSION" ]] || die "kubeadm $KUBE_VERSION expects pause '$got' (PauseVersion), build.sh pins $PAUSE_VERSION"
}

KDIR=""
kube_source() {
	[[ -n "$KDIR" ]] && return 0
	KDIR="$(module_dir "k8s.io/kubernetes@$KUBE_VERSION")"
	check_go_directive "$KDIR" "$KUBE_GO_DIRECTIVE" "$KUBE_GODEBUG_DEFAULT"
	check_kubeadm_constants "$KDIR"
}

# Writes the throwaway module for Kubernetes into $workdir/kubernetes (once).
kube_module() {
	local dir="$workdir/kubernetes"
	[[ -f "$dir/go.mod" ]] && return 0
	kube_source
	mkdir -p "$dir"
	local staging
	staging="$(sed -n '/^replace (/,/^)/p' "$KDIR/go.mod" | sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' | sort)"
	[[ -n "$staging" ]] || die "no staging replacements found in $KDIR/go.mod"
	{
		echo "module constellation.build/kubernetes"
		echo
		echo "go $KUBE_GO_DIRECTIVE"
		echo
		echo "godebug default=$KUBE_GODEBUG_DEFAULT"
		echo
		echo "require k8s.io/kubernetes $KUBE_VERSION"
		echo
		echo "replace ("
		local m
		for m in $staging; do
			printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"
		done
		echo ")"
	} >"$dir/go.mod"
}

# A throwaway module that requires one upstream main module (etcd, CoreDNS).
simple_module() {
	local name="$1" module="$2" version="$3" go_directive="$4" dir="$workdir/$1"
	[[ -f "$dir/go.mod" ]] && return 0
	check_go_directive "$(module_dir "$module@$version")" "$go_directive"
	mkdir -p "$dir"
	printf 'module constellation.build/%s\n\ngo %s\n\nrequire %s %s\n' \
		"$name" "$go_directive" "$module" "$version" >"$dir/go.mod"
}

pause_module() {
	local dir="$workdir/pause"
	[[ -f "$dir/go.mod" ]] && return 0
	mkdir -p "$dir"
	printf 'module constellation.build/pause\n\ngo %s\n' "$PAUSE_GO_DIRECTIVE" >"$dir/go.mod"
	cp "$here/pause/main.go" "$dir/main.go"
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# Prints the inputs of a component, one per line; this is the stamp (without the sha256 line).
inputs() {
	local c="$1"
	echo "recipe=$RECIPE"
	echo "component=$c"
	echo "go=$GO_VERSION"
	echo "platform=$GO_PLATFORM"
	echo "env=CGO_ENABLED=$CGO_ENABLED GOFLAGS=$GOFLAGS"
	case "$c" in
	etcd)
		echo "module=go.etcd.io/etcd/server/v3@$ETCD_VERSION go=$ETCD_GO_DIRECTIVE"
		echo "package=go.etcd.io/etcd/server/v3"
		echo "flags=-trimpath"
		echo "ldflags=$ETCD_LDFLAGS"
		;;
	coredns)
		echo "module=github.com/coredns/coredns@$COREDNS_VERSION go=$COREDNS_GO_DIRECTIVE"
		echo "package=github.com/coredns/coredns"
		echo "flags=-trimpath"
		echo "ldflags=$COREDNS_LDFLAGS"
		;;
	pause)
		echo "module=constellation.build/pause go=$PAUSE_GO_DIRECTIVE"
		echo "source=bazel/kubernetes/pause/main.go sha256=$(sha_of "$here/pause/main.go")"
		echo "flags=-trimpath"
		echo "ldflags=$PAUSE_LDFLAGS"
		;;
	*)
		echo "module=k8s.io/kubernetes@$KUBE_VERSION staging=$STAGING_VERSION go=$KUBE_GO_DIRECTIVE godebug=$KUBE_GODEBUG_DEFAULT"
		echo "package=k8s.io/kubernetes/cmd/$c"
		echo "flags=-trimpath -tags=$KUBE_TAGS"
		echo "ldflags=$KUBE_LDFLAGS"
		;;
	esac
}

# Succeeds if the binary exists, its stamp matches the current inputs and the binary matches the stamp.
is_cached() {
	local c="$1" bin="$OUT/$1" stamp="$OUT/.$1.stamp"
	[[ -x "$bin" && -f "$stamp" ]] || return 1
	[[ "$(grep -v '^sha256=' "$stamp")" == "$(inputs "$c")" ]] || return 1
	[[ "$(sed -n 's/^sha256=//p' "$stamp")" == "$(sha_of "$bin")" ]] || return 1
}

build() {
	local c="$1" dir pkg ldflags
	local -a flags=(-trimpath)
	case "$c" in
	etcd)
		simple_module etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_GO_DIRECTIVE"
		dir="$workdir/etcd" pkg=go.etcd.io/etcd/server/v3 ldflags="$ETCD_LDFLAGS"
		;;
	coredns)
		simple_module coredns github.com/coredns/coredns "$COREDNS_VERSION" "$COREDNS_GO_DIRECTIVE"
		dir="$workdir/coredns" pkg=github.com/coredns/coredns ldflags="$COREDNS_LDFLAGS"
		;;
	pause)
		pause_module
		dir="$workdir/pause" pkg=. ldflags="$PAUSE_LDFLAGS"
		;;
	*)
		kube_module
		dir="$workdir/kubernetes" pkg="k8s.io/kubernetes/cmd/$c" ldflags="$KUBE_LDFLAGS"
		flags+=("-tags=$KUBE_TAGS")
		;;
	esac
	local tmp="$OUT/.$c.tmp.$$"
	rm -f "$tmp"
	(cd "$dir" && run_go build "${flags[@]}" -ldflags="$ldflags" -o "$tmp" "$pkg") || {
		rm -f "$tmp"
		exit 1
	}
	chmod 0755 "$tmp"
	mv -f "$tmp" "$OUT/$c"
	{
		inputs "$c"
		echo "sha256=$(sha_of "$OUT/$c")"
	} >"$OUT/.$c.stamp.tmp"
	mv -f "$OUT/.$c.stamp.tmp" "$OUT/.$c.stamp"
}

# Puts the Debian packages of debs.lock into $DEBS_DIR, verified against their pinned sha256, and writes the
# lock of what the kube-proxy image is built from to $RESOLVED_DEBS. A pinned package is taken from
# $DEBS_DIR, the node image's package cache, a package bundle ($CONSTELLATION_PACKAGE_BUNDLE, a directory
# saved by image/mkosi/build.sh --save-bundle) or Debian's mirror. Debian's mirror serves only the newest
# version of each package: when a pinned version is gone, the build takes the version the mirror serves
# today, says so, and records it (the CLI then pins this machine's kube-proxy image, with a notice;
# internal/versions.LocalComponents); with --locked it fails instead.
fetch_debs() {
	mkdir -p "$DEBS_DIR"
	local pkg ver sha file have updated=false mkosi_archives="$CACHE_ROOT/mkosi/packages/cache/apt/archives"
	local bundle_debs="${CONSTELLATION_PACKAGE_BUNDLE:+$CONSTELLATION_PACKAGE_BUNDLE/debs}"
	local -a drift=()
	: >"$RESOLVED_DEBS.tmp"
	while read -r pkg ver sha || [[ -n "${pkg:-}" ]]; do
		[[ -z "$pkg" || "$pkg" == \#* ]] && continue
		file="$DEBS_DIR/${pkg}_${ver//:/%3a}.deb"
		if [[ -f "$file" && "$(sha_of "$file")" == "$sha" ]]; then
			echo "$pkg $ver $sha" >>"$RESOLVED_DEBS.tmp"
			continue
		fi
		rm -f "$file"
		have="$(find "$mkosi_archives" ${bundle_debs:+"$bundle_debs"} -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" 2>/dev/null | head -n1 || true)"
		if [[ -n "$have" && "$(sha_of "$have")" == "$sha" ]]; then
			cp "$have" "$file.tmp"
		elif ! apt_download "$pkg=$ver" "$file.tmp"; then
			$locked && die "Debian's mirror no longer serves $pkg=$ver, which $DEBS_LOCK pins (--locked). Build from a package bundle that has it (CONSTELLATION_PACKAGE_BUNDLE=<dir>), or update $DEBS_LOCK to the versions in image/mkosi/packages.lock and re-pin (bazel/kubernetes/pin.sh)"
			if ! $updated; then
				apt-get update -qq >/dev/null 2>&1 || true
				updated=true
			fi
			apt_download "$pkg" "$file.new" || die "cannot download $pkg from Debian's mirror (is it reachable?)"
			local newver
			newver="$(dpkg-deb --field "$file.new" Version)"
			drift+=("$pkg $ver -> $newver")
			mv -f "$file.new" "$DEBS_DIR/${pkg}_${newver//:/%3a}.deb"
			echo "$pkg $newver $(sha_of "$DEBS_DIR/${pkg}_${newver//:/%3a}.deb")" >>"$RESOLVED_DEBS.tmp"
			continue
		fi
		have="$(sha_of "$file.tmp")"
		if [[ "$have" != "$sha" ]]; then
			rm -f "$file.tmp"
			die "$pkg=$ver has sha256 $have, $DEBS_LOCK pins $sha"
		fi
		mv -f "$file.tmp" "$file"
		echo "$pkg $ver $sha" >>"$RESOLVED_DEBS.tmp"
	done <"$DEBS_LOCK"
	mv -f "$RESOLVED_DEBS.tmp" "$RESOLVED_DEBS"
	if [[ ${#drift[@]} -gt 0 ]]; then
		local IFS=,
		log "NOTICE: Debian's mirror no longer serves every package $DEBS_LOCK pins for the kube-proxy image; it is"
		log "  built from the versions served today instead: ${drift[*]}."
		log "  Where their files differ, the image's sha256 differs from this release's pin; the CLI then installs"
		log "  this machine's build and says so. --locked makes this an error; to adopt the versions, update"
		log "  $DEBS_LOCK (to the versions in image/mkosi/packages.lock) and re-pin (bazel/kubernetes/pin.sh)."
	fi
}

# Downloads one package (apt-get download's PKG or PKG=VERSION) to a file.
apt_download() {
	local spec="$1" dest="$2" dl
	command -v apt-get >/dev/null || die "apt-get is needed to download $spec"
	dl="$(mktemp -d "$DEBS_DIR/.dl.XXXXXX")"
	chmod 0755 "$dl"
	if ! (cd "$dl" && apt-get download -q "$spec" >"$dl/apt.log" 2>&1); then
		rm -rf "$dl"
		return 1
	fi
	mv "$dl"/*.deb "$dest"
	rm -rf "$dl"
}

build_images() {
	fetch_debs
	local start
	start=$(date +%s)
	# The image tool is part of this module: build it read-only against go.mod (never -mod=mod here).
	(cd "$repo" && GOFLAGS="-mod=readonly -buildvcs=false" "$GO" run ./bazel/kubernetes/kubecomponents images \
		--kubernetes-version "$KUBE_VERSION" --dir "$VERSION_DIR" --debs "$DEBS_DIR" --debs-lock "$RESOLVED_DEBS" \
		--etcd-version "$ETCD_VERSION" --etcd-tag "$ETCD_IMAGE_TAG" --coredns-version "$COREDNS_VERSION" \
		--pause-version "$PAUSE_VERSION" --go-version "$GO_VERSION") || die "building the images failed"
	log "images: done in $(($(date +%s) - start)) s ($IMAGES_OUT)"
}

# Check the version set against kubeadm before building anything of it.
kube_source

for c in "${components[@]}"; do
	if is_cached "$c"; then
		log "$c: cached ($OUT/$c)"
		continue
	fi
	start=$(date +%s)
	build "$c"
	log "$c: built in $(($(date +%s) - start)) s ($OUT/$c, $(du -h "$OUT/$c" | cut -f1))"
done

# SHA256SUMS covers every component binary present in the output directory.
(
	cd "$OUT"
	present=()
	for c in "${BINARIES[@]}"; do
		[[ -f "$c" ]] && present+=("$c")
	done
	sha256sum "${present[@]}" >.SHA256SUMS.tmp
	mv -f .SHA256SUMS.tmp SHA256SUMS
)
log "wrote $OUT/SHA256SUMS"

if $want_images; then
	build_images
fi
