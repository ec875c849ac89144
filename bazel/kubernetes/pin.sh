#!/usr/bin/env bash
# Pins the Kubernetes components of a real build: reads components.json of each version set that
# bazel/kubernetes/build.sh built (build.sh --version V all) and writes internal/versions/pinned_components.go,
# which is committed. A version given here becomes supported (versions.SupportedKubernetes).
#
# Usage: bazel/kubernetes/pin.sh [VERSION ...]   (default: v1.33.13 v1.34.10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=(v1.33.13 v1.34.10)
GOFLAGS="-mod=readonly" go run ./bazel/kubernetes/kubecomponents pin \
	--cache "${CONSTELLATION_CACHE:-/var/cache/constellation}/kubernetes" \
	--out internal/versions/pinned_components.go "${versions[@]}"
