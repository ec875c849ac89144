#!/usr/bin/env bash
# Prints the CLI's figures: wall time of `constellation mini up` (warm: components and image built, the
# first run of the series also warms the Terraform plugin start), until it returns with the cluster
# initialized and until both nodes are Ready; and the wall time of `constellation verify` of both nodes
# (median and p90 of N runs). Needs root and `make build`. Goals: mini up <= 60 s warm, verify p50 <= 100 ms.
# Usage: bench/cli.sh [mini-up runs] [verify runs]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ups=${1:-2}
verifies=${2:-25}
cli=$(readlink -f out/constellation)
kubectl=/var/cache/constellation/kubernetes/v1.33.13/bin/kubectl
[ -x "$cli" ] || { echo "no CLI: run make build first" >&2; exit 1; }
ws=$(mktemp -d)
trap '"$cli" -C "$ws" mini down >/dev/null 2>&1 || true; rm -rf "$ws"' EXIT
now() { date +%s.%N; }
diff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
median() { sort -n | awk '{a[NR]=$1} END {printf "%.0f ms (p90 %.0f ms)", a[int((NR+1)/2)]*1000, a[int(NR*0.9+0.5)]*1000}'; }

echo "== constellation mini up / verify ($ups mini up run(s), $verifies verify runs each)"
for run in $(seq "$ups"); do
  rm -rf "$ws" && mkdir -p "$ws"
  t0=$(now)
  "$cli" -C "$ws" mini up >/dev/null 2>"$ws.err" || { cat "$ws.err" >&2; exit 1; }
  t1=$(now)
  until [ "$("$kubectl" --kubeconfig "$ws/constellation-admin.conf" get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" = 2 ]; do
    sleep 0.5
  done
  t2=$(now)
  until "$cli" -C "$ws" verify >/dev/null 2>&1; do sleep 1; done
  times=$(for _ in $(seq "$verifies"); do
    s=$(now); "$cli" -C "$ws" verify >/dev/null; e=$(now); diff "$e" "$s"; echo
  done)
  printf '  run %d: mini up returned after %.1f s, both nodes Ready after %.1f s; verify (2 nodes) %s\n' \
    "$run" "$(diff "$t1" "$t0")" "$(diff "$t2" "$t0")" "$(echo "$times" | median)"
  "$cli" -C "$ws" mini down >/dev/null 2>&1
done
