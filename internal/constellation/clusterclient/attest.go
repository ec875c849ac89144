package clusterclient

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// Attester asks a VerificationService for an attestation (GRPC does; tests fake it).
type Attester interface {
	GetAttestation(ctx context.Context, endpoint string, nonce []byte) (doc []byte, node string, err error)
}

var (
	// ErrUnreachable marks a node whose VerificationService gave no answer at all.
	ErrUnreachable = errors.New("getting an attestation from the VerificationService")
	// ErrNotBound marks an answer bound to another node than the one asked (verifyproto.CheckAnswer).
	ErrNotBound = verifyproto.ErrNotBound
)

// Attest asks the VerificationService at endpoint for an attestation bound to a fresh nonce, validates it
// and checks that it is node's own. With node "" any node may answer (an endpoint without a node list);
// the answering node's name is returned either way. A document that fails validation returns the
// validator's error (an *attestation.ValidationError lists the differences).
func Attest(ctx context.Context, api Attester, endpoint, node string, validator attestation.Validator) (answered string, err error) {
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	doc, answered, err := api.GetAttestation(ctx, endpoint, nonce)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return answered, verifyproto.CheckAnswer(ctx, validator, doc, nonce, node, answered)
}
