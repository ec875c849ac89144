package vtpm

import (
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// akTemplate is a restricted ECDSA P-256 signing key: the TPM signs only structures it generated itself
// (quotes) with it, never caller-chosen data that could imitate a quote. Created in the endorsement
// hierarchy from this fixed template, it is the same key every time on the same TPM.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// loadedAK is an attestation key loaded in the TPM.
type loadedAK struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public []byte // TPM2B_PUBLIC
}

func createAK(t transport.TPM) (*loadedAK, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(akTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("creating attestation key: %w", err)
	}
	return &loadedAK{handle: rsp.ObjectHandle, name: rsp.Name, public: tpm2.Marshal(rsp.OutPublic)}, nil
}

func (ak *loadedAK) flush(t transport.TPM) {
	_, _ = tpm2.FlushContext{FlushHandle: ak.handle}.Execute(t)
}
