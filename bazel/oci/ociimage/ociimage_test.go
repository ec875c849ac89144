package ociimage

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBuildIsReproducibleAndRoundTrips(t *testing.T) {
	spec := Spec{Binary: []byte("#!/bin/true\n"), BinaryPath: "/usr/bin/keyservice", Tag: "constellation/keyservice:test"}
	img, err := Build(spec)
	require.NoError(t, err)
	again, err := Build(spec)
	require.NoError(t, err)
	d1, err := img.Digest()
	require.NoError(t, err)
	d2, err := again.Digest()
	require.NoError(t, err)
	assert.Equal(t, d1, d2, "same inputs, same digest")

	other, err := Build(Spec{Binary: []byte("other"), BinaryPath: spec.BinaryPath, Tag: spec.Tag})
	require.NoError(t, err)
	d3, err := other.Digest()
	require.NoError(t, err)
	assert.NotEqual(t, d1, d3)

	var archive bytes.Buffer
	require.NoError(t, WriteArchive(&archive, spec.Tag, img))
	a1 := archive.Bytes()
	var archive2 bytes.Buffer
	require.NoError(t, WriteArchive(&archive2, spec.Tag, again))
	assert.Equal(t, a1, archive2.Bytes(), "the archive is reproducible too")

	loaded, err := tarball.Image(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(a1)), nil }, nil)
	require.NoError(t, err)
	cfg, err := loaded.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, []string{"/usr/bin/keyservice"}, cfg.Config.Entrypoint)
	assert.Equal(t, "linux", cfg.OS)
	assert.Equal(t, "65532:65532", cfg.Config.User)
	assert.True(t, cfg.Created.Unix() == 0, "no build time")

	layers, err := loaded.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		names = append(names, h.Name)
		if h.Name == "usr/bin/keyservice" {
			assert.Equal(t, int64(0o755), h.Mode)
			content, err := io.ReadAll(tr)
			require.NoError(t, err)
			assert.Equal(t, spec.Binary, content)
		}
	}
	assert.Equal(t, []string{"usr/", "usr/bin/", "usr/bin/keyservice"}, names)
}

func TestBuildRejects(t *testing.T) {
	for name, spec := range map[string]Spec{
		"relative path": {Binary: []byte("x"), BinaryPath: "usr/bin/x"},
		"directory":     {Binary: []byte("x"), BinaryPath: "/usr/bin/"},
		"empty binary":  {BinaryPath: "/usr/bin/x"},
	} {
		_, err := Build(spec)
		assert.Error(t, err, name)
	}
	img, err := Build(Spec{Binary: []byte("x"), BinaryPath: "/x"})
	require.NoError(t, err)
	assert.Error(t, WriteArchive(io.Discard, "Not A Valid Tag!!", img))
}
