#!/usr/bin/env bash
# Prints the local cluster's figures: node start, time to Ready for the init (control plane) and the join
# (worker), and the two nodes' resident memory, from the integration test (a real kubeadm cluster of the
# node image). Needs root, the image (make image) and the components (make setup). Goal: both Ready within
# 60 s warm, at most 1.5 GB RSS.
# Usage: bench/cluster.sh [runs]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-1}
[ -e out/image/constellation.efi ] || { echo "no node image: run make image first" >&2; exit 1; }
make services >/dev/null 2>&1
echo "== local cluster: 1 control plane + 1 worker from the node image ($runs run(s))"
for _ in $(seq "$runs"); do
  CI=true CONSTELLATION_IMAGE_DIR=$(readlink -f out/image) go test -count=1 -timeout 30m -v \
    -run TestTwoNodeCluster ./localprovider/cluster/ | sed -n 's/.*FIGURES /  /p'
done
