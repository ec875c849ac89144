#!/usr/bin/env bash
# Regenerates the signed test vector with OpenSSL, independently of this package and of the Go libraries
# it uses: measurements.json.sig is what `cosign sign-blob --key` writes for measurements.json (base64 of
# the DER ECDSA P-256 signature over SHA-256 of the file). Run from this directory; the outputs are
# checked in, the private key is not.
set -euo pipefail

cat > measurements.json <<'JSON'
{
  "version": "v1",
  "image": "constellation-node-v0.0.0-test",
  "variant": "qemu-vtpm",
  "measurements": {
    "4": {"expected": "1111111111111111111111111111111111111111111111111111111111111111", "warnOnly": false},
    "9": {"expected": "9999999999999999999999999999999999999999999999999999999999999999", "warnOnly": false},
    "11": {"expected": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "warnOnly": false},
    "12": {"expected": "0000000000000000000000000000000000000000000000000000000000000000", "warnOnly": true}
  }
}
JSON
key=$(mktemp)
trap 'rm -f "$key"' EXIT
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key"
openssl pkey -in "$key" -pubout -out cosign.pub
openssl dgst -sha256 -sign "$key" measurements.json | base64 -w0 > measurements.json.sig
openssl dgst -sha256 -verify cosign.pub -signature <(base64 -d measurements.json.sig) measurements.json
