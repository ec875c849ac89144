#!/usr/bin/env bash
# Prints JoinService tickets/s with 1, 8 and 64 concurrent clients, and the join latency (p50, p99) of 100 nodes
# joining at once: each ticket is a new aTLS connection with
# a fresh swtpm attestation, full validation, KeyService derivations, CSR signing and a bootstrap token in a
# real kube-apiserver (built by bazel/kubernetes/build.sh).
# Usage: bench/joinservice.sh [benchtime]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
benchtime=${1:-3s}
echo "== JoinService IssueJoinTicket end to end (joinservice/internal/server)"
go test -run '^$' -bench 'IssueJoinTicket' -benchtime "$benchtime" ./joinservice/internal/server/ | per_second
echo "== 100 nodes join at once (each its own swtpm vTPM): latency of a join and of the whole burst in ms, median of 5 bursts"
runs=$(go test -run '^$' -bench 'HundredJoins' -benchtime 1x -count 5 ./joinservice/internal/server/ |
  awk '/^BenchmarkHundredJoins/ {for (i = 1; i < NF; i++) if ($(i+1) ~ /-ms$/) print $(i+1), $i}')
for metric in p50-ms p99-ms max-ms all-ms; do
  values=$(awk -v m="$metric" '$1 == m {print $2}' <<<"$runs" | sort -n)
  printf "  %-8s median %7.1f   (runs: %s)\n" "$metric" "$(awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}' <<<"$values")" "$(tr '\n' ' ' <<<"$values" | sed 's/ $//')"
done
