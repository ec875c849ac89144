package choose

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/snp"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/measurements"
)

func fullMeasurements() measurements.M {
	m := measurements.M{}
	for _, idx := range measurements.DefaultEnforced {
		m[idx] = measurements.Measurement{Expected: bytes.Repeat([]byte{byte(idx)}, 32)}
	}
	return m
}

func TestValidator(t *testing.T) {
	roots := vtpmtest.AKRoots(t)
	testCases := map[string]struct {
		v       variant.Variant
		cfg     ValidatorConfig
		wantErr string
	}{
		"qemu-vtpm":             {v: variant.QEMUVTPM, cfg: ValidatorConfig{Measurements: fullMeasurements(), PlatformCA: roots}},
		"qemu-vtpm without CA":  {v: variant.QEMUVTPM, cfg: ValidatorConfig{Measurements: fullMeasurements()}, wantErr: "no platform CA"},
		"aws-sev-snp":           {v: variant.AWSSEVSNP, cfg: ValidatorConfig{Measurements: fullMeasurements(), SEVSNP: snpPolicy("Milan", snp.TCB{})}},
		"gcp-sev-snp":           {v: variant.GCPSEVSNP, cfg: ValidatorConfig{Measurements: fullMeasurements(), SEVSNP: snpPolicy("Milan", snp.TCB{})}},
		"azure-sev-snp":         {v: variant.AzureSEVSNP, cfg: ValidatorConfig{Measurements: fullMeasurements(), SEVSNP: snpPolicy("Genoa", snp.TCB{SNP: 1})}},
		"snp without a product": {v: variant.AWSSEVSNP, cfg: ValidatorConfig{Measurements: fullMeasurements()}, wantErr: "no AMD product line given"},
		"snp without launch measurements": {
			v: variant.AWSSEVSNP, cfg: ValidatorConfig{Measurements: fullMeasurements(), SEVSNP: snp.Policy{Product: "Milan"}},
			wantErr: "no launch measurement",
		},
		"snp on Genoa without a minimum TCB": {
			v: variant.AzureSEVSNP, cfg: ValidatorConfig{Measurements: fullMeasurements(), SEVSNP: snpPolicy("Genoa", snp.TCB{})},
			wantErr: "no default minimum TCB for Genoa",
		},
		"missing references": {v: variant.QEMUVTPM, cfg: ValidatorConfig{Measurements: measurements.M{}, PlatformCA: roots}, wantErr: "no reference value for an enforced PCR"},
		"no variant":         {v: variant.Variant{}, cfg: ValidatorConfig{Measurements: fullMeasurements()}, wantErr: "no validator"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			val, err := Validator(tc.v, tc.cfg)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.True(t, val.Variant().Equal(tc.v))
		})
	}
	_, err := Validator(variant.QEMUVTPM, ValidatorConfig{Measurements: measurements.M{}, PlatformCA: roots})
	assert.ErrorIs(t, err, vtpm.ErrMissingReference)
	_, err = Validator(variant.QEMUVTPM, ValidatorConfig{Measurements: fullMeasurements()})
	assert.ErrorIs(t, err, ErrNoPlatformCA)
}

func TestIssuer(t *testing.T) {
	iss, err := Issuer(variant.QEMUVTPM, nil, "/nonexistent")
	require.NoError(t, err)
	assert.True(t, iss.Variant().Equal(variant.QEMUVTPM))
	for _, v := range []variant.Variant{variant.AWSSEVSNP, variant.GCPSEVSNP, variant.AzureSEVSNP, {}} {
		_, err := Issuer(v, nil, "")
		assert.ErrorIs(t, err, ErrIssuerUnavailable, v.String())
	}
}

func snpPolicy(product string, minimum snp.TCB) snp.Policy {
	return snp.Policy{Product: product, MinimumTCB: minimum, LaunchMeasurements: [][]byte{make([]byte, snp.LaunchMeasurementSize)}}
}
