package ociimage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/components/containerdtest"
)

// TestContainerdImportsImage imports an image into a real, private containerd, as nodes will import the
// service images (there is no registry).
func TestContainerdImportsImage(t *testing.T) {
	c := containerdtest.Start(t)

	self, err := os.Executable()
	require.NoError(t, err)
	binary, err := os.ReadFile(self)
	require.NoError(t, err)
	img, err := Build(Spec{Binary: binary, BinaryPath: "/usr/bin/ociimage-test", Tag: "constellation/ociimage-test:v1"})
	require.NoError(t, err)
	archive := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(archive)
	require.NoError(t, err)
	require.NoError(t, WriteArchive(f, "constellation/ociimage-test:v1", img))
	require.NoError(t, f.Close())

	out, err := c.Run("images", "import", archive)
	require.NoError(t, err, out)
	out, err = c.Run("images", "ls", "-q")
	require.NoError(t, err, out)
	assert.Contains(t, strings.Fields(out), "docker.io/constellation/ociimage-test:v1")
	out, err = c.Run("images", "check")
	require.NoError(t, err, out)
	assert.Contains(t, out, "complete", "all content of the image is present")
}
