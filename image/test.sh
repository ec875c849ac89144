#!/usr/bin/env bash
# The image checks CI runs (make image-test):
#   1. reproducibility: the image is built twice from a clean mkosi state (the second time with --no-cache,
#      sharing only the package downloads) and the UKI, the root, its verity partition and the disk must be
#      bit-identical;
#   2. ground truth: the image boots in QEMU (OVMF + swtpm, TCG) and the PCRs and event log it reports must
#      equal measurements.Precompute's prediction (image/groundtruth), and the local launcher must extend a
#      vTPM to the same values (internal/launcher).
# Both results are cached by the image's content hash: a re-run on an unchanged image only re-links.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=image/mkosi/env.sh
source "$here/mkosi/env.sh"
log() { printf '[image-test] %s\n' "$*" >&2; }

# Both builds pack the same bootstrapper, built once here: the comparison must be between builds of the
# same inputs.
bootstrapper_bin=$(mktemp)
trap 'rm -f "$bootstrapper_bin"' EXIT
if [[ " $* " != *" --bootstrapper "* ]]; then
  (cd "$repo" && bazel/bazel build //bootstrapper/cmd/bootstrapper >&2)
  install -m 0755 "$repo/bazel-bin/bootstrapper/cmd/bootstrapper/bootstrapper_/bootstrapper" "$bootstrapper_bin"
  set -- "$@" --bootstrapper "$bootstrapper_bin"
fi

start=$(date +%s)
first=$("$here/mkosi/build.sh" "$@")
log "first build (or cached): $first, $(($(date +%s) - start)) s"
sums=$(sha256sum <"$first/SHA256SUMS" | cut -c1-32)

repro_stamp="$MKOSI_CACHE/reproducible-$sums.ok"
if [ -f "$repro_stamp" ]; then
  log "reproducibility of this image already shown: $(cat "$repro_stamp")"
else
  link=$(mktemp -u "$MKOSI_CACHE/repro-link.XXXXXX")
  start=$(date +%s)
  second=$("$here/mkosi/build.sh" "$@" --no-cache --out "$link")
  rm -f "$link"
  log "second build from a clean state: $(($(date +%s) - start)) s"
  [ "$second" != "$first" ] || { log "the second build replaced the first instead of building beside it"; exit 1; }
  # Compare the files themselves, not only the recorded sums.
  (cd "$second" && sha256sum constellation.efi root.erofs root.verity disk.raw systemd-bootx64.efi) >"$second/SHA256SUMS.recomputed"
  if ! diff -u "$first/SHA256SUMS" "$second/SHA256SUMS.recomputed" >&2; then
    log "NOT REPRODUCIBLE: the two builds differ (diff above); $first and $second are kept for comparison"
    exit 1
  fi
  rm -rf "$second"
  echo "$(date -u +%FT%TZ) two builds, identical: $(tr '\n' ' ' <"$first/SHA256SUMS")" >"$repro_stamp"
  log "reproducible: both builds have identical UKI, root, verity and disk"
fi

gt_key=$( (cat "$first/SHA256SUMS"; cd "$repo" && cat image/groundtruth/*.go measurements/*.go internal/launcher/*.go) |
  sha256sum | cut -c1-32)
gt_stamp="$MKOSI_CACHE/groundtruth-$gt_key.ok"
if [ -f "$gt_stamp" ]; then
  log "ground truth for this image and precomputation already passed: $(cat "$gt_stamp")"
else
  start=$(date +%s)
  (cd "$repo" && CONSTELLATION_IMAGE_DIR="$first" CONSTELLATION_REQUIRE_IMAGE=1 \
    go test -count=1 -timeout 60m -v -run 'TestQEMUBoot|TestRealImage' ./image/groundtruth/ ./internal/launcher/ >&2)
  echo "$(date -u +%FT%TZ) QEMU boot and launcher matched the prediction in $(($(date +%s) - start)) s" >"$gt_stamp"
fi
