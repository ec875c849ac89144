#!/usr/bin/env bash
# Prints the CLI's figures: wall time of `constellation mini up` (warm: components and image built, the
# first run of the series also warms the Terraform plugin start), until it returns with the cluster
# initialized and until every node is Ready; the wall time of `constellation verify` of every node (median
# and p90 of N runs); and the resident memory of the nodes (cgroup v1 total_rss of each node's memory
# cgroup: containerd, bootstrapper, kubelet, containers; the host-side swtpm not included). Needs root and
# `make build`. Goals: mini up <= 60 s warm, verify p50 <= 100 ms.
# Usage: bench/cli.sh [mini-up runs] [verify runs] [workers]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ups=${1:-2}
verifies=${2:-25}
workers=${3:-1}
nodes=$((workers + 1))
cli=$(readlink -f out/constellation)
kubectl=/var/cache/constellation/kubernetes/v1.33.13/bin/kubectl
[ -x "$cli" ] || { echo "no CLI: run make build first" >&2; exit 1; }
ws=$(mktemp -d)
trap '"$cli" -C "$ws" mini down >/dev/null 2>&1 || true; rm -rf "$ws"' EXIT
now() { date +%s.%N; }
diff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
median() { sort -n | awk '{a[NR]=$1} END {printf "%.0f ms (p90 %.0f ms)", a[int((NR+1)/2)]*1000, a[int(NR*0.9+0.5)]*1000}'; }

# rss_mib: the summed total_rss of every node of the cluster, in MiB, from the memory cgroup each node's
# node.json names.
rss_mib() {
  local total=0 dir stat
  for state in /var/lib/constellation/local/"$1"/*/node.json; do
    dir=$(sed -n 's/^ *"memory": "\(.*\)",\{0,1\}$/\1/p' "$state")
    stat=$(awk '$1 == "total_rss" { print $2 }' "$dir/memory.stat")
    total=$((total + stat))
  done
  echo $((total / 1048576))
}

echo "== constellation mini up / verify ($ups mini up run(s) of 1 control plane + $workers worker(s), $verifies verify runs each)"
for run in $(seq "$ups"); do
  rm -rf "$ws" && mkdir -p "$ws"
  t0=$(now)
  "$cli" -C "$ws" mini up --workers "$workers" >/dev/null 2>"$ws.err" || { cat "$ws.err" >&2; exit 1; }
  t1=$(now)
  until [ "$("$kubectl" --kubeconfig "$ws/constellation-admin.conf" get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" = "$nodes" ]; do
    sleep 0.5
  done
  t2=$(now)
  until "$cli" -C "$ws" verify >/dev/null 2>&1; do sleep 1; done
  # One run asks every node once, and the VerificationService lets a source make 2 connections or calls a
  # second (burst 10), a run taking one of each: the runs are paced below that, since a refused run would be
  # timed as a (fast) failure.
  times=$(for _ in $(seq "$verifies"); do
    s=$(now); "$cli" -C "$ws" verify >/dev/null || exit 1; e=$(now); diff "$e" "$s"; echo; sleep 1.1
  done) || { echo "verify failed" >&2; exit 1; }
  cluster=$(sed -n 's/^name: *//p' "$ws/constellation-conf.yaml")
  printf '  run %d: mini up returned after %.1f s, all %d nodes Ready after %.1f s; verify (%d nodes) %s; nodes RSS %s MiB\n' \
    "$run" "$(diff "$t1" "$t0")" "$nodes" "$(diff "$t2" "$t0")" "$nodes" "$(echo "$times" | median)" "$(rss_mib "$cluster")"
  "$cli" -C "$ws" mini down >/dev/null 2>&1
done
