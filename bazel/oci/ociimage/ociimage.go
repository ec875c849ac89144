// Package ociimage builds single-binary container images without a registry or a container engine. The
// image is a function of its inputs alone (fixed timestamps, sorted entries), so two builds of the same
// binary give the same digest.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Spec describes an image.
type Spec struct {
	// Binary is the executable's content; it is installed at BinaryPath.
	Binary     []byte
	BinaryPath string
	// Entrypoint defaults to [BinaryPath].
	Entrypoint []string
	// Tag is the image reference written into the archive, e.g. "constellation/keyservice:v0.1.0".
	Tag string
}

// epoch is the time of every file and of the image itself: reproducible builds have no build time.
var epoch = time.Unix(0, 0).UTC()

// Build returns the image described by spec.
func Build(spec Spec) (v1.Image, error) {
	if !path.IsAbs(spec.BinaryPath) || strings.HasSuffix(spec.BinaryPath, "/") {
		return nil, fmt.Errorf("binary path %q must be an absolute file path", spec.BinaryPath)
	}
	if len(spec.Binary) == 0 {
		return nil, fmt.Errorf("binary is empty")
	}
	layerTar, err := layer(spec.BinaryPath, spec.Binary)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("creating layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, fmt.Errorf("adding layer: %w", err)
	}
	entrypoint := spec.Entrypoint
	if len(entrypoint) == 0 {
		entrypoint = []string{spec.BinaryPath}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	// Services run unprivileged unless a manifest says otherwise.
	cfg.Config.User = "65532:65532"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("setting image config: %w", err)
	}
	return mutate.CreatedAt(img, v1.Time{Time: epoch})
}

// layer is a tar with the binary's parent directories and the binary (mode 0755, owner root).
func layer(binaryPath string, binary []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var dirs []string
	for d := path.Dir(binaryPath); d != "/"; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX,
		}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg, Name: strings.TrimPrefix(binaryPath, "/"), Mode: 0o755, Size: int64(len(binary)), ModTime: epoch, Format: tar.FormatPAX,
	}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(binary); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteArchive writes img as a docker-archive tarball (what `ctr images import` and `docker load` read).
func WriteArchive(w io.Writer, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag, name.WeakValidation)
	if err != nil {
		return fmt.Errorf("image tag %q: %w", tag, err)
	}
	return tarball.Write(ref, img, w)
}
