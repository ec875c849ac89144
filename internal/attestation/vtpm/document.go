// Package vtpm implements attestation with a (virtual) TPM: a quote of the SHA-256 PCR bank signed by an
// attestation key (AK), plus the TCG event log that explains the PCR values. Variants build on it; those
// with a hardware report (SEV-SNP) let the report vouch for the AK.
package vtpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/constellation-go/constellation/internal/attestation"
)

// documentVersion is the format version of Document.
const documentVersion = 1

// Document is the attestation document of the vTPM variants.
type Document struct {
	Version int `json:"version"`
	// AKPublic is the attestation key's TPM2B_PUBLIC, as the TPM returned it.
	AKPublic []byte `json:"akPublic"`
	// Quote is TPM2_Quote's output over the SHA-256 PCRs.
	Quote Quote `json:"quote"`
	// EventLog is the TCG2 event log (binary_bios_measurements format); may be empty.
	EventLog []byte `json:"eventLog,omitempty"`
	// UserData is what the caller asked to bind (aTLS: SHA-256 of the certificate's public key).
	UserData []byte `json:"userData"`
	// InstanceInfo carries variant-specific evidence, e.g. an SEV-SNP report that vouches for the AK.
	InstanceInfo []byte `json:"instanceInfo,omitempty"`
	// AKCert is the AK's certificate from the vTPM's NV memory (DER, see akcert.NVIndex); qemu-vtpm
	// validators require it to chain to the platform CA the configuration names.
	AKCert []byte `json:"akCert,omitempty"`
}

// Quote is a TPM quote.
type Quote struct {
	// Quoted is the TPMS_ATTEST structure the TPM signed.
	Quoted []byte `json:"quoted"`
	// Signature is the TPMT_SIGNATURE over Quoted.
	Signature []byte `json:"signature"`
	// PCRs are the SHA-256 values the quote's PCR digest covers.
	PCRs map[uint32][]byte `json:"pcrs"`
}

// decodeDocument checks the size, then decodes strictly.
func decodeDocument(raw []byte) (*Document, error) {
	if len(raw) > attestation.MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", attestation.ErrDocumentTooLarge, len(raw), attestation.MaxDocumentSize)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %w", attestation.ErrMalformedDocument, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", attestation.ErrMalformedDocument)
	}
	if doc.Version != documentVersion {
		return nil, fmt.Errorf("%w: version %d, expected %d", attestation.ErrMalformedDocument, doc.Version, documentVersion)
	}
	if len(doc.AKPublic) == 0 || len(doc.Quote.Quoted) == 0 || len(doc.Quote.Signature) == 0 {
		return nil, fmt.Errorf("%w: attestation key, quote or signature missing", attestation.ErrMalformedDocument)
	}
	return &doc, nil
}

// quoteDomain separates our quote bindings from any other use of the same AK.
const quoteDomain = "constellation-vtpm-quote-v1\x00"

// qualifyingData is what the TPM signs along with the PCRs: it binds the quote to one nonce and one piece of
// user data. Both are length-prefixed, so no two (nonce, userData) pairs share a binding.
func qualifyingData(nonce, userData []byte) []byte {
	h := sha256.New()
	h.Write([]byte(quoteDomain))
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(nonce)))
	h.Write(n[:])
	h.Write(nonce)
	binary.BigEndian.PutUint32(n[:], uint32(len(userData)))
	h.Write(n[:])
	h.Write(userData)
	return h.Sum(nil)
}
