package measurements

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPCR15ForCluster(t *testing.T) {
	id := []byte("0123456789abcdef0123456789abcdef")
	ev := sha256.Sum256(id)
	want := sha256.Sum256(append(make([]byte, 32), ev[:]...))
	assert.Equal(t, Digest(want[:]), PCR15ForCluster(id))
	// A fixed vector, so a change to the derivation cannot go unnoticed.
	assert.Equal(t, "e8d4793adfca75a7a2cfd9127840126f4ec7e49dc806dde2bfdb0ee01710eea3", hex.EncodeToString(PCR15ForCluster(id)))
	assert.NotEqual(t, PCR15ForCluster(id), PCR15ForCluster([]byte("other")))
}

func TestWithClusterIDAndFreshNode(t *testing.T) {
	good, err := ParseDigest(oneHex)
	require.NoError(t, err)
	base := M{4: {Expected: good, WarnOnly: true}, 15: {Expected: good, WarnOnly: true}}

	joined, err := base.WithClusterID([]byte("id"))
	require.NoError(t, err)
	assert.Equal(t, PCR15ForCluster([]byte("id")), joined[15].Expected)
	assert.False(t, joined[15].WarnOnly, "PCR 15 is always enforced")
	assert.Equal(t, good, base[15].Expected, "the original is not modified")

	fresh := base.WithFreshNode()
	assert.Equal(t, Zero, fresh[15].Expected)
	assert.False(t, fresh[15].WarnOnly)

	_, err = base.WithClusterID(nil)
	assert.ErrorIs(t, err, ErrNoClusterID)

	clone := base.Clone()
	clone[4].Expected[0] ^= 1
	assert.Equal(t, good, base[4].Expected, "Clone is deep")
}
