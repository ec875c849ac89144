package vtpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

// Errors of the checks that come before the measurements. Each means the document cannot be trusted at all.
var (
	ErrBadAK             = errors.New("attestation key is not a valid restricted signing key")
	ErrUntrustedAK       = errors.New("attestation key is not trusted")
	ErrQuoteSignature    = errors.New("quote signature does not verify with the attestation key")
	ErrNotAQuote         = errors.New("signed structure is not a TPM quote")
	ErrNonceMismatch     = errors.New("quote is not bound to this nonce and user data (replayed or forged)")
	ErrPCRDigestMismatch = errors.New("PCR values do not match the quoted digest (tampered)")
	ErrEventLog          = errors.New("event log is invalid")
	ErrEventLogMismatch  = errors.New("event log does not replay to the quoted PCR values")
	ErrMissingReference  = errors.New("no reference value for an enforced PCR")
	ErrNoEventLog        = errors.New("document has no event log")
)

// AKVerifier decides whether an attestation key may be trusted, e.g. because a hardware report vouches for
// it. It sees the document only after its own checks passed and before any PCR is looked at.
type AKVerifier func(ctx context.Context, doc *Document, ak crypto.PublicKey, nonce []byte) error

// ValidatorConfig configures a Validator. The zero value of every field is the secure choice.
type ValidatorConfig struct {
	// Measurements are the reference values. Every PCR in Required must have one.
	Measurements measurements.M
	// Required lists the PCRs that must have reference values; nil means measurements.DefaultEnforced.
	Required []uint32
	// RequireEventLog refuses documents without an event log.
	RequireEventLog bool
	// VerifyAK establishes trust in the attestation key. Nil accepts the key the document names, which
	// proves only that some TPM signed the quote: right for qemu-vtpm, where nothing can vouch for the AK.
	VerifyAK AKVerifier
	// Log receives warn-only mismatches; nil discards them.
	Log *slog.Logger
}

// Validator validates vTPM attestation documents.
type Validator struct {
	variant variant.Variant
	cfg     ValidatorConfig
	log     *slog.Logger
}

// NewValidator returns a Validator. A required PCR without a reference value is an error: it would
// otherwise pass whatever the node booted.
func NewValidator(v variant.Variant, cfg ValidatorConfig) (*Validator, error) {
	if err := cfg.Measurements.Validate(); err != nil {
		return nil, fmt.Errorf("reference values: %w", err)
	}
	required := cfg.Required
	if required == nil {
		required = measurements.DefaultEnforced
	}
	if missing := cfg.Measurements.Missing(required); len(missing) > 0 {
		return nil, fmt.Errorf("%w: PCRs %v (fill them in with 'constellation config fetch-measurements')", ErrMissingReference, missing)
	}
	cfg.Measurements = cfg.Measurements.Clone()
	cfg.Required = slices.Clone(required)
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Validator{variant: v, cfg: cfg, log: log}, nil
}

// Variant returns the validator's attestation variant.
func (v *Validator) Variant() variant.Variant {
	return v.variant
}

// Result is a successful validation.
type Result struct {
	UserData []byte
	// PCRs are the quoted PCR values.
	PCRs map[uint32][]byte
	// Warnings lists the warn-only PCRs that differ from their reference values.
	Warnings []attestation.PCRMismatch
}

// Validate checks doc and returns its user data.
func (v *Validator) Validate(ctx context.Context, doc, nonce []byte) ([]byte, error) {
	res, err := v.ValidateDetailed(ctx, doc, nonce)
	if err != nil {
		return nil, err
	}
	return res.UserData, nil
}

// ValidateDetailed checks doc and returns what it proved. Order matters: the key, the signature and the
// nonce binding are checked before anything the document claims is believed.
func (v *Validator) ValidateDetailed(ctx context.Context, raw, nonce []byte) (*Result, error) {
	if len(nonce) < attestation.MinNonceSize {
		return nil, fmt.Errorf("%w: %d bytes, at least %d", attestation.ErrNonceTooShort, len(nonce), attestation.MinNonceSize)
	}
	doc, err := decodeDocument(raw)
	if err != nil {
		return nil, err
	}
	akPub, err := parseAK(doc.AKPublic)
	if err != nil {
		return nil, err
	}
	if v.cfg.VerifyAK != nil {
		if err := v.cfg.VerifyAK(ctx, doc, akPub, nonce); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUntrustedAK, err)
		}
	}
	pcrs, err := verifyQuote(doc, akPub, nonce)
	if err != nil {
		return nil, err
	}
	log, err := v.checkEventLog(doc.EventLog, pcrs)
	if err != nil {
		return nil, err
	}

	verr := &attestation.ValidationError{Variant: v.variant.String()}
	var warnings []attestation.PCRMismatch
	for _, idx := range v.cfg.Measurements.Indices() {
		want := v.cfg.Measurements[idx]
		got, quoted := pcrs[idx]
		if !quoted {
			verr.Failures = append(verr.Failures, fmt.Sprintf("PCR %d has a reference value but is not in the quote", idx))
			continue
		}
		if bytes.Equal(got, want.Expected) {
			continue
		}
		m := attestation.PCRMismatch{
			PCR:      idx,
			Expected: want.Expected.String(),
			Actual:   measurements.Digest(got).String(),
			WarnOnly: want.WarnOnly,
		}
		if log != nil {
			for _, ev := range log.EventsFor(idx) {
				m.Events = append(m.Events, ev.Description())
			}
		}
		verr.Mismatches = append(verr.Mismatches, m)
		if want.WarnOnly {
			warnings = append(warnings, m)
			v.log.Warn("warn-only PCR differs from its reference value", "pcr", idx, "expected", m.Expected, "actual", m.Actual)
		}
	}
	if verr.Failed() {
		return nil, verr
	}
	return &Result{UserData: doc.UserData, PCRs: pcrs, Warnings: warnings}, nil
}

