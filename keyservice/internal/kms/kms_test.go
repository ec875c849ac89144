package kms

import (
	"context"
	"encoding/hex"
	"errors"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
)

func TestClusterKMS(t *testing.T) {
	k, err := New(context.Background(), "kms://cluster-kms", cryptotest.MasterSecret())
	require.NoError(t, err)
	// The vector of internal/crypto (computed independently).
	key, wrapped, err := k.DataKey(context.Background(), "00000000-0000-0000-0000-000000000001", 32)
	require.NoError(t, err)
	assert.Nil(t, wrapped)
	assert.Equal(t, "52b5a48496958261b02efae7c81515ce773b479c56d6e5cb625bf7f7710d2684", hex.EncodeToString(key))
	_, _, err = k.DataKey(context.Background(), "x", 65)
	assert.ErrorIs(t, err, crypto.ErrKeyLength)
}

type fixedKMS struct{}

func (fixedKMS) DataKey(context.Context, string, int) ([]byte, []byte, error) {
	return []byte("external"), []byte("wrapped"), nil
}

func TestNew(t *testing.T) {
	require.NoError(t, Register("test-external", func(_ context.Context, u *url.URL) (KMS, error) {
		if u.Query().Get("key") == "" {
			return nil, errors.New("key parameter missing")
		}
		return fixedKMS{}, nil
	}))
	assert.Error(t, Register("test-external", nil), "duplicate")
	assert.Error(t, Register(ClusterKMS, nil), "reserved")

	testCases := map[string]struct {
		uri     string
		master  *crypto.MasterSecret
		wantErr string
	}{
		"cluster":                                {uri: "kms://cluster-kms", master: cryptotest.MasterSecret()},
		"cluster trailing /":                     {uri: "kms://cluster-kms/", master: cryptotest.MasterSecret()},
		"user-managed":                           {uri: "kms://test-external?key=projects/p/keys/k", master: cryptotest.MasterSecret()},
		"user-managed refuses":                   {uri: "kms://test-external", master: cryptotest.MasterSecret(), wantErr: "key parameter missing"},
		"user-managed without the master secret": {uri: "kms://test-external?key=k", wantErr: "the cluster's identity comes from it"},
		"no master secret":                       {uri: "kms://cluster-kms", wantErr: "needs the master secret"},
		"bad master secret":                      {uri: "kms://cluster-kms", master: &crypto.MasterSecret{Key: []byte{1}}, wantErr: `field "key"`},
		"cluster parameters":                     {uri: "kms://cluster-kms?salt=x", master: cryptotest.MasterSecret(), wantErr: "takes no parameters"},
		"unknown backend":                        {uri: "kms://vault", master: cryptotest.MasterSecret(), wantErr: "known backends are cluster-kms, test-external"},
		"wrong scheme":                           {uri: "https://cluster-kms", wantErr: "expected a URI like kms://cluster-kms"},
		"not a URI":                              {uri: "cluster-kms", wantErr: "expected a URI"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			k, err := New(context.Background(), tc.uri, tc.master)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.NotNil(t, k)
		})
	}

	// User-managed: the disks' keys from the backend, the measurement secret (the cluster's identity) from
	// the master secret, as the first control plane derived it at init.
	k, err := New(context.Background(), "kms://test-external?key=k", cryptotest.MasterSecret())
	require.NoError(t, err)
	disk, wrapped, err := k.DataKey(context.Background(), "00000000-0000-0000-0000-000000000001", 64)
	require.NoError(t, err)
	assert.Equal(t, "external", string(disk))
	assert.Equal(t, "wrapped", string(wrapped))
	secret, wrapped, err := k.DataKey(context.Background(), crypto.MeasurementSecretID, 32)
	require.NoError(t, err)
	assert.Nil(t, wrapped, "the cluster's identity is derived, never wrapped")
	id, err := cryptotest.MasterSecret().Identity()
	require.NoError(t, err)
	assert.Equal(t, id.MeasurementSecret, secret)
	_, err = New(context.Background(), "kms://vault", cryptotest.MasterSecret())
	assert.ErrorIs(t, err, ErrUnknownBackend)
}
