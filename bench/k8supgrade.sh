#!/usr/bin/env bash
# Prints the figures of a Kubernetes upgrade: the wall time of `constellation upgrade apply` moving a fresh
# 2-node mini cluster from the default Kubernetes version to the next one this release pins (each run needs
# a new cluster: Kubernetes never goes back), beside the wall time of its `mini up` (the ratio says what the
# upgrade costs against building the cluster anew); and the longest time in which a workload (2 replicas, one
# per node, a PodDisruptionBudget of one, behind a NodePort; asked on both nodes every 0.2 s) did not answer,
# and in which the Kubernetes API (/readyz, every 0.5 s) did not. Goals: the upgrade <= 5 min, the workload
# unanswered <= 10 s.
# Needs root, `make build`, `make kubernetes-next` and the workload image (out/e2e-workload.tar, `make bench`
# builds it).
# Each run also prints where the time went: the CLI's steps with their durations, and the moments of
# `kubeadm upgrade apply` on the control plane (from its bootstrapper's log), relative to its start.
# With --image, the full upgrade: the next Kubernetes version and image B (out/image-b, `make image-b`) in one
# `upgrade apply`, as the upgrade end-to-end test does it.
# Usage: bench/k8supgrade.sh [--image] [runs]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
image_b=""
if [ "${1:-}" = --image ]; then
  image_b=$(readlink -f out/image-b)
  [ -d "$image_b" ] || { echo "no image B: run make image-b first" >&2; exit 1; }
  shift
fi
runs=${1:-3}
cli=$(readlink -f out/constellation)
workload=$(readlink -f out/e2e-workload.tar)
next=$(sed -n 's/^KUBERNETES_NEXT := //p' Makefile)
kubectl=${CONSTELLATION_CACHE:-/var/cache/constellation}/kubernetes/$next/bin/kubectl
[ -x "$cli" ] || { echo "no CLI: run make build first" >&2; exit 1; }
[ -f "$workload" ] || { echo "no workload image: bazel build //cli/e2e/workload:image (make bench does)" >&2; exit 1; }
[ -x "$kubectl" ] || { echo "Kubernetes $next is not built: run make kubernetes-next" >&2; exit 1; }
ws=""
cleanup() {
  [ -n "$ws" ] || return 0
  "$cli" -C "$ws" mini down >/dev/null 2>&1 || true
  rm -rf "$ws" "$ws.err" "$ws.gaps" "$ws.apigaps"
}
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }

# gaps CMD...: runs CMD every 0.2 s until TERM and writes the longest stretch in which it failed to $out.
gaps() {
  local out=$1 interval=$2 longest=0 down_since=""
  shift 2
  trap 'echo "$longest" >"$out"; exit 0' TERM
  while :; do
    if "$@" >/dev/null 2>&1; then
      if [ -n "$down_since" ]; then
        longest=$(awk -v l="$longest" -v d="$(sub "$(now)" "$down_since")" 'BEGIN { print (d > l ? d : l) }')
        down_since=""
      fi
    elif [ -z "$down_since" ]; then
      down_since=$(now)
    fi
    sleep "$interval"
  done
}
# kubeadm_moments LOG: the milestones of `kubeadm upgrade apply` in a bootstrapper's log (JSON records, one
# per line kubeadm printed: msg "kubeadm", the text in "line"), in seconds after the first of them.
kubeadm_moments() {
  python3 - "$1" <<'PY'
import json, re, sys
from datetime import datetime
milestone = re.compile(r"^\[(upgrade|addons)[^]]*\] .*(Preparing for|upgraded successfully|Waiting for etcd to become|SUCCESS|Applied essential addon)")
first = None
for raw in open(sys.argv[1], errors="replace"):
    try:
        rec = json.loads(raw)
    except ValueError:
        continue
    line = rec.get("line", "")
    if rec.get("msg") != "kubeadm" or not milestone.search(line):
        continue
    t = datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).timestamp()
    first = t if first is None else first
    print(f"      +{t - first:6.1f} s  {line}")
PY
}

# answered: some node's NodePort answers.
answered() {
  curl -sf -m 1 http://10.42.0.2:31080/ >/dev/null || curl -sf -m 1 http://10.42.0.3:31080/ >/dev/null
}

# The end-to-end test's workload: one replica per node, a PodDisruptionBudget of one, NodePort 31080.
manifest=cli/e2e/workload.yaml
trap cleanup EXIT

what="Kubernetes upgrade of the 2-node mini cluster to $next"
[ -z "$image_b" ] || what="full upgrade of the 2-node mini cluster to Kubernetes $next and image B"
echo "== $what ($runs run(s), each on a fresh cluster)"
times=() ups=()
for run in $(seq "$runs"); do
  ws=$(mktemp -d)
  k() { "$kubectl" --kubeconfig "$ws/constellation-admin.conf" "$@"; }
  t0=$(now)
  "$cli" -C "$ws" mini up >/dev/null 2>"$ws.err" || { cat "$ws.err" >&2; exit 1; }
  until [ "$(k get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" = 2 ]; do sleep 0.5; done
  up=$(sub "$(now)" "$t0")
  ups+=("$up")
  "$cli" -C "$ws" mini image load "$workload" >/dev/null 2>"$ws.err" || { cat "$ws.err" >&2; exit 1; }
  k apply -f "$manifest" >/dev/null
  until [ "$(k get deployment e2e-workload -o 'jsonpath={.status.readyReplicas}' 2>/dev/null)" = 2 ]; do sleep 0.5; done
  until answered; do sleep 0.2; done
  "$cli" -C "$ws" upgrade check --update-config --kubernetes "$next" ${image_b:+--image "$image_b"} >/dev/null 2>"$ws.err" || { cat "$ws.err" >&2; exit 1; }
  gaps "$ws.gaps" 0.2 answered &
  workload_probe=$!
  gaps "$ws.apigaps" 0.5 k --request-timeout 2s get --raw /readyz &
  api_probe=$!
  t0=$(now)
  "$cli" -C "$ws" upgrade apply >/dev/null 2>"$ws.err" || { kill "$workload_probe" "$api_probe"; cat "$ws.err" >&2; exit 1; }
  took=$(sub "$(now)" "$t0")
  kill -TERM "$workload_probe" "$api_probe"
  wait "$workload_probe" "$api_probe" || true
  times+=("$took")
  printf '  run %d: mini up %s s; upgrade %s s (%.1f x mini up); workload unanswered for at most %s s, Kubernetes API for at most %s s\n' \
    "$run" "$up" "$took" "$(awk -v a="$took" -v b="$up" 'BEGIN { print a / b }')" "$(cat "$ws.gaps")" "$(cat "$ws.apigaps")"
  echo "    the CLI's steps:"
  grep '✓' "$ws.err" | sed 's/^/      /' || true
  cluster=$(sed -n 's/^name: *//p' "$ws/constellation-conf.yaml" | head -1)
  cplog=/var/lib/constellation/local/$cluster/cp-0/logs/bootstrapper.log
  if [ -f "$cplog" ]; then
    echo "    kubeadm upgrade apply on cp-0 (seconds after its first milestone):"
    kubeadm_moments "$cplog" || true
  fi
  cleanup
  ws=""
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '  median upgrade: %s s (median mini up %s s)\n' "$(median "${times[@]}")" "$(median "${ups[@]}")"
