// Package attestation defines how a node proves what it booted. An Issuer, running on the node, produces
// an attestation document bound to a caller's nonce and to user data (in aTLS: the hash of the TLS key).
// A Validator, running wherever trust is decided, checks a document and only then returns the user data.
// Each attestation variant (internal/attestation/variant) has one Issuer/Validator pair.
package attestation

import (
	"context"
	"errors"

	"github.com/constellation-go/constellation/internal/attestation/variant"
)

// Issuer produces attestation documents.
type Issuer interface {
	Variant() variant.Variant
	// Issue returns a document that binds userData and nonce to the node's current measurements.
	Issue(ctx context.Context, userData, nonce []byte) ([]byte, error)
}

// Validator checks attestation documents.
type Validator interface {
	Variant() variant.Variant
	// Validate checks doc against nonce and the validator's reference values and returns the document's
	// user data. It returns user data only if every check passed.
	Validate(ctx context.Context, doc, nonce []byte) ([]byte, error)
}

// MinNonceSize is the shortest nonce a validator accepts: shorter ones make replays guessable.
const MinNonceSize = 32

// MaxDocumentSize bounds an attestation document. It travels in a TLS certificate; Go accepts certificate
// messages up to 256 KiB (other handshake messages up to 64 KiB). Event logs travel compressed, which keeps
// the largest real-world documents (a 50 KB log plus an SEV-SNP report) near 50 KiB.
const MaxDocumentSize = 64 << 10

// Sentinel errors shared by all variants; check them with errors.Is.
var (
	ErrDocumentTooLarge  = errors.New("attestation document too large")
	ErrMalformedDocument = errors.New("malformed attestation document")
	ErrNonceTooShort     = errors.New("nonce too short")
)
