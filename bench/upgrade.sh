#!/usr/bin/env bash
# Prints the figures of an image roll-out: the wall time of `constellation upgrade apply` moving the 2-node
# mini cluster from image A (out/image) to image B (out/image-b) and back, per run and as the median, beside
# the wall time of `mini up` measured in the same run (the ratio says what a roll-out costs against building
# the cluster anew); and the longest time the Kubernetes API (/readyz through the admin kubeconfig, asked
# every 0.5 s) did not answer during each roll-out. Goal: the roll-out <= 5 min. The workload's own
# unavailability needs a workload image on the nodes (`mini image load`, not built yet): not measured here.
# Needs root, `make build` and `make image-b`.
# Usage: bench/upgrade.sh [roll-outs]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-3}
cli=$(readlink -f out/constellation)
image_a=$(readlink -f out/image)
image_b=$(readlink -f out/image-b)
kubectl=/var/cache/constellation/kubernetes/v1.33.13/bin/kubectl
[ -x "$cli" ] || { echo "no CLI: run make build first" >&2; exit 1; }
[ -d "$image_b" ] || { echo "no image B: run make image-b first" >&2; exit 1; }
ws=$(mktemp -d)
trap '"$cli" -C "$ws" mini down >/dev/null 2>&1 || true; rm -rf "$ws" "$ws.err" "$ws.gaps"' EXIT
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }

echo "== image roll-out of the 2-node mini cluster ($runs roll-out(s), alternating A -> B -> A)"
t0=$(now)
"$cli" -C "$ws" mini up >/dev/null 2>"$ws.err" || { cat "$ws.err" >&2; exit 1; }
until [ "$("$kubectl" --kubeconfig "$ws/constellation-admin.conf" get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" = 2 ]; do
  sleep 0.5
done
up=$(sub "$(now)" "$t0")
printf '  mini up (both nodes Ready): %s s\n' "$up"

# probe: the longest stretch in which /readyz did not answer, written to $ws.gaps when stopped.
probe() {
  local longest=0 down_since=""
  trap 'echo "$longest" >"$ws.gaps"; exit 0' TERM
  while :; do
    if "$kubectl" --kubeconfig "$ws/constellation-admin.conf" --request-timeout 2s get --raw /readyz >/dev/null 2>&1; then
      if [ -n "$down_since" ]; then
        longest=$(awk -v l="$longest" -v d="$(sub "$(now)" "$down_since")" 'BEGIN { print (d > l ? d : l) }')
        down_since=""
      fi
    elif [ -z "$down_since" ]; then
      down_since=$(now)
    fi
    sleep 0.5
  done
}

times=()
target=$image_b
for run in $(seq "$runs"); do
  "$cli" -C "$ws" upgrade check --image "$target" --update-config --kubernetes v1.33.13 >/dev/null 2>"$ws.err" ||
    { cat "$ws.err" >&2; exit 1; }
  probe &
  prober=$!
  t0=$(now)
  "$cli" -C "$ws" upgrade apply >/dev/null 2>"$ws.err" || { kill "$prober"; cat "$ws.err" >&2; exit 1; }
  took=$(sub "$(now)" "$t0")
  kill -TERM "$prober"
  wait "$prober" || true
  times+=("$took")
  printf '  run %d: to %s: %s s (%.1f x mini up); Kubernetes API unanswered for at most %s s\n' "$run" \
    "$([ "$target" = "$image_b" ] && echo "image B" || echo "image A")" "$took" \
    "$(awk -v a="$took" -v b="$up" 'BEGIN { print a / b }')" "$(cat "$ws.gaps")"
  if [ "$target" = "$image_b" ]; then target=$image_a; else target=$image_b; fi
done
printf '  median roll-out: %s s\n' "$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
