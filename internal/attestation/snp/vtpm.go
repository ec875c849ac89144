package snp

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/constellation-go/constellation/internal/attestation/vtpm"
)

// ErrNoReport is returned when a vTPM document of an SEV-SNP variant carries no report.
var ErrNoReport = errors.New("document carries no SEV-SNP attestation")

// EncodeInstanceInfo encodes an attestation as a vTPM document's instance info.
func EncodeInstanceInfo(att Attestation) ([]byte, error) {
	return json.Marshal(att)
}

// VerifyAK returns the AK check of the *-sev-snp variants: the document's instance info must be an SEV-SNP
// attestation that is valid under policy and whose REPORT_DATA is the Binding of the document's AK and the
// attestation's nonce. The hardware thereby vouches that the AK belongs to a vTPM inside this confidential
// VM, now: a report from an earlier attestation (older firmware, revoked measurements) does not fit.
func VerifyAK(policy Policy) vtpm.AKVerifier {
	return func(_ context.Context, doc *vtpm.Document, _ crypto.PublicKey, nonce []byte) error {
		if len(doc.InstanceInfo) == 0 {
			return ErrNoReport
		}
		dec := json.NewDecoder(bytes.NewReader(doc.InstanceInfo))
		dec.DisallowUnknownFields()
		var att Attestation
		if err := dec.Decode(&att); err != nil {
			return fmt.Errorf("%w: %w", ErrMalformedReport, err)
		}
		if _, err := Validate(att, policy, Binding(doc.AKPublic, nonce)); err != nil {
			return err
		}
		return nil
	}
}
