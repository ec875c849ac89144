package cosign

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The files in testdata were made by testdata/gen.sh with OpenSSL and Python (hashlib.scrypt, libsodium),
// not with this package or the Go libraries it uses, so the tests below check interoperability rather
// than self-consistency.

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

func TestVerifyOpenSSLSignature(t *testing.T) {
	v, err := ParsePublicKey(readTestdata(t, "openssl-p256.pub"))
	require.NoError(t, err)
	blob, sig := readTestdata(t, "blob.json"), readTestdata(t, "blob.json.sig")
	require.NoError(t, v.VerifyBlob(blob, sig))
	// cosign prints the signature with a newline when it writes to stdout.
	require.NoError(t, v.VerifyBlob(blob, append(sig, '\n')))
}

func TestLoadIndependentlyEncryptedKey(t *testing.T) {
	s, err := LoadPrivateKey(readTestdata(t, "python-encrypted.key"), []byte("correct horse"))
	require.NoError(t, err)

	// It is the key OpenSSL generated.
	pubPEM, err := s.PublicKeyPEM()
	require.NoError(t, err)
	assert.Equal(t, parsePub(t, readTestdata(t, "openssl-p256.pub")), parsePub(t, pubPEM))

	blob := []byte("measurements\n")
	sig, err := s.SignBlob(blob)
	require.NoError(t, err)
	assert.NotContains(t, string(sig), "\n", "cosign writes the signature file without a newline")

	v, err := ParsePublicKey(readTestdata(t, "openssl-p256.pub"))
	require.NoError(t, err)
	require.NoError(t, v.VerifyBlob(blob, sig))

	// OpenSSL verifies it too, which is what cosign's verifier (Go's ecdsa.VerifyASN1) amounts to.
	opensslVerify(t, filepath.Join("testdata", "openssl-p256.pub"), blob, sig)

	_, err = LoadPrivateKey(readTestdata(t, "python-encrypted.key"), []byte("wrong horse"))
	assert.ErrorIs(t, err, ErrWrongPassword)
}

// opensslVerify checks sig with `openssl dgst -verify`, or skips that part when openssl is missing (as in
// Bazel's sandbox).
func opensslVerify(t *testing.T, pubPath string, blob, b64sig []byte) {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Log("openssl not found; skipping the OpenSSL check of a signature made here")
		return
	}
	pubPath, err = filepath.Abs(pubPath)
	require.NoError(t, err)
	dir := t.TempDir()
	der, err := base64.StdEncoding.DecodeString(string(b64sig))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sig"), der, 0o644))
	out, err := exec.Command(openssl, "dgst", "-sha256", "-verify", pubPath,
		"-signature", filepath.Join(dir, "sig"), filepath.Join(dir, "blob")).CombinedOutput()
	require.NoError(t, err, "openssl: %s", out)
	assert.Contains(t, string(out), "Verified OK")
}

func parsePub(t *testing.T, pemData []byte) *ecdsa.PublicKey {
	t.Helper()
	block, _ := pem.Decode(pemData)
	require.NotNil(t, block)
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	return key.(*ecdsa.PublicKey)
}

func TestGenerateKeyPair(t *testing.T) {
	for name, password := range map[string][]byte{"with password": []byte("s3cret"), "empty password": {}} {
		t.Run(name, func(t *testing.T) {
			privPEM, pubPEM, err := GenerateKeyPair(password)
			require.NoError(t, err)
			block, _ := pem.Decode(privPEM)
			require.NotNil(t, block)
			assert.Equal(t, "ENCRYPTED SIGSTORE PRIVATE KEY", block.Type)
			assert.Contains(t, string(block.Bytes), `"N":65536`, "cosign's scrypt cost")
			block, _ = pem.Decode(pubPEM)
			require.NotNil(t, block)
			assert.Equal(t, "PUBLIC KEY", block.Type)

			s, err := LoadPrivateKey(privPEM, password)
			require.NoError(t, err)
			v, err := ParsePublicKey(pubPEM)
			require.NoError(t, err)
			blob := []byte(`{"version":"v1"}`)
			sig, err := s.SignBlob(blob)
			require.NoError(t, err)
			require.NoError(t, v.VerifyBlob(blob, sig))

			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "cosign.pub"), pubPEM, 0o644))
			opensslVerify(t, filepath.Join(dir, "cosign.pub"), blob, sig)
		})
	}
}

