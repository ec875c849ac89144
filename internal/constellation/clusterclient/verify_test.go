package clusterclient

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/verify/verifytest"
)

// routedAttester sends each node's request to the VerificationService that plays it (by the IP asked for);
// an IP without one gets the address nothing listens on.
type routedAttester struct {
	byIP   map[string]string
	closed string
}

func (a routedAttester) GetAttestation(ctx context.Context, endpoint string, nonce []byte) ([]byte, string, error) {
	for ip, addr := range a.byIP {
		if endpoint == ip+":30081" {
			return GRPC{}.GetAttestation(ctx, addr, nonce)
		}
	}
	return GRPC{}.GetAttestation(ctx, a.closed, nonce)
}

func TestVerifyNodes(t *testing.T) {
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{
		Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot).WithFreshNode(), AKRoots: vtpmtest.AKRoots(t),
	})
	require.NoError(t, err)
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: eventlog.EvIPL, Data: "console=ttyS0 init=/bin/sh"})
	good, _ := verifytest.ServeNode(t, "cp-0", vtpmtest.Boot)
	bad, _ := verifytest.ServeNode(t, "worker-0", tampered)
	other, _ := verifytest.ServeNode(t, "worker-9", vtpmtest.Boot)
	api := routedAttester{byIP: map[string]string{"10.0.0.1": good, "10.0.0.2": bad, "10.0.0.3": other}, closed: closedAddress(t)}

	results := VerifyNodes(context.Background(), api, []Target{
		{Name: "cp-0", IP: "10.0.0.1", Role: "control-plane"},
		{Name: "worker-0", IP: "10.0.0.2", Role: "worker"},
		{Name: "worker-1", IP: "10.0.0.3", Role: "worker"},
		{Name: "worker-2", IP: "10.0.0.4", Role: "worker"},
		{Name: "endpoint", IP: "10.0.0.1", AnyNode: true},
	}, validator)
	require.Len(t, results, 5)

	assert.True(t, results[0].Verified, results[0].Error)
	assert.Equal(t, "cp-0", results[0].Name)
	assert.NotEmpty(t, results[0].Took)

	assert.False(t, results[1].Verified, "a node that booted otherwise")
	assert.NotEmpty(t, results[1].Mismatches, "the differing PCRs are named: %+v", results[1])

	assert.False(t, results[2].Verified, "another node's answer")
	assert.Contains(t, results[2].Error, `not worker-1's own`)

	assert.False(t, results[3].Verified)
	assert.True(t, results[3].Unreachable)

	assert.True(t, results[4].Verified, results[4].Error)
	assert.Equal(t, "cp-0", results[4].Name, "an endpoint's result carries the name the node proved")
}
