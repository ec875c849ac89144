package vtpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
)

// akTemplate is the attestation key's template (akcert.Template): a restricted ECDSA P-256 signing key of
// the endorsement hierarchy.
var akTemplate = akcert.Template()

// loadedAK is an attestation key loaded in the TPM.
type loadedAK struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public []byte // TPM2B_PUBLIC
	// cert is the AK certificate from akcert.NVIndex; nil if the vTPM has none.
	cert []byte
}

func createAK(t transport.TPM) (*loadedAK, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(akTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("creating attestation key: %w", err)
	}
	ak := &loadedAK{handle: rsp.ObjectHandle, name: rsp.Name, public: tpm2.Marshal(rsp.OutPublic)}
	if ak.cert, err = akcert.ReadNV(t, akcert.NVIndex); err != nil && !errors.Is(err, akcert.ErrNoNVIndex) {
		ak.flush(t)
		return nil, fmt.Errorf("reading the attestation key's certificate: %w", err)
	}
	return ak, nil
}

func (ak *loadedAK) flush(t transport.TPM) {
	_, _ = tpm2.FlushContext{FlushHandle: ak.handle}.Execute(t)
}
