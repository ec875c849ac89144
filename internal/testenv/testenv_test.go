package testenv

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is a testing.TB that records whether the gate skipped or failed instead of stopping the test.
type recorder struct {
	testing.TB
	skipped, failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Skip(...any)           { r.skipped = true }
func (r *recorder) Skipf(string, ...any)  { r.skipped = true }
func (r *recorder) Fatal(...any)          { r.failed = true }
func (r *recorder) Fatalf(string, ...any) { r.failed = true }

func TestGates(t *testing.T) {
	tests := map[string]struct {
		env          map[string]string
		gate         func(tb testing.TB)
		skip, fail   bool
		strictResult bool
	}{
		"missing tool, lenient":   {gate: func(tb testing.TB) { Need(tb, "nothing", "no-such-tool-x") }, skip: true},
		"missing tool, CI":        {env: map[string]string{"CI": "true"}, gate: func(tb testing.TB) { Need(tb, "nothing", "no-such-tool-x") }, fail: true, strictResult: true},
		"missing tool, strict":    {env: map[string]string{StrictEnv: "1"}, gate: func(tb testing.TB) { Need(tb, "nothing", "/no/such/file") }, fail: true, strictResult: true},
		"missing tool, bazel+CI":  {env: map[string]string{"CI": "true", "TEST_SRCDIR": "/x"}, gate: func(tb testing.TB) { Need(tb, "nothing", "no-such-tool-x") }, skip: true},
		"present tool, strict":    {env: map[string]string{StrictEnv: "1"}, gate: func(tb testing.TB) { Need(tb, "nothing", "no-such-tool-x", "/") }, strictResult: true},
		"root under bazel":        {env: map[string]string{"TEST_SRCDIR": "/x", "CI": "true"}, gate: NeedRoot, skip: true},
		"no image, strict":        {env: map[string]string{StrictEnv: "1"}, gate: func(tb testing.TB) { ImageDir(tb) }, skip: true, strictResult: true},
		"image dir without image": {env: map[string]string{ImageDirEnv: os.TempDir()}, gate: func(tb testing.TB) { ImageDir(tb) }, fail: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for _, k := range []string{"CI", StrictEnv, "TEST_SRCDIR", "BAZEL_TEST", ImageDirEnv} {
				t.Setenv(k, tc.env[k])
			}
			r := &recorder{TB: t}
			tc.gate(r)
			assert.Equal(t, tc.skip, r.skipped, "skipped")
			assert.Equal(t, tc.fail, r.failed, "failed")
			assert.Equal(t, tc.strictResult, Strict(), "strict")
		})
	}
}

func TestImageDir(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "root.erofs"), nil, 0o644))
	t.Setenv(ImageDirEnv, dir)
	assert.Equal(t, dir, ImageDir(t))
}
