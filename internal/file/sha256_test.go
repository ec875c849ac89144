package file

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSHA256(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(p, []byte("abc"), 0o600))
	sum, err := SHA256(p)
	require.NoError(t, err)
	// FIPS 180-2's test vector for "abc".
	assert.Equal(t, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sum)

	_, err = SHA256(filepath.Join(t.TempDir(), "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	// The same through a Handler, on the file system it was given.
	mem := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(mem, "/f", []byte("abc"), 0o600))
	sum, err = NewHandler(mem).SHA256("/f")
	require.NoError(t, err)
	assert.Equal(t, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sum)
}
