# Shared locations for bazel/setup.sh and bazel/bazel. The cache outlives checkouts so a second clone on the
# same machine (and CI re-runs) reuse the chroot, Bazel's output root and its disk cache.
BAZEL_CACHE="${CONSTELLATION_CACHE:-/var/cache/constellation}/bazel"
BAZEL_CHROOT="$BAZEL_CACHE/forky"
BAZEL_OUTPUT_ROOT="$BAZEL_CACHE/output-root"
BAZEL_DISK_CACHE="$BAZEL_CACHE/disk-cache"
GOMODCACHE_DIR="$(go env GOMODCACHE)"
# Kubernetes binaries built by bazel/kubernetes/build.sh; tests under Bazel run them from the chroot.
KUBE_CACHE="${CONSTELLATION_CACHE:-/var/cache/constellation}/kubernetes"
# The node image build's tools tree, package cache and finished images (image/mkosi/env.sh); the
# //image:image target runs image/mkosi/build.sh inside the chroot.
MKOSI_CACHE="${CONSTELLATION_CACHE:-/var/cache/constellation}/mkosi"
