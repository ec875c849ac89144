package joinclient

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

// ErrNotClusterMember is returned for a JoinService on a node that has not taken its node lock (PCR 15
// zero): whatever it offers does not come from a cluster.
var ErrNotClusterMember = errors.New("the JoinService's node belongs to no cluster (its PCR 15 is zero)")

// imagePCRs are the PCRs that a node of the same image shows with the same values.
var imagePCRs = []uint32{
	measurements.PCRBootChain, measurements.PCRKernel, measurements.PCRUKI, measurements.PCRBootLoader, measurements.PCRSystemd,
}

// ServiceValidator checks the JoinService's attestation before a joining node accepts anything from it (a
// disk key, components to install): its AK must be certified by this node's own platform CA (from the
// vTPM's NV memory), it must show this node's own values in the image's PCRs (the same image, booted the
// same way) and a non-zero PCR 15 (its node took the lock of a cluster). Without this, an impostor that
// answers on the JoinService's port would choose the node's disk key and what it installs.
type ServiceValidator struct {
	variant variant.Variant
	tpm     transport.TPM
}

// NewServiceValidator returns the validator of a node whose own TPM is t. Only qemu-vtpm nodes can check
// the JoinService this way so far (the platform CA comes from the vTPM).
func NewServiceValidator(v variant.Variant, t transport.TPM) (*ServiceValidator, error) {
	if !v.Equal(variant.QEMUVTPM) {
		return nil, fmt.Errorf("checking the JoinService's attestation is implemented for %s nodes only, not %s", variant.QEMUVTPM, v)
	}
	return &ServiceValidator{variant: v, tpm: t}, nil
}

// Variant returns the variant the JoinService must attest with: this node's.
func (s *ServiceValidator) Variant() variant.Variant { return s.variant }

// Validate checks the JoinService's document. The reference values are read from this node's TPM each time,
// so that they are the node's final ones (the boot phases extend PCR 11 until the node is ready).
func (s *ServiceValidator) Validate(ctx context.Context, doc, nonce []byte) ([]byte, error) {
	own, err := tpm.ReadPCRs(s.tpm, imagePCRs)
	if err != nil {
		return nil, fmt.Errorf("reading this node's PCRs: %w", err)
	}
	refs := measurements.M{}
	for idx, v := range own {
		refs[idx] = measurements.Measurement{Expected: v}
	}
	ca, err := akcert.ReadPlatformCA(s.tpm)
	if err != nil {
		return nil, err
	}
	v, err := vtpm.NewValidator(s.variant, vtpm.ValidatorConfig{
		Measurements: refs, Required: imagePCRs, AKRoots: []*x509.Certificate{ca},
	})
	if err != nil {
		return nil, err
	}
	res, err := v.ValidateDetailed(ctx, doc, nonce)
	if err != nil {
		return nil, err
	}
	if pcr15, ok := res.PCRs[measurements.PCRClusterID]; !ok || bytes.Equal(pcr15, measurements.Zero) {
		return nil, ErrNotClusterMember
	}
	return res.UserData, nil
}

var _ attestation.Validator = (*ServiceValidator)(nil)
