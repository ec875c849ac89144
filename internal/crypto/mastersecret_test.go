package crypto_test

import (
	"encoding/base64"
	"fmt"
	"io/fs"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
)

func TestMasterSecretFile(t *testing.T) {
	mem := afero.NewMemMapFs()
	fh := file.NewHandler(mem)
	m := crypto.MasterSecret{Key: TestVectorSecret, Salt: TestVectorSalt}
	require.NoError(t, crypto.WriteMasterSecret(fh, crypto.MasterSecretFileName, m))
	info, err := mem.Stat(crypto.MasterSecretFileName)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o600), info.Mode().Perm())

	got, err := crypto.ReadMasterSecret(fh, crypto.MasterSecretFileName)
	require.NoError(t, err)
	assert.Equal(t, m, got)

	assert.ErrorIs(t, crypto.WriteMasterSecret(fh, crypto.MasterSecretFileName, m), file.ErrExists, "never overwrite a master secret")
}

func TestMasterSecretRejects(t *testing.T) {
	testCases := map[string]struct {
		content string
		want    string
	}{
		"short key":     {content: `{"key":"AAAA","salt":"` + b64(TestVectorSalt) + `"}`, want: `field "key": must be 32 bytes, got 3`},
		"missing salt":  {content: `{"key":"` + b64(TestVectorSecret) + `"}`, want: `field "salt": must be 32 bytes, got 0`},
		"unknown field": {content: `{"key":"` + b64(TestVectorSecret) + `","salt":"` + b64(TestVectorSalt) + `","pepper":"x"}`, want: "pepper"},
		"not base64":    {content: `{"key":"!!","salt":"` + b64(TestVectorSalt) + `"}`, want: "illegal base64"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fh := file.NewHandler(afero.NewMemMapFs())
			require.NoError(t, fh.Write("ms.json", []byte(tc.content)))
			_, err := crypto.ReadMasterSecret(fh, "ms.json")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestMasterSecretNeverPrinted(t *testing.T) {
	m := crypto.MasterSecret{Key: TestVectorSecret, Salt: TestVectorSalt}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(format, m)
		assert.NotContains(t, out, "0 1 2 3", format)
		assert.Equal(t, "MasterSecret{redacted}", out, format)
	}
}

func b64(b []byte) string {
	return base64.StdEncoding.EncodeToString(b)
}

func TestLoadOrCreateMasterSecret(t *testing.T) {
	fh := file.NewHandler(afero.NewMemMapFs())
	created, isNew, err := crypto.LoadOrCreateMasterSecret(fh, "ms.json")
	require.NoError(t, err)
	assert.True(t, isNew)
	require.NoError(t, created.Validate())
	again, isNew, err := crypto.LoadOrCreateMasterSecret(fh, "ms.json")
	require.NoError(t, err)
	assert.False(t, isNew, "an existing secret is read, never replaced")
	assert.Equal(t, created, again)
	other, err := crypto.NewMasterSecret()
	require.NoError(t, err)
	assert.NotEqual(t, created.Key, other.Key)

	require.NoError(t, fh.Write("bad.json", []byte(`{"key":"AA=="}`)))
	_, _, err = crypto.LoadOrCreateMasterSecret(fh, "bad.json")
	assert.Error(t, err, "an invalid file is an error, not replaced")
}
