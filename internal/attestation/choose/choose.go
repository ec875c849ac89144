// Package choose is the attestation variant registry: it returns the Issuer and Validator of a variant.
package choose

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/snp"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

// ErrIssuerUnavailable is returned for variants whose evidence this build cannot produce.
var ErrIssuerUnavailable = errors.New("this build cannot issue attestations of this variant")

// Issuer returns the issuer of variant v for a node whose TPM is t and whose firmware event log is at
// eventLogPath (vtpm.DefaultEventLogPath on a VM).
func Issuer(v variant.Variant, t transport.TPM, eventLogPath string) (attestation.Issuer, error) {
	switch {
	case v.Equal(variant.QEMUVTPM):
		return vtpm.NewIssuer(v, t, vtpm.WithEventLogFile(eventLogPath)), nil
	case v.IsSEVSNP():
		// Needs the SEV-SNP guest device to fetch a report binding the AK; nodes here are QEMU/local only.
		return nil, fmt.Errorf("%w: %s (it needs an SEV-SNP guest)", ErrIssuerUnavailable, v)
	}
	return nil, fmt.Errorf("%w: %q", ErrIssuerUnavailable, v)
}

// ValidatorConfig is what a validator of any variant needs. There are no escape hatches here: every
// validator requires an event log, a trusted attestation key and enforced required PCRs.
type ValidatorConfig struct {
	Measurements measurements.M
	// PlatformCA are the CAs that certify the attestation keys of qemu-vtpm vTPMs (the configuration's
	// attestation.platformCA); required for qemu-vtpm.
	PlatformCA []*x509.Certificate
	// SEVSNP is the hardware policy of the *-sev-snp variants.
	SEVSNP snp.Policy
	Log    *slog.Logger
}

// ErrNoPlatformCA is returned for a qemu-vtpm validator without a platform CA.
var ErrNoPlatformCA = errors.New("no platform CA to check the nodes' attestation keys against (attestation.platformCA is empty: 'constellation create' fills it in)")

// Validator returns the validator of variant v.
func Validator(v variant.Variant, cfg ValidatorConfig) (attestation.Validator, error) {
	vcfg := vtpm.ValidatorConfig{
		Measurements: cfg.Measurements,
		Log:          cfg.Log,
	}
	switch {
	case v.Equal(variant.QEMUVTPM):
		if len(cfg.PlatformCA) == 0 {
			return nil, fmt.Errorf("%s validator: %w", v, ErrNoPlatformCA)
		}
		vcfg.AKRoots = cfg.PlatformCA
	case v.IsSEVSNP():
		if err := cfg.SEVSNP.Check(); err != nil {
			return nil, fmt.Errorf("%s validator: %w", v, err)
		}
		vcfg.VerifyAK = snp.VerifyAK(cfg.SEVSNP)
	default:
		return nil, fmt.Errorf("no validator for attestation variant %q", v)
	}
	val, err := vtpm.NewValidator(v, vcfg)
	if err != nil {
		return nil, fmt.Errorf("%s validator: %w", v, err)
	}
	return val, nil
}

// ForConfig returns the validator an attestation config (the attestation section of constellation-conf.yaml,
// also what the JoinService enforces) describes, with refs as the reference values (the config's
// measurements, adjusted by the caller for the node's expected PCR 15).
func ForConfig(att config.AttestationConfig, refs measurements.M, log *slog.Logger) (attestation.Validator, error) {
	v, err := variant.FromString(att.Variant)
	if err != nil {
		return nil, err
	}
	cfg := ValidatorConfig{Measurements: refs, Log: log}
	if s := att.SEVSNP; s != nil {
		if cfg.SEVSNP, err = s.SNPPolicy(); err != nil {
			return nil, err
		}
	}
	if att.PlatformCA != "" {
		if cfg.PlatformCA, err = akcert.ParseCertificates([]byte(att.PlatformCA)); err != nil {
			return nil, fmt.Errorf("attestation.platformCA: %w", err)
		}
	}
	return Validator(v, cfg)
}

// ForRollout returns the validator of a cluster that moves from one node image to another: a node passes if
// the target image's reference values accept it, or the previous image's; each set is checked whole, never
// a mix of the two. Both sets are adjusted by the caller as for ForConfig.
func ForRollout(att config.AttestationConfig, target, previous measurements.M, log *slog.Logger) (attestation.Validator, error) {
	t, err := ForConfig(att, target, log)
	if err != nil {
		return nil, err
	}
	p, err := ForConfig(att, previous, log)
	if err != nil {
		return nil, fmt.Errorf("the previous image's measurements (rollout.previousMeasurements): %w", err)
	}
	return eitherImage{target: t, previous: p}, nil
}

// eitherImage accepts a node that one of two complete measurement sets accepts.
type eitherImage struct {
	target, previous attestation.Validator
}

func (e eitherImage) Variant() variant.Variant { return e.target.Variant() }

func (e eitherImage) Validate(ctx context.Context, doc, nonce []byte) ([]byte, error) {
	data, errTarget := e.target.Validate(ctx, doc, nonce)
	if errTarget == nil {
		return data, nil
	}
	data, errPrevious := e.previous.Validate(ctx, doc, nonce)
	if errPrevious == nil {
		return data, nil
	}
	return nil, fmt.Errorf("the node matches neither the roll-out's target image: %w; nor the image it replaces: %w", errTarget, errPrevious)
}

// Node is a node's own attestation: its variant, its TPM and the issuer on it.
type Node struct {
	Variant variant.Variant
	TPM     transport.TPMCloser
	Issuer  attestation.Issuer
}

// OpenNode opens the TPM at tpmAddr (tpm.Open) and returns the issuer of the variant named variantName,
// attaching the event log at eventLogPath. Close releases the TPM.
func OpenNode(variantName, tpmAddr, eventLogPath string) (*Node, error) {
	v, err := variant.FromString(variantName)
	if err != nil {
		return nil, err
	}
	t, err := tpm.Open(tpmAddr)
	if err != nil {
		return nil, err
	}
	issuer, err := Issuer(v, t, eventLogPath)
	if err != nil {
		_ = t.Close()
		return nil, err
	}
	return &Node{Variant: v, TPM: t, Issuer: issuer}, nil
}

// Close releases the TPM.
func (n *Node) Close() error { return n.TPM.Close() }
