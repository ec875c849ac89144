#!/usr/bin/env bash
# The image checks CI runs (make image-test):
#   1. reproducibility: the image holds no build date (/etc/shadow), and it is built twice from a clean
#      mkosi state (the second time with --no-cache, sharing only the package downloads) and the UKI, the
#      root, its verity partition and the disk must be bit-identical;
#   2. rebuild after the archive moved: the first build's packages are saved as a package bundle and the
#      image is built a third time from the bundle alone (tools tree included), with every address but the
#      bundle's loopback repository blocked; it must be bit-identical too. image/reproduce.sh must then
#      reproduce the first image's measurements.json from the bundle (exit 0), and name the PCR of a
#      changed file (exit 1);
#   3. ground truth: the image boots in QEMU (OVMF + swtpm, TCG) and the PCRs and event log it reports must
#      equal precompute.Precompute's prediction (image/groundtruth), and the local launcher must extend a
#      vTPM to the same values (localprovider/launcher).
# The results are cached by the image's content hash: a re-run on an unchanged image only re-links.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=image/mkosi/env.sh
source "$here/mkosi/env.sh"
log() { printf '[image-test] %s\n' "$*" >&2; }

# Every build packs the same bootstrapper, built once here: the comparison must be between builds of the
# same inputs.
tmp=$(mktemp -d)
trap 'umount "$tmp/root-mnt" 2>/dev/null || true; rm -rf "$tmp"' EXIT
(cd "$repo" && bazel/bazel build //bootstrapper/cmd/bootstrapper //image/cmd/imagepackages //cli/cmd/constellation >&2)
install -m 0755 "$repo/bazel-bin/bootstrapper/cmd/bootstrapper/bootstrapper_/bootstrapper" "$tmp/bootstrapper"
install -m 0755 "$repo/bazel-bin/image/cmd/imagepackages/imagepackages_/imagepackages" "$tmp/imagepackages"
install -m 0755 "$repo/bazel-bin/cli/cmd/constellation/constellation_/constellation" "$tmp/constellation"
tools=(--bootstrapper "$tmp/bootstrapper" --imagepackages "$tmp/imagepackages")

start=$(date +%s)
first=$("$here/mkosi/build.sh" "${tools[@]}" "$@")
log "first build (or cached): $first, $(($(date +%s) - start)) s"
sums=$(sha256sum <"$first/SHA256SUMS" | cut -c1-32)

# same_files DIR: DIR's artifacts, hashed anew, equal the first build's recorded sums.
same_files() {
  (cd "$1" && sha256sum constellation.efi root.erofs root.verity disk.raw systemd-bootx64.efi) >"$1/SHA256SUMS.recomputed"
  diff -u "$first/SHA256SUMS" "$1/SHA256SUMS.recomputed" >&2
}

# no_build_date DIR: every /etc/shadow entry of DIR's root carries SOURCE_DATE_EPOCH's day. Two builds
# minutes apart cannot show a leak of the build date; builds on either side of midnight did.
no_build_date() {
  local epoch bad
  epoch=$(sed -n 's/^SourceDateEpoch=//p' "$here/mkosi/mkosi.conf")
  mkdir -p "$tmp/root-mnt"
  mount -o loop,ro -t erofs "$1/root.erofs" "$tmp/root-mnt"
  bad=$(awk -F: -v day=$((epoch / 86400)) '$3 != "" && $3 != day { print $1 ": day " $3 }' "$tmp/root-mnt/etc/shadow")
  umount "$tmp/root-mnt"
  if [ -n "$bad" ]; then
    log "BUILD DATE IN THE IMAGE: /etc/shadow has a last-change day other than SourceDateEpoch's ($((epoch / 86400))): $bad"
    return 1
  fi
}

repro_stamp="$MKOSI_CACHE/reproducible-bundle-$sums.ok"
if [ -f "$repro_stamp" ]; then
  log "reproducibility of this image already shown: $(cat "$repro_stamp")"
else
  no_build_date "$first"
  link=$(mktemp -u "$MKOSI_CACHE/repro-link.XXXXXX")
  start=$(date +%s)
  second=$("$here/mkosi/build.sh" "${tools[@]}" "$@" --no-cache --out "$link")
  rm -f "$link"
  log "second build from a clean state: $(($(date +%s) - start)) s"
  [ "$second" != "$first" ] || { log "the second build replaced the first instead of building beside it"; exit 1; }
  # Compare the files themselves, not only the recorded sums.
  if ! same_files "$second"; then
    log "NOT REPRODUCIBLE: the two builds differ (diff above); $first and $second are kept for comparison"
    exit 1
  fi
  rm -rf "$second"
  log "reproducible: both builds have identical UKI, root, verity and disk"

  # The bundle is a directory of hard links into the first image's record: no copy of 180 MB.
  "$here/mkosi/build.sh" "${tools[@]}" "$@" --save-bundle "$tmp/bundle" >/dev/null
  start=$(date +%s)
  third=$("$here/mkosi/build.sh" "${tools[@]}" --bundle "$tmp/bundle" --out '')
  log "third build, from the package bundle only: $(($(date +%s) - start)) s"
  if ! same_files "$third"; then
    log "NOT REPRODUCIBLE FROM THE BUNDLE: the bundle build differs from the archive build (diff above); $first and $third are kept"
    exit 1
  fi
  log "reproducible from the bundle: identical UKI, root, verity and disk without the archive"

  # The reproduce command: the first image's measurements match the bundle rebuild, a changed file does not.
  "$tmp/constellation" image measure "$first/constellation.efi" --out "$tmp/measurements.json" >/dev/null
  if ! "$here/reproduce.sh" --cli "$tmp/constellation" "${tools[@]}" --bundle "$tmp/bundle" \
    --measurements "$tmp/measurements.json" >"$tmp/reproduce.out"; then
    cat "$tmp/reproduce.out" >&2
    log "image/reproduce.sh did not reproduce the image's own measurements"
    exit 1
  fi
  grep -q "All 6 PCRs match" "$tmp/reproduce.out" || { cat "$tmp/reproduce.out" >&2; log "unexpected reproduce output"; exit 1; }
  sed 's/"9": {"expected": "[0-9a-f]*"/"9": {"expected": "'"$(printf '%064d' 0)"'"/' "$tmp/measurements.json" >"$tmp/changed.json"
  rc=0
  "$here/reproduce.sh" --cli "$tmp/constellation" "${tools[@]}" --bundle "$tmp/bundle" \
    --measurements "$tmp/changed.json" >"$tmp/reproduce.out" || rc=$?
  if [ "$rc" != 1 ] || ! grep -q "1 of 6 PCRs differ (PCR 9)" "$tmp/reproduce.out"; then
    cat "$tmp/reproduce.out" >&2
    log "image/reproduce.sh should have exited 1 naming PCR 9 (exit code $rc)"
    exit 1
  fi
  log "reproduce: match accepted, a changed PCR 9 named"
  echo "$(date -u +%FT%TZ) two builds and a bundle-only build, identical: $(tr '\n' ' ' <"$first/SHA256SUMS")" >"$repro_stamp"
fi

gt_key=$( (cat "$first/SHA256SUMS"; cd "$repo" && cat image/groundtruth/*.go internal/measurements/precompute/*.go localprovider/launcher/*.go) |
  sha256sum | cut -c1-32)
gt_stamp="$MKOSI_CACHE/groundtruth-$gt_key.ok"
if [ -f "$gt_stamp" ]; then
  log "ground truth for this image and precomputation already passed: $(cat "$gt_stamp")"
else
  start=$(date +%s)
  (cd "$repo" && CONSTELLATION_IMAGE_DIR="$first" \
    go test -count=1 -timeout 60m -v -run 'TestQEMUBoot|TestRealImage' ./image/groundtruth/ ./localprovider/launcher/ >&2)
  echo "$(date -u +%FT%TZ) QEMU boot and launcher matched the prediction in $(($(date +%s) - start)) s" >"$gt_stamp"
fi
