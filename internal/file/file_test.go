package file

import (
	"errors"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type sample struct {
	Name  string `yaml:"name" json:"name"`
	Count int    `yaml:"count" json:"count"`
}

func TestWrite(t *testing.T) {
	testCases := map[string]struct {
		existing []byte
		name     string
		opts     []Option
		wantMode fs.FileMode
		wantErr  error
	}{
		"new file":                  {name: "a.txt", wantMode: 0o644},
		"secret":                    {name: "a.txt", opts: []Option{OptSecret}, wantMode: 0o600},
		"exists without overwrite":  {name: "a.txt", existing: []byte("old"), wantErr: ErrExists},
		"exists with overwrite":     {name: "a.txt", existing: []byte("old"), opts: []Option{OptOverwrite}, wantMode: 0o644},
		"secret overwrite":          {name: "a.txt", existing: []byte("old"), opts: []Option{OptOverwrite, OptSecret}, wantMode: 0o600},
		"missing dir":               {name: "d/e/a.txt", wantErr: fs.ErrNotExist},
		"missing dir with mkdirall": {name: "d/e/a.txt", opts: []Option{OptMkdirAll}, wantMode: 0o644},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			// A real directory: MemMapFs neither checks parent directories nor applies modes like a kernel.
			mem := afero.NewBasePathFs(afero.NewOsFs(), t.TempDir())
			h := NewHandler(mem)
			if tc.existing != nil {
				require.NoError(t, afero.WriteFile(mem, tc.name, tc.existing, 0o644))
			}
			err := h.Write(tc.name, []byte("new"), tc.opts...)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				if tc.existing != nil {
					got, err := h.Read(tc.name)
					require.NoError(t, err)
					assert.Equal(t, tc.existing, got, "a refused write must leave the old file")
				}
				assertNoTempFiles(t, mem)
				return
			}
			require.NoError(t, err)
			got, err := h.Read(tc.name)
			require.NoError(t, err)
			assert.Equal(t, []byte("new"), got)
			info, err := mem.Stat(tc.name)
			require.NoError(t, err)
			assert.Equal(t, tc.wantMode, info.Mode().Perm())
			assertNoTempFiles(t, mem)
		})
	}
}

// renameFailFs fails every rename, as a crash between writing and renaming would.
type renameFailFs struct{ afero.Fs }

func (renameFailFs) Rename(string, string) error { return errors.New("injected rename failure") }

func TestWriteInterruptedKeepsOldContent(t *testing.T) {
	mem := afero.NewBasePathFs(afero.NewOsFs(), t.TempDir())
	require.NoError(t, afero.WriteFile(mem, "state.yaml", []byte("old"), 0o644))
	h := NewHandler(renameFailFs{mem})
	err := h.Write("state.yaml", []byte("new"), OptOverwrite)
	require.ErrorContains(t, err, "injected rename failure")
	got, err := afero.ReadFile(mem, "state.yaml")
	require.NoError(t, err)
	assert.Equal(t, "old", string(got))
	assertNoTempFiles(t, mem)
}

func TestYAMLRoundTripAndStrictness(t *testing.T) {
	h := NewHandler(afero.NewMemMapFs())
	require.NoError(t, h.WriteYAML("s.yaml", sample{Name: "x", Count: 2}))
	var got sample
	require.NoError(t, h.ReadYAML("s.yaml", &got))
	assert.Equal(t, sample{Name: "x", Count: 2}, got)

	require.NoError(t, h.Write("bad.yaml", []byte("name: x\ncuont: 2\n")))
	err := h.ReadYAML("bad.yaml", &got)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cuont")
	assert.Contains(t, err.Error(), "bad.yaml")
}

func TestJSONRoundTripAndStrictness(t *testing.T) {
	h := NewHandler(afero.NewMemMapFs())
	require.NoError(t, h.WriteJSON("s.json", sample{Name: "x", Count: 2}, OptSecret))
	var got sample
	require.NoError(t, h.ReadJSON("s.json", &got))
	assert.Equal(t, sample{Name: "x", Count: 2}, got)

	require.NoError(t, h.Write("bad.json", []byte(`{"name":"x","cuont":2}`)))
	err := h.ReadJSON("bad.json", &got)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cuont")
}

func TestExistsAndRemove(t *testing.T) {
	h := NewHandler(afero.NewMemMapFs())
	ok, err := h.Exists("x")
	require.NoError(t, err)
	assert.False(t, ok)
	require.NoError(t, h.Write("x", nil))
	ok, err = h.Exists("x")
	require.NoError(t, err)
	assert.True(t, ok)
	require.NoError(t, h.Remove("x"))
	assert.ErrorIs(t, h.Remove("x"), fs.ErrNotExist)
	_, err = h.Read("x")
	assert.ErrorIs(t, err, fs.ErrNotExist)
}

func assertNoTempFiles(t *testing.T, mem afero.Fs) {
	t.Helper()
	require.NoError(t, afero.Walk(mem, "/", func(path string, info fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		assert.NotContains(t, filepath.Base(path), ".tmp-", "temporary file left behind: %s", path)
		return nil
	}))
}
