package precompute_test

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
)

// TestFreshNode: a fresh node shows the boot's predicted PCRs and PCR 15 zero; data that is no UKI is
// ErrNotUKI; the image reference is the UKI's SHA-256.
func TestFreshNode(t *testing.T) {
	uki := precomputetest.UKI()
	parsed, err := precompute.ParseUKI(uki)
	require.NoError(t, err)
	opts := precompute.Options{Platform: &precompute.OVMF, Path: precompute.BootDirect}
	res, err := precompute.Precompute(parsed, opts)
	require.NoError(t, err)

	_, m, err := precompute.FreshNode(uki, opts)
	require.NoError(t, err)
	for idx, v := range res.Measurements(true) {
		if idx != measurements.PCRClusterID {
			assert.Equal(t, v, m[idx], "PCR %d", idx)
		}
	}
	assert.Equal(t, measurements.Digest(make([]byte, 32)), m[measurements.PCRClusterID].Expected)

	_, _, err = precompute.FreshNode([]byte("MZ junk"), opts)
	assert.ErrorIs(t, err, precompute.ErrNotUKI)
	sum := sha256.Sum256(uki)
	assert.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), precompute.ImageRef(uki))
}
