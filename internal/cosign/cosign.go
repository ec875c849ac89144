// Package cosign reads and writes the key and signature files of cosign's key-based blob signing, so that
// a file signed here verifies with `cosign verify-blob --key cosign.pub --signature f.sig f` and a file
// signed with `cosign sign-blob --key cosign.key` verifies here:
//
//   - cosign.key: a PEM block "ENCRYPTED SIGSTORE PRIVATE KEY" holding go-securesystemslib's encrypted
//     JSON (scrypt key derivation, NaCl secretbox) of the PKCS #8 DER private key. Older cosign versions
//     wrote "ENCRYPTED COSIGN PRIVATE KEY" around the same content; both are read.
//   - cosign.pub: a PEM block "PUBLIC KEY" (PKIX).
//   - a signature file: base64 of the ASN.1 DER ECDSA signature over SHA-256 of the exact file bytes.
//
// Only ECDSA P-256 keys, cosign's default, are accepted, so that a verifier never has to decide which
// algorithm a key file implies.
package cosign

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// PasswordEnv is the environment variable cosign reads the private key's password from. It may be set to
// the empty string for a key without a password.
const PasswordEnv = "COSIGN_PASSWORD"

// PEM block types.
const (
	PrivateKeyPEMType       = "ENCRYPTED SIGSTORE PRIVATE KEY"
	legacyPrivateKeyPEMType = "ENCRYPTED COSIGN PRIVATE KEY"
	PublicKeyPEMType        = "PUBLIC KEY"
)

var (
	// ErrInvalidSignature is returned when a signature does not match the data and key.
	ErrInvalidSignature = errors.New("signature does not match")
	// ErrWrongPassword is returned when the private key cannot be decrypted with the password.
	ErrWrongPassword = errors.New("cannot decrypt the private key: wrong password, or the key file is damaged")
	// ErrUnsupportedKey is returned for a key that is not ECDSA P-256.
	ErrUnsupportedKey = errors.New("unsupported key: only ECDSA P-256 keys (cosign's default) are accepted")
	// ErrMalformed is returned for key or signature files that cannot be decoded.
	ErrMalformed = errors.New("malformed")
)

// GenerateKeyPair returns a new ECDSA P-256 key pair as cosign.key and cosign.pub contents, the private key
// encrypted with password.
func GenerateKeyPair(password []byte) (privPEM, pubPEM []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the key: %w", err)
	}
	return encodeKeyPair(priv, password)
}

// encodePrivateKey returns the cosign.key content of priv encrypted with password, with the scrypt cost
// cosign uses.
func encodePrivateKey(priv *ecdsa.PrivateKey, password []byte) ([]byte, error) {
	if err := checkPublicKey(&priv.PublicKey); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	enc, err := encrypted.Encrypt(der, password)
	if err != nil {
		return nil, fmt.Errorf("encrypting the private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: PrivateKeyPEMType, Bytes: enc}), nil
}

func encodeKeyPair(priv *ecdsa.PrivateKey, password []byte) (privPEM, pubPEM []byte, err error) {
	privPEM, err = encodePrivateKey(priv, password)
	if err != nil {
		return nil, nil, err
	}
	pubPEM, err = cryptoutils.MarshalPublicKeyToPEM(&priv.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the public key: %w", err)
	}
	return privPEM, pubPEM, nil
}

// Signer signs blobs like `cosign sign-blob --key`.
type Signer struct {
	sv  signature.SignerVerifier
	pub *ecdsa.PublicKey
}

// LoadPrivateKey decrypts a cosign.key with password.
func LoadPrivateKey(pemData, password []byte) (*Signer, error) {
	block, err := singlePEM(pemData, PrivateKeyPEMType, legacyPrivateKeyPEMType)
	if err != nil {
		return nil, fmt.Errorf("reading the private key: %w", err)
	}
	der, err := encrypted.Decrypt(block.Bytes, password)
	if err != nil {
		// Decrypt reports a failed authentication, the wrong-password case, without a sentinel; anything
		// that fails before it (JSON, KDF parameters) is a damaged file.
		if err.Error() == "encrypted: decryption failed" {
			return nil, ErrWrongPassword
		}
		return nil, fmt.Errorf("reading the private key: %w: %w", ErrMalformed, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("reading the private key: %w: %w", ErrMalformed, err)
	}
	priv, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("reading the private key: %w (got %T)", ErrUnsupportedKey, key)
	}
	if err := checkPublicKey(&priv.PublicKey); err != nil {
		return nil, fmt.Errorf("reading the private key: %w", err)
	}
	sv, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("loading the private key: %w", err)
	}
	return &Signer{sv: sv, pub: &priv.PublicKey}, nil
}

// SignBlob returns the content of the signature file for data: base64 of the ASN.1 DER ECDSA signature
// over SHA-256 of data, without a trailing newline, as `cosign sign-blob --output-signature` writes it.
func (s *Signer) SignBlob(data []byte) ([]byte, error) {
	sig, err := s.sv.SignMessage(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return []byte(base64.StdEncoding.EncodeToString(sig)), nil
}

// PublicKeyPEM returns the cosign.pub content that verifies the signer's signatures.
func (s *Signer) PublicKeyPEM() ([]byte, error) {
	return cryptoutils.MarshalPublicKeyToPEM(s.pub)
}

// Verifier verifies blob signatures like `cosign verify-blob --key`.
type Verifier struct {
	v signature.Verifier
}

// ParsePublicKey reads a cosign.pub.
func ParsePublicKey(pemData []byte) (*Verifier, error) {
	block, err := singlePEM(pemData, PublicKeyPEMType)
	if err != nil {
		return nil, fmt.Errorf("reading the public key: %w", err)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("reading the public key: %w: %w", ErrMalformed, err)
	}
	pub, ok := key.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("reading the public key: %w (got %T)", ErrUnsupportedKey, key)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("reading the public key: %w", err)
	}
	v, err := signature.LoadECDSAVerifier(pub, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("loading the public key: %w", err)
	}
	return &Verifier{v: v}, nil
}

// VerifyBlob checks that sigFile, a signature file as SignBlob and cosign write it (surrounding whitespace
// is ignored), is a signature of data.
func (v *Verifier) VerifyBlob(data, sigFile []byte) error {
	sig, err := base64.StdEncoding.Strict().DecodeString(string(bytes.TrimSpace(sigFile)))
	if err != nil {
		return fmt.Errorf("%w signature: not base64: %w", ErrMalformed, err)
	}
	if len(sig) == 0 {
		return fmt.Errorf("%w signature: empty", ErrMalformed)
	}
	if err := v.v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(data)); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSignature, err)
	}
	return nil
}

// checkPublicKey accepts P-256 keys only: sigstore's ECDSA verifier would take any curve with SHA-256,
// and accepting more than cosign's default buys nothing but choices an attacker could exploit.
func checkPublicKey(pub *ecdsa.PublicKey) error {
	if pub.Curve != elliptic.P256() {
		return fmt.Errorf("%w (got curve %s)", ErrUnsupportedKey, pub.Params().Name)
	}
	return nil
}

// singlePEM decodes data as exactly one PEM block of one of types. Extra blocks or text are rejected, so
// that a file cannot carry a second key that another tool would pick instead.
func singlePEM(data []byte, types ...string) (*pem.Block, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrMalformed)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: unexpected data after the %q PEM block", ErrMalformed, block.Type)
	}
	for _, t := range types {
		if block.Type == t {
			return block, nil
		}
	}
	return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrMalformed, block.Type, types[0])
}