// parseAK decodes the AK and checks that it is a restricted signing key, which the TPM uses only for
// structures it generated itself.
func parseAK(raw []byte) (crypto.PublicKey, error) {
	pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadAK, err)
	}
	pub, err := pub2b.Contents()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadAK, err)
	}
	attrs := pub.ObjectAttributes
	if !attrs.Restricted || !attrs.SignEncrypt || !attrs.FixedTPM || attrs.Decrypt {
		return nil, fmt.Errorf("%w: key attributes allow signing data the TPM did not generate", ErrBadAK)
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("%w: name algorithm %#x is not SHA-256", ErrBadAK, uint16(pub.NameAlg))
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadAK, err)
	}
	return key, nil
}

// verifyQuote checks the quote's signature with the AK (a restricted key signs only what the TPM generated,
// so this also proves the TPM made the quote), its binding to nonce and user data, and that the document's
// PCR values are the quoted ones. It returns the quoted PCR values.
func verifyQuote(doc *Document, ak crypto.PublicKey, nonce []byte) (map[uint32][]byte, error) {
	digest := sha256.Sum256(doc.Quote.Quoted)
	if err := verifySignature(ak, digest[:], doc.Quote.Signature); err != nil {
		return nil, err
	}
	attest, err := tpm2.Unmarshal[tpm2.TPMSAttest](doc.Quote.Quoted)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotAQuote, err)
	}
	if attest.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("%w: type %#x", ErrNotAQuote, uint16(attest.Type))
	}
	if !bytes.Equal(attest.ExtraData.Buffer, qualifyingData(nonce, doc.UserData)) {
		return nil, ErrNonceMismatch
	}
	info, err := attest.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotAQuote, err)
	}
	selected, err := tpm.SelectedPCRs(info.PCRSelect)
	if err != nil {
		return nil, fmt.Errorf("refusing quote: %w", err)
	}
	if len(selected) == 0 {
		return nil, fmt.Errorf("refusing quote: it covers no SHA-256 PCRs")
	}
	pcrs := make(map[uint32][]byte, len(selected))
	for _, idx := range selected {
		val, ok := doc.Quote.PCRs[idx]
		if !ok || len(val) != sha256.Size {
			return nil, fmt.Errorf("%w: PCR %d missing or not %d bytes", ErrPCRDigestMismatch, idx, sha256.Size)
		}
		pcrs[idx] = val
	}
	if len(doc.Quote.PCRs) != len(selected) {
		return nil, fmt.Errorf("%w: document lists PCRs the quote does not cover", ErrPCRDigestMismatch)
	}
	if !bytes.Equal(info.PCRDigest.Buffer, pcrDigest(selected, pcrs)) {
		return nil, ErrPCRDigestMismatch
	}
	return pcrs, nil
}

func verifySignature(ak crypto.PublicKey, digest, rawSig []byte) error {
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](rawSig)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrQuoteSignature, err)
	}
	switch key := ak.(type) {
	case *ecdsa.PublicKey:
		ecc, err := sig.Signature.ECDSA()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrQuoteSignature, err)
		}
		if ecc.Hash != tpm2.TPMAlgSHA256 {
			return fmt.Errorf("%w: hash %#x is not SHA-256", ErrQuoteSignature, uint16(ecc.Hash))
		}
		r := new(big.Int).SetBytes(ecc.SignatureR.Buffer)
		s := new(big.Int).SetBytes(ecc.SignatureS.Buffer)
		if !ecdsa.Verify(key, digest, r, s) {
			return ErrQuoteSignature
		}
	case *rsa.PublicKey:
		rsaSig, err := sig.Signature.RSASSA()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrQuoteSignature, err)
		}
		if rsaSig.Hash != tpm2.TPMAlgSHA256 {
			return fmt.Errorf("%w: hash %#x is not SHA-256", ErrQuoteSignature, uint16(rsaSig.Hash))
		}
		if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, digest, rsaSig.Sig.Buffer); err != nil {
			return fmt.Errorf("%w: %w", ErrQuoteSignature, err)
		}
	default:
		return fmt.Errorf("%w: unsupported key type %T", ErrQuoteSignature, ak)
	}
	return nil
}

// checkEventLog parses the log and checks that it replays to the quoted values of every PCR it touches.
// PCRs the log does not touch (extended by userspace, such as PCR 15) are left to the measurements.
func (v *Validator) checkEventLog(raw []byte, quoted map[uint32][]byte) (*eventlog.Log, error) {
	if len(raw) == 0 {
		if v.cfg.RequireEventLog {
			return nil, ErrNoEventLog
		}
		return nil, nil
	}
	log, err := eventlog.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEventLog, err)
	}
	replayed, err := log.Replay(eventlog.AlgSHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEventLog, err)
	}
	touched := make(map[uint32][]byte, len(replayed))
	for idx := range replayed {
		if q, ok := quoted[idx]; ok {
			touched[idx] = q
		}
	}
	mismatches, err := log.Diff(eventlog.AlgSHA256, touched)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEventLog, err)
	}
	if len(mismatches) > 0 {
		details := make([]string, len(mismatches))
		for i, m := range mismatches {
			details[i] = m.String()
		}
		return nil, fmt.Errorf("%w:\n%s", ErrEventLogMismatch, strings.Join(details, "\n"))
	}
	return log, nil
}
