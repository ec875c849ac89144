#!/usr/bin/env bash
# Runs `make test-stages` (what `make test` does) and says how long each stage took: a line when a stage
# ends and a table at the end. The table is also printed when the run is stopped (CI's time limit sends
# SIGTERM), because CI keeps only the tail of the output and without it a timeout names no culprit.
#
# One make invocation runs every stage, so shared prerequisites (setup, build) run once; the Makefile puts a
# `stage-done-NAME` mark after each stage, which calls this script with --done.
#
# Usage: bazel/stages.sh STAGE...        run the stages (the Makefile's TEST_STAGES, in that order)
#        bazel/stages.sh --done STAGE    record that STAGE ended (from the Makefile)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[stages] %s\n' "$*" >&2; }

if [ "${1:-}" = --done ]; then
  [ -n "${CONSTELLATION_STAGES_FILE:-}" ] || exit 0 # a stage target run by hand
  now=$(date +%s)
  last=$(tail -n 1 "$CONSTELLATION_STAGES_FILE" | cut -d' ' -f2)
  echo "$2 $now" >>"$CONSTELLATION_STAGES_FILE"
  log "$2 took $((now - last))s"
  exit 0
fi

stages=("$@")
CONSTELLATION_STAGES_FILE=$(mktemp)
export CONSTELLATION_STAGES_FILE
echo "start $(date +%s)" >"$CONSTELLATION_STAGES_FILE"
child=""

disk_free() {
  local dir=${CONSTELLATION_CACHE:-/var/cache/constellation}
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  df -Pk "$dir" | awk 'NR == 2 { printf "%.1f GiB free on %s", $4 / 1048576, $6 }'
}

# summary prints one row per stage: the seconds of the stages that ended, and for the first one that did
# not, how long it ran and why it ended ($1).
summary() {
  local why=$1 now start prev row_end name t
  now=$(date +%s)
  start=$(head -n 1 "$CONSTELLATION_STAGES_FILE" | cut -d' ' -f2)
  prev=$start
  {
    echo "[stages] ---------------------------------------------"
    printf '[stages] %-18s %8s  %s\n' stage seconds result
    for name in "${stages[@]}"; do
      row_end=$(awk -v n="$name" '$1 == n { print $2 }' "$CONSTELLATION_STAGES_FILE")
      if [ -n "$row_end" ]; then
        printf '[stages] %-18s %8d  ok\n' "$name" $((row_end - prev))
        prev=$row_end
      else
        printf '[stages] %-18s %8d  %s\n' "$name" $((now - prev)) "$why"
        break
      fi
    done
    t=$((now - start))
    printf '[stages] %-18s %8d  %s\n' total "$t" "$(disk_free)"
  } >&2
  rm -f "$CONSTELLATION_STAGES_FILE"
}

stopped() {
  [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || true
  summary "stopped by a signal"
  exit 143
}
trap stopped TERM INT HUP

log "$(disk_free) at the start"
# In the background and waited for, so that a signal runs the trap at once rather than after make.
"${MAKE:-make}" --no-print-directory test-stages &
child=$!
wait "$child"
rc=$?
child=""
if [ "$rc" -ne 0 ]; then
  summary "FAILED (make exited $rc)"
  exit "$rc"
fi
summary ok
