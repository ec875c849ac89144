// Package vtpm implements attestation with a (virtual) TPM: a quote of the SHA-256 PCR bank signed by an
// attestation key (AK), plus the TCG event log that explains the PCR values. Variants build on it; those
// with a hardware report (SEV-SNP) let the report vouch for the AK.
package vtpm

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
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
	// EventLog is the TCG2 event log (binary_bios_measurements format), uncompressed; may be empty. Issuers
	// send EventLogDeflate instead; this form is still accepted from nodes of older images.
	EventLog []byte `json:"eventLog,omitempty"`
	// EventLogDeflate is the event log compressed with DEFLATE (RFC 1951). Real logs shrink to a half or a
	// third, which lets logs of 50 KB and more travel in an aTLS certificate. The log stays bound to the
	// quote the same way: it must replay to the quoted PCRs.
	EventLogDeflate []byte `json:"eventLogDeflate,omitempty"`
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

// MaxEventLogSize bounds an event log after decompression, so that a small document cannot make the
// validator inflate gigabytes. The largest real logs are about 50 KB.
const MaxEventLogSize = 1 << 20

// deflaters keeps compressors between documents: a new one allocates about 1 MB of tables, which cost
// more than the compression itself at the rate aTLS handshakes need documents.
var deflaters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(io.Discard, flate.BestCompression) // only fails for an invalid level
	return w
}}

// inflaters keeps decompressors between documents, for the same reason.
var inflaters = sync.Pool{New: func() any { return flate.NewReader(bytes.NewReader(nil)) }}

// compressEventLog deflates an event log for EventLogDeflate.
func compressEventLog(log []byte) ([]byte, error) {
	var b bytes.Buffer
	w := deflaters.Get().(*flate.Writer)
	defer deflaters.Put(w)
	w.Reset(&b)
	if _, err := w.Write(log); err != nil {
		return nil, fmt.Errorf("compressing the event log: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("compressing the event log: %w", err)
	}
	return b.Bytes(), nil
}

// eventLog returns the document's event log, inflated if it came compressed; nil if there is none.
func (d *Document) eventLog() ([]byte, error) {
	switch {
	case len(d.EventLog) > 0 && len(d.EventLogDeflate) > 0:
		return nil, fmt.Errorf("%w: both eventLog and eventLogDeflate are set", attestation.ErrMalformedDocument)
	case len(d.EventLogDeflate) == 0:
		return d.EventLog, nil
	}
	r := inflaters.Get().(io.ReadCloser)
	defer inflaters.Put(r)
	if err := r.(flate.Resetter).Reset(bytes.NewReader(d.EventLogDeflate), nil); err != nil {
		return nil, fmt.Errorf("%w: eventLogDeflate: %w", attestation.ErrMalformedDocument, err)
	}
	log, err := io.ReadAll(io.LimitReader(r, MaxEventLogSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: eventLogDeflate: %w", attestation.ErrMalformedDocument, err)
	}
	if len(log) > MaxEventLogSize {
		return nil, fmt.Errorf("%w: the event log inflates to more than %d bytes", attestation.ErrDocumentTooLarge, MaxEventLogSize)
	}
	return log, nil
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

// CertifiedName returns the vTPM name (the node's name) the platform certified for the attestation key of
// a document, or "" for a document without an AK certificate (variants in which an SEV-SNP report vouches for
// the AK). Call it only on a document a Validator accepted: only then is the certificate trusted.
func CertifiedName(raw []byte) (string, error) {
	doc, err := decodeDocument(raw)
	if err != nil {
		return "", err
	}
	if len(doc.AKCert) == 0 {
		return "", nil
	}
	return akcert.VTPMName(doc.AKCert)
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
