package clusterclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// Target is a node to verify. With AnyNode, whichever node answers at IP is accepted (a cluster endpoint
// without a node list) and the result carries the name it gives, which the answer's binding proves.
type Target struct {
	Name, IP, Role string
	AnyNode        bool
}

// NodeResult is one node's verification, in the form `constellation verify -o json` prints.
type NodeResult struct {
	Name       string                    `json:"name"`
	IP         string                    `json:"ip"`
	Role       string                    `json:"role"`
	Verified   bool                      `json:"verified"`
	Error      string                    `json:"error,omitempty"`
	Mismatches []attestation.PCRMismatch `json:"mismatches,omitempty"`
	Failures   []string                  `json:"failures,omitempty"`
	Took       string                    `json:"took"`
	// Unreachable is set when the node's VerificationService gave no answer at all.
	Unreachable bool `json:"-"`
}

// nodeTimeout bounds one node's answer.
const nodeTimeout = 30 * time.Second

// VerifyNode asks the target's VerificationService for an attestation bound to a fresh nonce and to the
// node, and validates it. A failure says why: no answer, another node's answer, differing PCRs (Mismatches)
// or failed checks (Failures).
func VerifyNode(ctx context.Context, api Attester, t Target, validator attestation.Validator) (r NodeResult) {
	start := time.Now()
	r = NodeResult{Name: t.Name, IP: t.IP, Role: t.Role}
	// On the named result: a deferred change to a local variable would come after the return copied it.
	defer func() { r.Took = time.Since(start).Round(time.Millisecond).String() }()
	ctx, cancel := context.WithTimeout(ctx, nodeTimeout)
	defer cancel()
	node := t.Name
	if t.AnyNode {
		node = ""
	}
	answered, err := Attest(ctx, api, net.JoinHostPort(t.IP, strconv.Itoa(verifyproto.Port)), node, validator)
	if t.AnyNode && answered != "" {
		r.Name = answered
	}
	var verr *attestation.ValidationError
	switch {
	case errors.Is(err, ErrUnreachable):
		r.Error, r.Unreachable = err.Error(), true
	case errors.Is(err, ErrNotBound):
		r.Error = fmt.Sprintf("the answer is not %s's own: its attestation is bound to another node (it says %q); "+
			"the address answered with another node's attestation, so this node is not verified", t.Name, answered)
	case errors.As(err, &verr):
		r.Mismatches, r.Failures, r.Error = verr.Mismatches, verr.Failures, err.Error()
	case err != nil:
		r.Error = err.Error()
	default:
		r.Verified = true
	}
	return r
}

// Verifier verifies one node at a time with Validator (for an image roll-out's moved nodes).
type Verifier struct {
	API       Attester
	Validator attestation.Validator
}

// Verify is VerifyNode.
func (v Verifier) Verify(ctx context.Context, t Target) NodeResult {
	return VerifyNode(ctx, v.API, t, v.Validator)
}

// VerifyNodes verifies the targets at once; the results are in the targets' order.
func VerifyNodes(ctx context.Context, api Attester, targets []Target, validator attestation.Validator) []NodeResult {
	results := make([]NodeResult, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { results[i] = VerifyNode(ctx, api, t, validator) })
	}
	wg.Wait()
	return results
}
