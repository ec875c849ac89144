// Package atls is attested TLS: a peer proves what it booted inside the TLS handshake. Its self-signed
// certificate carries an attestation document in an extension whose OID names the attestation variant; the
// document's user data is the SHA-256 of the certificate's public key, so the attested party is the one that
// holds the TLS key. Nonces make every document fresh: the client sends its nonce in the SNI, the server
// sends its nonce as the only entry of the acceptable-CA list of its certificate request.
package atls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/constellation-go/constellation/internal/attestation"
)

// NonceSize is the size of both nonces.
const NonceSize = 32

// certLifetime keeps certificates short-lived; they are made for one handshake.
const certLifetime = 5 * time.Minute

// clockSkew tolerates peers whose clocks differ a little.
const clockSkew = 2 * time.Minute

// Errors a handshake fails with; check them with errors.Is.
var (
	ErrNoAttestation       = errors.New("peer certificate carries no attestation document")
	ErrSeveralAttestations = errors.New("peer certificate carries more than one attestation document")
	ErrUnknownVariant      = errors.New("peer certificate carries an attestation of a variant this side does not accept")
	ErrEmptyDocument       = errors.New("peer certificate's attestation document is empty")
	ErrKeyMismatch         = errors.New("attestation does not belong to the certificate's key")
	ErrCertificateValidity = errors.New("peer certificate is expired or not yet valid")
	ErrNoNonce             = errors.New("no nonce in the handshake")
	ErrNoCertificate       = errors.New("peer sent no certificate")
)

// newNonce returns a fresh random nonce.
func newNonce() ([]byte, error) {
	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("generating nonce: %w", err)
	}
	return nonce, nil
}

// keyDomain separates aTLS's user data from every other use of a node's attestation key (the
// VerificationService binds its answers to another domain, verify/verifyproto.Binding): no document issued
// for something else can pass as the attestation of a TLS key.
const keyDomain = "constellation-atls-v1\x00"

// keyDigest is the user data an attestation must carry: SHA-256 of the domain and the key's DER
// SubjectPublicKeyInfo.
func keyDigest(pub any) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(keyDomain))
	h.Write(der)
	return h.Sum(nil), nil
}

// attestedCertificate creates a fresh key and a self-signed certificate whose extension holds issuer's
// document for nonce. With a nil issuer the certificate carries no attestation (a server that does not
// attest still needs a certificate for TLS).
func attestedCertificate(ctx context.Context, issuer attestation.Issuer, nonce []byte, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating TLS key: %w", err)
	}
	var extensions []pkix.Extension
	if issuer != nil {
		userData, err := keyDigest(&key.PublicKey)
		if err != nil {
			return nil, err
		}
		doc, err := issuer.Issue(ctx, userData, nonce)
		if err != nil {
			return nil, fmt.Errorf("issuing attestation: %w", err)
		}
		extensions = []pkix.Extension{{Id: issuer.Variant().OID(), Value: doc}}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	template := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: "constellation aTLS"},
		NotBefore:       now.Add(-clockSkew),
		NotAfter:        now.Add(certLifetime),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		ExtraExtensions: extensions,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// verifyAttestedCertificate checks the peer's certificate: validity, an attestation of an accepted variant,
// and that the attestation's user data is the certificate's key.
func verifyAttestedCertificate(ctx context.Context, rawCerts [][]byte, validators []attestation.Validator, nonce []byte, now time.Time) error {
	if len(rawCerts) == 0 {
		return ErrNoCertificate
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("parsing peer certificate: %w", err)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Errorf("%w: valid from %s to %s, now is %s", ErrCertificateValidity,
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	// TLS proves the peer holds the certificate's key; a self-signature that does not verify means a
	// malformed or altered certificate, refused before its extension is parsed.
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		return fmt.Errorf("peer certificate is not self-signed: %w", err)
	}
	// One document per certificate: a handler that reads the peer's document (PeerDocument) then reads the
	// one validated here, never a second one placed beside it.
	var documents int
	for _, ext := range cert.Extensions {
		if isAttestationOID(ext.Id) {
			documents++
		}
	}
	if documents > 1 {
		return fmt.Errorf("%w: %d", ErrSeveralAttestations, documents)
	}
	var offered []string
	for _, ext := range cert.Extensions {
		for _, v := range validators {
			if !ext.Id.Equal(v.Variant().OID()) {
				continue
			}
			if len(ext.Value) == 0 {
				return fmt.Errorf("%w (variant %s)", ErrEmptyDocument, v.Variant())
			}
			if len(ext.Value) > attestation.MaxDocumentSize {
				return fmt.Errorf("%w: %d bytes, at most %d", attestation.ErrDocumentTooLarge, len(ext.Value), attestation.MaxDocumentSize)
			}
			userData, err := v.Validate(ctx, ext.Value, nonce)
			if err != nil {
				return fmt.Errorf("validating %s attestation: %w", v.Variant(), err)
			}
			want, err := keyDigest(cert.PublicKey)
			if err != nil {
				return err
			}
			if !bytes.Equal(userData, want) {
				return ErrKeyMismatch
			}
			return nil
		}
		if isAttestationOID(ext.Id) {
			offered = append(offered, ext.Id.String())
		}
	}
	if len(offered) > 0 {
		return fmt.Errorf("%w: offered %v", ErrUnknownVariant, offered)
	}
	return ErrNoAttestation
}

// attestationArc is the OID arc of attestation variants (internal/attestation/variant).
var attestationArc = asn1.ObjectIdentifier{1, 3, 9901, 1}

func isAttestationOID(oid asn1.ObjectIdentifier) bool {
	return len(oid) > len(attestationArc) && oid[:len(attestationArc)].Equal(attestationArc)
}

// encodeClientNonce puts the nonce into the SNI: hex in two DNS labels, each within the 63-byte limit.
func encodeClientNonce(nonce []byte) string {
	h := hex.EncodeToString(nonce)
	return h[:len(h)/2] + "." + h[len(h)/2:]
}

func decodeClientNonce(serverName string) ([]byte, error) {
	if len(serverName) != 2*NonceSize+1 || serverName[NonceSize] != '.' {
		return nil, fmt.Errorf("%w: the client's server name %q is not an aTLS nonce", ErrNoNonce, serverName)
	}
	nonce, err := hex.DecodeString(serverName[:NonceSize] + serverName[NonceSize+1:])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoNonce, err)
	}
	return nonce, nil
}

// serverNonceName is the acceptable-CA entry that carries the server's nonce.
func serverNonceName(nonce []byte) []byte {
	name := pkix.Name{CommonName: hex.EncodeToString(nonce)}
	der, _ := asn1.Marshal(name.ToRDNSequence())
	return der
}

func decodeServerNonce(acceptableCAs [][]byte) ([]byte, error) {
	if len(acceptableCAs) != 1 {
		return nil, fmt.Errorf("%w: the server sent %d acceptable CAs, expected its nonce alone", ErrNoNonce, len(acceptableCAs))
	}
	var rdn pkix.RDNSequence
	if rest, err := asn1.Unmarshal(acceptableCAs[0], &rdn); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: acceptable CA is not a name", ErrNoNonce)
	}
	var name pkix.Name
	name.FillFromRDNSequence(&rdn)
	nonce, err := hex.DecodeString(name.CommonName)
	if err != nil || len(nonce) != NonceSize {
		return nil, fmt.Errorf("%w: acceptable CA does not hold a nonce", ErrNoNonce)
	}
	return nonce, nil
}