func TestLegacyPEMType(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	require.NoError(t, err)
	enc, err := encrypted.EncryptWithCustomKDFParameters(der, nil, encrypted.Legacy)
	require.NoError(t, err)
	_, err = LoadPrivateKey(pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED COSIGN PRIVATE KEY", Bytes: enc}), nil)
	require.NoError(t, err)
}

func TestVerifyBlobRejects(t *testing.T) {
	v, err := ParsePublicKey(readTestdata(t, "openssl-p256.pub"))
	require.NoError(t, err)
	blob, sig := readTestdata(t, "blob.json"), readTestdata(t, "blob.json.sig")
	der, err := base64.StdEncoding.DecodeString(string(sig))
	require.NoError(t, err)

	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x01
		return c
	}
	_, otherPub, err := GenerateKeyPair(nil)
	require.NoError(t, err)
	other, err := ParsePublicKey(otherPub)
	require.NoError(t, err)

	testCases := map[string]struct {
		v       *Verifier
		blob    []byte
		sig     []byte
		wantErr error
	}{
		"flipped byte in the file":              {v: v, blob: flip(blob, 10), sig: sig, wantErr: ErrInvalidSignature},
		"appended newline":                      {v: v, blob: append(bytes.Clone(blob), '\n'), sig: sig, wantErr: ErrInvalidSignature},
		"flipped byte in the signature's r":     {v: v, blob: blob, sig: b64(flip(der, 10)), wantErr: ErrInvalidSignature},
		"flipped last byte of the signature":    {v: v, blob: blob, sig: b64(flip(der, len(der)-1)), wantErr: ErrInvalidSignature},
		"flipped byte in the DER header":        {v: v, blob: blob, sig: b64(flip(der, 0)), wantErr: ErrInvalidSignature},
		"truncated signature":                   {v: v, blob: blob, sig: b64(der[:len(der)-4]), wantErr: ErrInvalidSignature},
		"wrong key":                             {v: other, blob: blob, sig: sig, wantErr: ErrInvalidSignature},
		"garbage base64":                        {v: v, blob: blob, sig: []byte("not*base64!"), wantErr: ErrMalformed},
		"base64 without padding":                {v: v, blob: blob, sig: bytes.TrimRight(sig, "="), wantErr: ErrMalformed},
		"empty signature":                       {v: v, blob: blob, sig: []byte("\n"), wantErr: ErrMalformed},
		"raw DER instead of base64":             {v: v, blob: blob, sig: der, wantErr: ErrMalformed},
		"signature of the empty file":           {v: v, blob: nil, sig: sig, wantErr: ErrInvalidSignature},
		"zero bytes as a signature of 64 bytes": {v: v, blob: blob, sig: b64(make([]byte, 64)), wantErr: ErrInvalidSignature},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			err := tc.v.VerifyBlob(tc.blob, tc.sig)
			assert.ErrorIs(t, err, tc.wantErr)
		})
	}
}

func b64(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }

func TestParsePublicKeyRejects(t *testing.T) {
	pub := readTestdata(t, "openssl-p256.pub")
	testCases := map[string]struct {
		pem     []byte
		wantErr error
	}{
		"P-384 key":          {pem: readTestdata(t, "p384.pub"), wantErr: ErrUnsupportedKey},
		"Ed25519 key":        {pem: readTestdata(t, "ed25519.pub"), wantErr: ErrUnsupportedKey},
		"not PEM":            {pem: []byte("hello"), wantErr: ErrMalformed},
		"private key":        {pem: readTestdata(t, "openssl-p256.key"), wantErr: ErrMalformed},
		"two keys":           {pem: append(bytes.Clone(pub), readTestdata(t, "p384.pub")...), wantErr: ErrMalformed},
		"garbage in the PEM": {pem: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}), wantErr: ErrMalformed},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := ParsePublicKey(tc.pem)
			assert.ErrorIs(t, err, tc.wantErr)
		})
	}
}

func TestLoadPrivateKeyRejects(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(p384)
	require.NoError(t, err)
	// The cheapest scrypt cost Decrypt accepts keeps this test fast.
	enc, err := encrypted.EncryptWithCustomKDFParameters(der, nil, encrypted.Legacy)
	require.NoError(t, err)
	p384PEM := pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: enc})

	notKey, err := encrypted.EncryptWithCustomKDFParameters([]byte("not a key"), nil, encrypted.Legacy)
	require.NoError(t, err)

	testCases := map[string]struct {
		pem     []byte
		wantErr error
	}{
		"P-384 key":              {pem: p384PEM, wantErr: ErrUnsupportedKey},
		"unencrypted PEM":        {pem: readTestdata(t, "openssl-p256.key"), wantErr: ErrMalformed},
		"public key":             {pem: readTestdata(t, "openssl-p256.pub"), wantErr: ErrMalformed},
		"not JSON":               {pem: pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: []byte("x")}), wantErr: ErrMalformed},
		"encrypted garbage":      {pem: pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: notKey}), wantErr: ErrMalformed},
		"excessive scrypt cost":  {pem: pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: bytes.Replace(enc, []byte(`"N":32768`), []byte(`"N":1073741824`), 1)}), wantErr: ErrMalformed},
		"tampered ciphertext":    {pem: pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: tamper(t, enc)}), wantErr: ErrWrongPassword},
		"empty input":            {pem: nil, wantErr: ErrMalformed},
		"second block after key": {pem: append(bytes.Clone(p384PEM), p384PEM...), wantErr: ErrMalformed},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := LoadPrivateKey(tc.pem, nil)
			assert.ErrorIs(t, err, tc.wantErr)
		})
	}
}

// tamper flips a bit of the ciphertext inside the encrypted JSON, which the secretbox MAC must catch.
func tamper(t *testing.T, enc []byte) []byte {
	t.Helper()
	i := bytes.Index(enc, []byte(`"ciphertext":"`))
	require.Positive(t, i)
	c := bytes.Clone(enc)
	j := i + len(`"ciphertext":"`) + 4
	if c[j] == 'A' {
		c[j] = 'B'
	} else {
		c[j] = 'A'
	}
	return c
}
