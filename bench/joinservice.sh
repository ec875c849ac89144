#!/usr/bin/env bash
# Prints JoinService tickets/s with 1, 8 and 64 concurrent clients: each ticket is a new aTLS connection with
# a fresh swtpm attestation, full validation, KeyService derivations, CSR signing and a bootstrap token in a
# real kube-apiserver (built by bazel/kubernetes/build.sh).
# Usage: bench/joinservice.sh [benchtime]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
benchtime=${1:-3s}
echo "== JoinService IssueJoinTicket end to end (joinservice/internal/server)"
go test -run '^$' -bench 'IssueJoinTicket' -benchtime "$benchtime" ./joinservice/internal/server/ | per_second
