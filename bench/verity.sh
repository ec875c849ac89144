#!/usr/bin/env bash
# Prints the speed of dm-verity verification in Go (localprovider/verity: the whole hash tree of a 256 MiB
# data file recomputed and compared, superblock, 4 KiB blocks, on all cores) next to `sha256sum` of the
# same file. The file is random and in the page cache for both, so this measures hashing, not the disk.
# Usage: bench/verity.sh [benchtime]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
benchtime=${1:-5x}

data=$(mktemp)
trap 'rm -f "$data"' EXIT
head -c $((256 << 20)) /dev/urandom >"$data"
size=$(stat -c %s "$data")

echo "== dm-verity verification (localprovider/verity), 256 MiB, $(nproc) cores"
out=$(VERITY_BENCH_DATA="$data" go test -run '^$' -bench 'Verify|SHA256File' -benchtime "$benchtime" ./localprovider/verity/)
echo "$out" | per_second
verify=$(echo "$out" | awk '/^BenchmarkVerify/ {for (i = 1; i < NF; i++) if ($(i+1) == "MB/s") print $i}')

# sha256sum over the same file, median of 3 runs.
times=()
for _ in 1 2 3; do
  start=$(date +%s.%N)
  sha256sum "$data" >/dev/null
  times+=("$(echo "$(date +%s.%N) - $start" | bc)")
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
sha=$(echo "scale=1; $size / 1000000 / $median" | bc)
printf '  %-40s %8.0f MB/s\n' "sha256sum (coreutils)" "$sha"
printf '  verify / sha256sum: %.0f%%\n' "$(echo "100 * $verify / $sha" | bc -l)"
