#!/usr/bin/env bash
# Prints the speed of PCR precomputation from a UKI (parsing plus every hash of a boot) next to
# `sha256sum` over the same amount of data. The UKI is assembled from systemd 252's stub and Debian's real
# kernel, fetched once as a package and extracted (not installed) into the cache.
# Usage: bench/measurements.sh [benchtime]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
benchtime=${1:-3s}
cache="${CONSTELLATION_CACHE:-/var/cache/constellation}/bench"
mkdir -p "$cache"

# The node image's UKI when it has been built (make image), as the issue asks: precompute vs sha256sum of
# the same file. Otherwise a UKI assembled from Debian's stub and kernel.
uki=""
if [ -f out/image/constellation.efi ]; then
  uki=$(readlink -f out/image/constellation.efi)
  export MEASUREMENTS_BENCH_UKI=$uki
fi

if [ -z "${MEASUREMENTS_TEST_VMLINUZ:-}" ]; then
  kernel=$(find "$cache/kernel" -name 'vmlinuz-*' 2>/dev/null | head -1 || true)
  if [ -z "$kernel" ]; then
    tmp=$(mktemp -d)
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    (cd "$tmp" && apt-get download -qq "$pkg" && dpkg-deb -x ./*.deb "$cache/kernel")
    rm -rf "$tmp"
    kernel=$(find "$cache/kernel" -name 'vmlinuz-*' | head -1)
  fi
  export MEASUREMENTS_TEST_VMLINUZ=$kernel
fi

if [ -n "$uki" ]; then
  echo "== PCR precomputation (measurements), the node image's UKI ($(($(stat -c %s "$uki") / 1048576)) MiB)"
else
  echo "== PCR precomputation (measurements), UKI with $(basename "$MEASUREMENTS_TEST_VMLINUZ")"
fi
out=$(go test -run '^$' -bench 'Precompute|SHA256' -benchtime "$benchtime" ./internal/measurements/precompute/)
echo "$out" | per_second
precompute=$(echo "$out" | awk '/^BenchmarkPrecompute/ {for (i = 1; i < NF; i++) if ($(i+1) == "MB/s") print $i}')

# sha256sum over the UKI itself, or over 10 copies of the kernel (about 80 MB); median of 3 runs.
data=$(mktemp)
trap 'rm -f "$data"' EXIT
if [ -n "$uki" ]; then
  cat "$uki" >"$data"
else
  for _ in $(seq 10); do cat "$MEASUREMENTS_TEST_VMLINUZ"; done >"$data"
fi
size=$(stat -c %s "$data")
times=()
for _ in 1 2 3; do
  start=$(date +%s.%N)
  sha256sum "$data" >/dev/null
  times+=("$(echo "$(date +%s.%N) - $start" | bc)")
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
sha=$(echo "scale=1; $size / 1000000 / $median" | bc)
printf '  %-40s %8.0f MB/s\n' "sha256sum (coreutils)" "$sha"
printf '  precompute / sha256sum: %.0f%% (goal: at least 70%%)\n' "$(echo "100 * $precompute / $sha" | bc -l)"
