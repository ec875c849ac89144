#!/usr/bin/env bash
# Builds pinned Kubernetes and etcd binaries from source through the Go module proxy.
#
# Usage: bazel/kubernetes/build.sh [component ...]
#   components: etcd kube-apiserver kubeadm kubelet kube-controller-manager kube-scheduler kubectl
#   default:    etcd kube-apiserver
#
# Output: ${CONSTELLATION_CACHE:-/var/cache/constellation}/kubernetes/<KUBE_VERSION>/bin/<component>, plus
# SHA256SUMS beside them. Each binary has a stamp (.<component>.stamp) recording the inputs it was built from
# (versions, build flags, ldflags, Go version and platform) and its sha256; a component is rebuilt only when
# its binary is missing, its stamp differs from the current inputs, or the binary no longer matches the
# recorded sha256. Builds are reproducible: same inputs, same bytes.
#
# Kubernetes is built in a throwaway module (a temp dir, never this repository) that requires
# k8s.io/kubernetes and replaces every staging repository (the list is read from kubernetes' own go.mod)
# with its published k8s.io/<repo> v0.<minor>.<patch> module. etcd's main package is the root of the
# go.etcd.io/etcd/server/v3 module and is built the same way.
#
# Each link needs about 2 GB of memory, so components are built one at a time.
set -euo pipefail

KUBE_VERSION=v1.33.13
STAGING_VERSION=v0.33.13 # the staging repos' module version matching KUBE_VERSION
KUBE_GO_DIRECTIVE=1.24.0 # kubernetes' go.mod: "go 1.24.0" and "godebug default=go1.24"
KUBE_GODEBUG_DEFAULT=go1.24
ETCD_VERSION=v3.5.21
ETCD_GO_DIRECTIVE=1.23.0 # go.etcd.io/etcd/server/v3's go.mod
# Bump when the way binaries are built changes in a way the variables below do not capture.
RECIPE=1

ALL_COMPONENTS=(etcd kube-apiserver kubeadm kubelet kube-controller-manager kube-scheduler kubectl)
DEFAULT_COMPONENTS=(etcd kube-apiserver)

CACHE_ROOT="${CONSTELLATION_CACHE:-/var/cache/constellation}"
OUT="$CACHE_ROOT/kubernetes/$KUBE_VERSION/bin"
GO="${GO:-go}"

kube_version_ldflags() {
	# Like hack/lib/version.sh: set both component-base's and client-go's version variables. -s -w as in
	# upstream release builds (no symbol table, no DWARF). buildDate is fixed so builds are reproducible.
	local pkg key flags=()
	local -a kv=(
		"gitVersion=$KUBE_VERSION"
		"gitMajor=1"
		"gitMinor=33"
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

log() { printf '%s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# --- arguments ---------------------------------------------------------------------------------------------
components=()
for arg in "$@"; do
	case "$arg" in
	-h | --help)
		usage
		exit 0
		;;
	-*) die "unknown flag $arg (see --help)" ;;
	esac
	known=false
	for c in "${ALL_COMPONENTS[@]}"; do
		[[ "$arg" == "$c" ]] && known=true
	done
	$known || die "unknown component '$arg'; known: ${ALL_COMPONENTS[*]}"
	components+=("$arg")
done
[[ ${#components[@]} -gt 0 ]] || components=("${DEFAULT_COMPONENTS[@]}")

command -v "$GO" >/dev/null || die "go not found (set GO or PATH)"
command -v sha256sum >/dev/null || die "sha256sum not found"

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

workdir=""
cleanup() { [[ -z "$workdir" ]] || rm -rf "$workdir"; }
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
		die "the Go module proxy ($GOPROXY_VALUE) is unreachable; building Kubernetes/etcd needs it (or a Go module cache that already holds every module)"
	fi
	die "go $1 failed (see above)"
}

ensure_workdir() {
	[[ -n "$workdir" ]] || workdir="$(mktemp -d "${TMPDIR:-/tmp}/kubebuild.XXXXXX")"
}

# Writes the throwaway module for Kubernetes into $workdir/kubernetes (once).
kube_module() {
	local dir="$workdir/kubernetes"
	[[ -f "$dir/go.mod" ]] && return 0
	mkdir -p "$dir"
	local kdir
	# Outside any module, so nothing but the module cache is touched.
	(cd "$workdir" && GOFLAGS="" run_go mod download -json "k8s.io/kubernetes@$KUBE_VERSION") || exit 1
	kdir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' "$workdir/go.log")"
	[[ -f "$kdir/go.mod" ]] || die "could not locate k8s.io/kubernetes@$KUBE_VERSION in the module cache"
	local staging
	staging="$(sed -n '/^replace (/,/^)/p' "$kdir/go.mod" | sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' | sort)"
	[[ -n "$staging" ]] || die "no staging replacements found in $kdir/go.mod"
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

etcd_module() {
	local dir="$workdir/etcd"
	[[ -f "$dir/go.mod" ]] && return 0
	mkdir -p "$dir"
	printf 'module constellation.build/etcd\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
		"$ETCD_GO_DIRECTIVE" "$ETCD_VERSION" >"$dir/go.mod"
}

# Prints the inputs of a component, one per line; this is the stamp (without the sha256 line).
inputs() {
	local c="$1"
	echo "recipe=$RECIPE"
	echo "component=$c"
	echo "go=$GO_VERSION"
	echo "platform=$GO_PLATFORM"
	echo "env=CGO_ENABLED=$CGO_ENABLED GOFLAGS=$GOFLAGS"
	if [[ "$c" == etcd ]]; then
		echo "module=go.etcd.io/etcd/server/v3@$ETCD_VERSION go=$ETCD_GO_DIRECTIVE"
		echo "package=go.etcd.io/etcd/server/v3"
		echo "flags=-trimpath"
		echo "ldflags=$ETCD_LDFLAGS"
	else
		echo "module=k8s.io/kubernetes@$KUBE_VERSION staging=$STAGING_VERSION go=$KUBE_GO_DIRECTIVE godebug=$KUBE_GODEBUG_DEFAULT"
		echo "package=k8s.io/kubernetes/cmd/$c"
		echo "flags=-trimpath -tags=$KUBE_TAGS"
		echo "ldflags=$KUBE_LDFLAGS"
	fi
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

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
	ensure_workdir
	if [[ "$c" == etcd ]]; then
		etcd_module
		dir="$workdir/etcd"
		pkg=go.etcd.io/etcd/server/v3
		ldflags="$ETCD_LDFLAGS"
	else
		kube_module
		dir="$workdir/kubernetes"
		pkg="k8s.io/kubernetes/cmd/$c"
		ldflags="$KUBE_LDFLAGS"
		flags+=("-tags=$KUBE_TAGS")
	fi
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
	for c in "${ALL_COMPONENTS[@]}"; do
		[[ -f "$c" ]] && present+=("$c")
	done
	sha256sum "${present[@]}" >.SHA256SUMS.tmp
	mv -f .SHA256SUMS.tmp SHA256SUMS
)
log "wrote $OUT/SHA256SUMS"
