// Package choose is the attestation variant registry: it returns the Issuer and Validator of a variant.
package choose

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/snp"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/measurements"
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

// ValidatorConfig is what a validator of any variant needs.
type ValidatorConfig struct {
	Measurements    measurements.M
	RequireEventLog bool
	// SEVSNP is the hardware policy of the *-sev-snp variants.
	SEVSNP snp.Policy
	Log    *slog.Logger
}

// Validator returns the validator of variant v.
func Validator(v variant.Variant, cfg ValidatorConfig) (attestation.Validator, error) {
	vcfg := vtpm.ValidatorConfig{
		Measurements:    cfg.Measurements,
		RequireEventLog: cfg.RequireEventLog,
		Log:             cfg.Log,
	}
	switch {
	case v.Equal(variant.QEMUVTPM):
	case v.IsSEVSNP():
		if cfg.SEVSNP.Product == "" {
			return nil, fmt.Errorf("%s validator: the SEV-SNP policy names no product (Milan, Genoa, Turin)", v)
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
