package verifyproto

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/constellation-go/constellation/internal/attestation"
)

// ErrNotBound marks an answer that validated but is bound to another node than the one asked: the address
// answered with another node's attestation.
var ErrNotBound = errors.New("the answer is bound to another node")

// CheckAnswer validates a VerificationService answer to nonce and checks that it is node's own (Binding).
// answered is the name the answering node gave; with node "" any node may answer (an address without a node
// list) and its own name is checked. A document that fails validation returns the validator's error (an
// *attestation.ValidationError lists the differences).
func CheckAnswer(ctx context.Context, validator attestation.Validator, doc, nonce []byte, node, answered string) error {
	userData, err := validator.Validate(ctx, doc, nonce)
	if err != nil {
		return err
	}
	if node == "" {
		node = answered
	}
	if !bytes.Equal(userData, Binding(node, nil)) {
		return fmt.Errorf("%w (it says it is %q)", ErrNotBound, answered)
	}
	return nil
}
