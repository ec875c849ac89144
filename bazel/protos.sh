#!/usr/bin/env bash
# Generates the Go code of every .proto file with Debian's protoc and the protoc-gen-go/-go-grpc versions
# pinned in go.mod. The code is checked in (Bazel builds it as plain Go); --check fails if it is stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v protoc >/dev/null || {
  echo "protoc is missing: apt-get install protobuf-compiler" >&2
  exit 1
}
mode=${1:-generate}
out=.
if [ "$mode" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mapfile -t protos < <(git ls-files --cached --others --exclude-standard '*.proto')
protoc -I . \
  --plugin=protoc-gen-go="$(go tool -n protoc-gen-go)" \
  --plugin=protoc-gen-go-grpc="$(go tool -n protoc-gen-go-grpc)" \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  "${protos[@]}"
if [ "$mode" = "--check" ]; then
  status=0
  while IFS= read -r f; do
    if ! cmp -s "$out/$f" "$f"; then
      echo "stale generated code: $f (run 'make protos' and commit)" >&2
      status=1
    fi
  done < <(cd "$out" && find . -name '*.pb.go' | sed 's|^\./||')
  exit $status
fi
