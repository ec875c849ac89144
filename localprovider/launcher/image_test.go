package launcher

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/measurements/precompute"
)

// TestRealImage launches the node image that image/mkosi/build.sh built (set CONSTELLATION_IMAGE_DIR to
// its directory; a relative path is taken from the repository root, e.g. out/image) on a fresh swtpm: the vTPM must end up with exactly the precomputed
// values, the event log must replay and validate, and, where the test may mount, the verified root must
// be the image's erofs.
func TestRealImage(t *testing.T) {
	dir := os.Getenv("CONSTELLATION_IMAGE_DIR")
	if dir == "" {
		t.Skip("set CONSTELLATION_IMAGE_DIR to an image directory built by image/mkosi/build.sh")
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join("..", "..", dir) // go test runs in the package directory
	}
	tp := newTPM(t)
	cfg := Config{ImageDir: dir, TPM: tp, EventLog: filepath.Join(t.TempDir(), "binary_bios_measurements")}
	want := predict(t, filepath.Join(dir, UKIFile))

	b, err := Launch(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	root := b.Root()
	fi, err := os.Stat(filepath.Join(dir, RootFile))
	require.NoError(t, err)
	assert.LessOrEqual(t, root.DataSize, fi.Size())
	assert.LessOrEqual(t, root.FSSize, root.DataSize)
	t.Logf("root: %d verified bytes of %d, erofs %d bytes, root hash %x", root.DataSize, fi.Size(), root.FSSize, root.RootHash)

	require.NoError(t, b.CompleteBoot())
	assert.Equal(t, withZeros(want.PCRs(true)), readPCRs(t, tp))
	assertReplays(t, cfg.EventLog, want.PCRs(true))
	_, err = attest(t, tp, cfg.EventLog, referenceValues(want))
	require.NoError(t, err)

	if os.Geteuid() != 0 {
		return
	}
	if _, err := os.Stat(loopControl); err != nil {
		return
	}
	m := mount(t, b)
	osrel, err := os.ReadFile(filepath.Join(m.Target, "usr/lib/os-release"))
	require.NoError(t, err)
	data, err := os.ReadFile(filepath.Join(dir, UKIFile))
	require.NoError(t, err)
	u, err := precompute.ParseUKI(data)
	require.NoError(t, err)
	assert.Equal(t, string(u.OSRel), string(osrel), "the mounted root is the image the UKI describes")
	require.NoError(t, m.Unmount())
	resolved, err := filepath.EvalSymlinks(dir)
	require.NoError(t, err)
	requireNoLoops(t, resolved)
}
