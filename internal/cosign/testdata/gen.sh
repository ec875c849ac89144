#!/usr/bin/env bash
# Regenerates the test vectors with tools independent of this package and of the Go libraries it uses:
# OpenSSL for the keys and signatures, Python's hashlib.scrypt and libsodium (PyNaCl, Debian's
# python3-nacl) for the cosign.key encryption. Run from this directory; the outputs are checked in.
set -euo pipefail

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out openssl-p256.key
openssl pkey -in openssl-p256.key -pubout -out openssl-p256.pub
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384.key
openssl pkey -in p384.key -pubout -out p384.pub
openssl genpkey -algorithm ED25519 | openssl pkey -pubout -out ed25519.pub
rm p384.key

printf '{"version":"v1","note":"signed by openssl dgst -sha256 -sign"}\n' > blob.json
openssl dgst -sha256 -sign openssl-p256.key blob.json | base64 -w0 > blob.json.sig
openssl dgst -sha256 -verify openssl-p256.pub -signature <(base64 -d blob.json.sig) blob.json

# cosign.key of the same key with password "correct horse", in go-securesystemslib's format with
# cosign's scrypt cost (N=2^16, r=8, p=1).
openssl pkcs8 -topk8 -nocrypt -in openssl-p256.key -outform DER -out key.der
/usr/bin/python3 - <<'PY'
import base64, hashlib, json, os, textwrap
import nacl.secret

der = open("key.der", "rb").read()
salt, nonce = os.urandom(32), os.urandom(24)
key = hashlib.scrypt(b"correct horse", salt=salt, n=65536, r=8, p=1, maxmem=128 << 20, dklen=32)
ct = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext  # MAC || ciphertext, like NaCl's secretbox
b64 = lambda b: base64.b64encode(b).decode()
doc = {"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1}, "salt": b64(salt)},
       "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)}, "ciphertext": b64(ct)}
body = "\n".join(textwrap.wrap(b64(json.dumps(doc, separators=(",", ":")).encode()), 64))
with open("python-encrypted.key", "w") as f:
    f.write("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + body + "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
PY
rm key.der
