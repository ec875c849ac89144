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

func TestBuildWithFilesUserEnvAndXattrs(t *testing.T) {
	spec := Spec{
		Binary:       []byte("proxy"),
		BinaryPath:   "/usr/local/bin/kube-proxy",
		BinaryXattrs: map[string]string{"security.capability": "\x01\x00\x00\x02"},
		User:         "0:0",
		Env:          []string{"PATH=/usr/sbin:/usr/bin"},
		Files: []File{
			{Path: "/usr/sbin/xtables-nft-multi", Mode: 0o755, Data: []byte("elf")},
			{Path: "/usr/sbin/iptables", Linkname: "xtables-nft-multi"},
			{Path: "/tmp", Dir: true, Mode: 0o1777},
			{Path: "/etc/protocols", Data: []byte("tcp 6")},
			{Path: "/etc/empty", Data: []byte{}},
		},
		Tag: "registry.k8s.io/kube-proxy:v1.33.13",
	}
	img, err := Build(spec)
	require.NoError(t, err)
	again, err := Build(spec)
	require.NoError(t, err)
	d1, err := img.Digest()
	require.NoError(t, err)
	d2, err := again.Digest()
	require.NoError(t, err)
	assert.Equal(t, d1, d2)

	cfg, err := img.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, "0:0", cfg.Config.User)
	assert.Equal(t, []string{"PATH=/usr/sbin:/usr/bin"}, cfg.Config.Env)

	layers, err := img.Layers()
	require.NoError(t, err)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	tr := tar.NewReader(rc)
	got := map[string]*tar.Header{}
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		got[h.Name] = h
		names = append(names, h.Name)
	}
	assert.Equal(t, []string{"etc/", "etc/empty", "etc/protocols", "tmp/", "usr/", "usr/local/", "usr/local/bin/",
		"usr/local/bin/kube-proxy", "usr/sbin/", "usr/sbin/iptables", "usr/sbin/xtables-nft-multi"}, names)
	assert.Equal(t, byte(tar.TypeSymlink), got["usr/sbin/iptables"].Typeflag)
	assert.Equal(t, "xtables-nft-multi", got["usr/sbin/iptables"].Linkname)
	assert.Equal(t, int64(0o1777), got["tmp/"].Mode)
	assert.Equal(t, int64(0o644), got["etc/protocols"].Mode, "default file mode")
	assert.Equal(t, int64(0o755), got["usr/sbin/"].Mode, "implied directories")
	assert.Equal(t, "\x01\x00\x00\x02", got["usr/local/bin/kube-proxy"].PAXRecords["SCHILY.xattr.security.capability"])
	for _, h := range got {
		assert.Equal(t, 0, h.Uid)
		assert.Equal(t, int64(0), h.ModTime.Unix())
	}
}

func TestBuildRejectsBadFiles(t *testing.T) {
	base := Spec{Binary: []byte("x"), BinaryPath: "/usr/bin/x", Tag: "x/y:z"}
	for name, files := range map[string][]File{
		"relative":          {{Path: "etc/x", Data: []byte("a")}},
		"unclean":           {{Path: "/etc/../x", Data: []byte("a")}},
		"duplicate":         {{Path: "/usr/bin/x", Data: []byte("a")}},
		"file as parent":    {{Path: "/etc", Data: []byte("a")}, {Path: "/etc/x", Data: []byte("b")}},
		"link and data":     {{Path: "/etc/x", Data: []byte("a"), Linkname: "y"}},
		"root is not entry": {{Path: "/", Dir: true}},
	} {
		spec := base
		spec.Files = files
		_, err := Build(spec)
		assert.Error(t, err, name)
	}
}
