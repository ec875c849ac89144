#!/usr/bin/env bash
# Prints the attestation figures: quote validations/s, documents issued/s (real swtpm), and aTLS handshakes/s
# in each mode on 1 and 2 cores, plus the share of the Go side's CPU time spent in cryptography.
# Usage: bench/attestation.sh [benchtime], e.g. bench/attestation.sh 5s
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
benchtime=${1:-3s}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh

echo "== quote validation (no TPM) and issuing (real swtpm), internal/attestation/vtpm"
go test -run '^$' -bench 'Validate|Issue' -benchtime "$benchtime" -cpu 1,2 ./internal/attestation/vtpm/ | per_second

echo "== aTLS handshakes with attestation (internal/atls; swtpm quotes, full validation)"
go test -run '^$' -bench 'Handshake' -benchtime "$benchtime" -cpu 1,2 \
  -cpuprofile "$out/cpu.out" -o "$out/atls.test" ./internal/atls/ >"$out/bench.txt"
per_second <"$out/bench.txt"

# Share of sampled Go CPU time in crypto: the standard library's crypto packages (including FIPS internals),
# x/crypto and math/big (ECDSA verification of quotes). swtpm runs in its own process and is not sampled.
go tool pprof -top -nodecount=100000 "$out/atls.test" "$out/cpu.out" 2>/dev/null |
  awk '$6 ~ /^(crypto\/|vendor\/golang\.org\/x\/crypto|golang\.org\/x\/crypto|math\/big)/ {gsub("%","",$2); c += $2}
       $2 ~ /%$/ {gsub("%","",$2); t += $2}
       END {if (t > 0) printf "  crypto share of Go CPU samples: %.0f%% (flat)\n", 100 * c / t}'
