package vtpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

// DefaultEventLogPath is where Linux exposes the firmware's TCG event log.
const DefaultEventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// InstanceInfoFunc returns variant-specific evidence for a document, e.g. an SEV-SNP report whose report data
// binds akPublic.
type InstanceInfoFunc func(ctx context.Context, akPublic, nonce, userData []byte) ([]byte, error)

// Issuer issues vTPM attestation documents. It keeps its attestation key loaded between documents; it is
// safe for concurrent use (the TPM serialises quotes anyway).
type Issuer struct {
	variant      variant.Variant
	tpm          transport.TPM
	eventLog     func() ([]byte, error)
	instanceInfo InstanceInfoFunc
	pcrs         []uint32

	mu sync.Mutex
	ak *loadedAK
	// pcrs seen at the last quote: PCRs rarely change, so most quotes need no PCR read at all.
	lastPCRs map[uint32][]byte
	// The last event log and its compressed form: the log changes only when something is measured, and
	// compressing it again for every document would be a noticeable part of an aTLS handshake.
	lastLog, lastLogDeflate []byte
}

// IssuerOption configures an Issuer.
type IssuerOption func(*Issuer)

// WithEventLogFile attaches the event log read from path to every document. A missing file is an error: a
// node that should have a log but lost it must not look like one that never had one.
func WithEventLogFile(path string) IssuerOption {
	return func(i *Issuer) {
		i.eventLog = func() ([]byte, error) {
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("reading the event log: %w", err)
			}
			return data, nil
		}
	}
}

// WithEventLog attaches the event log that read returns to every document.
func WithEventLog(read func() ([]byte, error)) IssuerOption {
	return func(i *Issuer) { i.eventLog = read }
}

// WithInstanceInfo attaches variant-specific evidence to every document.
func WithInstanceInfo(f InstanceInfoFunc) IssuerOption {
	return func(i *Issuer) { i.instanceInfo = f }
}

// NewIssuer returns an Issuer that quotes all 24 SHA-256 PCRs of t.
func NewIssuer(v variant.Variant, t transport.TPM, opts ...IssuerOption) *Issuer {
	i := &Issuer{variant: v, tpm: t, pcrs: measurements.AllPCRs()}
	for _, opt := range opts {
		opt(i)
	}
	return i
}

// Variant returns the issuer's attestation variant.
func (i *Issuer) Variant() variant.Variant {
	return i.variant
}

// maxQuoteAttempts bounds retries when a PCR changes between quoting and reading it.
const maxQuoteAttempts = 3

// Issue returns a document binding userData and nonce to the TPM's current PCR values.
func (i *Issuer) Issue(ctx context.Context, userData, nonce []byte) ([]byte, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if i.ak == nil {
		ak, err := createAK(i.tpm)
		if err != nil {
			return nil, err
		}
		i.ak = ak
	}

	quote, err := i.quote(qualifyingData(nonce, userData))
	if err != nil {
		// The AK may have been flushed by someone else sharing the TPM: recreate it once.
		i.ak.flush(i.tpm)
		i.ak = nil
		ak, akErr := createAK(i.tpm)
		if akErr != nil {
			return nil, errors.Join(err, akErr)
		}
		i.ak = ak
		if quote, err = i.quote(qualifyingData(nonce, userData)); err != nil {
			return nil, err
		}
	}

	doc := Document{
		Version:  documentVersion,
		AKPublic: i.ak.public,
		AKCert:   i.ak.cert,
		Quote:    *quote,
		UserData: userData,
	}
	if i.eventLog != nil {
		log, err := i.eventLog()
		if err != nil {
			return nil, err
		}
		if doc.EventLogDeflate, err = i.compressedLog(log); err != nil {
			return nil, err
		}
	}
	if i.instanceInfo != nil {
		if doc.InstanceInfo, err = i.instanceInfo(ctx, doc.AKPublic, nonce, userData); err != nil {
			return nil, fmt.Errorf("getting instance info: %w", err)
		}
	}
	return json.Marshal(doc)
}

// quote quotes the PCRs and returns them with the values the quote's signed digest covers. The values of the
// last quote are reused while they match that digest; otherwise (and if a PCR changes between quoting and
// reading) the PCRs are read and the quote is taken again.
func (i *Issuer) quote(extraData []byte) (*Quote, error) {
	for range maxQuoteAttempts {
		rsp, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: i.ak.handle, Name: i.ak.name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: extraData},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      tpm.Selection(i.pcrs),
		}.Execute(i.tpm)
		if err != nil {
			return nil, fmt.Errorf("quoting PCRs: %w", err)
		}
		attest, err := rsp.Quoted.Contents()
		if err != nil {
			return nil, fmt.Errorf("decoding own quote: %w", err)
		}
		info, err := attest.Attested.Quote()
		if err != nil {
			return nil, fmt.Errorf("decoding own quote: %w", err)
		}
		quoted := func(values map[uint32][]byte) *Quote {
			return &Quote{Quoted: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), PCRs: values}
		}
		if i.lastPCRs != nil && bytes.Equal(info.PCRDigest.Buffer, pcrDigest(i.pcrs, i.lastPCRs)) {
			return quoted(i.lastPCRs), nil
		}
		values, err := tpm.ReadPCRs(i.tpm, i.pcrs)
		if err != nil {
			return nil, err
		}
		i.lastPCRs = values
		if bytes.Equal(info.PCRDigest.Buffer, pcrDigest(i.pcrs, values)) {
			return quoted(values), nil
		}
	}
	return nil, fmt.Errorf("PCRs kept changing while quoting (%d attempts)", maxQuoteAttempts)
}

// pcrDigest is the TPM's PCR digest of a quote: SHA-256 over the selected values in ascending PCR order.
func pcrDigest(selected []uint32, values map[uint32][]byte) []byte {
	sorted := slices.Clone(selected)
	slices.Sort(sorted)
	h := sha256.New()
	for _, idx := range sorted {
		h.Write(values[idx])
	}
	return h.Sum(nil)
}

// Close flushes the attestation key from the TPM.
func (i *Issuer) Close() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.ak != nil {
		i.ak.flush(i.tpm)
		i.ak = nil
	}
}

// compressedLog returns log compressed, reusing the last result while the log is unchanged. Issue calls it
// with i.mu held.
func (i *Issuer) compressedLog(log []byte) ([]byte, error) {
	if i.lastLog != nil && bytes.Equal(i.lastLog, log) {
		return i.lastLogDeflate, nil
	}
	z, err := compressEventLog(log)
	if err != nil {
		return nil, err
	}
	i.lastLog, i.lastLogDeflate = bytes.Clone(log), z
	return z, nil
}
