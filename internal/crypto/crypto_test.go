package crypto_test

import (
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
)

// The inputs of the committed vectors come from cryptotest. The expected keys were computed with an
// independent HKDF implementation (Python's hmac/hashlib, RFC 5869), not with this code.
var (
	TestVectorSecret = cryptotest.MasterSecret().Key
	TestVectorSalt   = cryptotest.MasterSecret().Salt
)

func seq(start, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(start + i)
	}
	return b
}

func TestDeriveKeyVectors(t *testing.T) {
	testCases := map[string]struct {
		id     string
		length int
		want   string
	}{
		"measurement secret": {id: crypto.MeasurementSecretID, length: 32, want: "ea7fedd14f5a29b1b8545592fc20bfdae06918e4ff447b1a0b8e4f3356005bda"},
		"disk 1":             {id: "00000000-0000-0000-0000-000000000001", length: 32, want: "52b5a48496958261b02efae7c81515ce773b479c56d6e5cb625bf7f7710d2684"},
		"disk 2, 64 bytes":   {id: "00000000-0000-0000-0000-000000000002", length: 64, want: "e76b3dcbdbe5d6851cdac0d7b89f3c93f3949582b39d2621538af8352b04e452ce64ab7ce9b8be93e5657c845b105c6e38649f3ee7d691fdf57a13583b5e9c6f"},
		"16 bytes":           {id: "disk-a", length: 16, want: "f61cf163e9532d6bff3ec053c6074334"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			got, err := crypto.DeriveKey(TestVectorSecret, TestVectorSalt, tc.id, tc.length)
			require.NoError(t, err)
			assert.Equal(t, tc.want, hex.EncodeToString(got))
		})
	}
}

func TestClusterIDVector(t *testing.T) {
	ms, err := crypto.DeriveKey(TestVectorSecret, TestVectorSalt, crypto.MeasurementSecretID, 32)
	require.NoError(t, err)
	id, err := crypto.ClusterID(ms, TestVectorSalt)
	require.NoError(t, err)
	assert.Equal(t, "bc9cb582a07915ec2e3ed227b2b5594273ee1a23adda549a160049614f1b5a2c", hex.EncodeToString(id))

	// The same from the master secret in one step.
	ident, err := cryptotest.MasterSecret().Identity()
	require.NoError(t, err)
	assert.Equal(t, "ea7fedd14f5a29b1b8545592fc20bfdae06918e4ff447b1a0b8e4f3356005bda", hex.EncodeToString(ident.MeasurementSecret))
	assert.Equal(t, "bc9cb582a07915ec2e3ed227b2b5594273ee1a23adda549a160049614f1b5a2c", hex.EncodeToString(ident.ClusterID))
	owner, err := crypto.DeriveKey(TestVectorSecret, TestVectorSalt, crypto.OwnerIDKeyID, 32)
	require.NoError(t, err)
	assert.Equal(t, owner, ident.OwnerID)
	_, err = crypto.MasterSecret{Salt: TestVectorSalt}.Identity()
	assert.Error(t, err, "an empty master secret derives nothing")
}

func TestDeriveKeyRejects(t *testing.T) {
	for _, n := range []int{0, 15, 65, -1} {
		_, err := crypto.DeriveKey(TestVectorSecret, TestVectorSalt, "x", n)
		assert.ErrorIs(t, err, crypto.ErrKeyLength, "length %d", n)
	}
	_, err := crypto.DeriveKey(nil, TestVectorSalt, "x", 32)
	assert.Error(t, err)
}

func TestDistinctIDsGiveDistinctKeys(t *testing.T) {
	a, err := crypto.DeriveKey(TestVectorSecret, TestVectorSalt, "a", 32)
	require.NoError(t, err)
	b, err := crypto.DeriveKey(TestVectorSecret, TestVectorSalt, "b", 32)
	require.NoError(t, err)
	assert.NotEqual(t, a, b)
	otherSalt, err := crypto.DeriveKey(TestVectorSecret, seq(1, 32), "a", 32)
	require.NoError(t, err)
	assert.NotEqual(t, a, otherSalt)
}
