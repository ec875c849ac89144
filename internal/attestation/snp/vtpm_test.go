package snp

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/vtpm"
)

// The real report's REPORT_DATA is not the binding of any AK, so through this path it must always be refused
// for the binding; every other check passes on it (see TestValidate), which isolates the binding check.
func TestVerifyAK(t *testing.T) {
	real := realAttestation()
	info, err := EncodeInstanceInfo(real)
	require.NoError(t, err)
	policy := realPolicy(t)

	testCases := map[string]struct {
		info    []byte
		wantErr error
	}{
		"report does not vouch for this AK": {info: info, wantErr: ErrReportDataMismatch},
		"no report":                         {info: nil, wantErr: ErrNoReport},
		"not an attestation":                {info: []byte(`{"Report":1}`), wantErr: ErrMalformedReport},
		"unknown field":                     {info: []byte(`{"Extra":true}`), wantErr: ErrMalformedReport},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			doc := &vtpm.Document{AKPublic: []byte("an attestation key"), InstanceInfo: tc.info}
			err := VerifyAK(policy)(context.Background(), doc, nil, nil)
			assert.ErrorIs(t, err, tc.wantErr)
		})
	}
}
