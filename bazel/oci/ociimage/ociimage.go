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
	"sort"
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
	// BinaryXattrs are extended attributes of the binary, e.g. "security.capability" for file capabilities
	// (containerd applies them when it unpacks the layer).
	BinaryXattrs map[string]string
	// Entrypoint defaults to [BinaryPath].
	Entrypoint []string
	// Env defaults to a PATH of /usr/local/bin, /usr/bin and /bin.
	Env []string
	// User defaults to "65532:65532" (unprivileged); "0:0" runs as root unless a manifest says otherwise.
	User string
	// Files are more entries of the image's single layer (e.g. the shared libraries a tool needs). Missing
	// parent directories are added with mode 0755.
	Files []File
	// Tag is the image reference written into the archive, e.g. "constellation/keyservice:v0.1.0".
	Tag string
}

// File is an entry of the image's layer: a regular file (Data), a symbolic link (Linkname) or a directory
// (Dir). Owner is always root; times are always the epoch.
type File struct {
	// Path is absolute.
	Path string
	// Mode holds the permission bits (including setuid, setgid, sticky); 0 means 0644 for files, 0755 for
	// directories. Ignored for links.
	Mode     int64
	Data     []byte
	Linkname string
	Dir      bool
}

// defaultUser is the user of an image whose Spec does not name one.
const defaultUser = "65532:65532"

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
	files := append([]File{{Path: spec.BinaryPath, Mode: 0o755, Data: spec.Binary}}, spec.Files...)
	layerTar, err := layer(files, map[string]map[string]string{spec.BinaryPath: spec.BinaryXattrs})
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
	cfg.Config.Env = spec.Env
	if len(cfg.Config.Env) == 0 {
		cfg.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	}
	// Services run unprivileged unless the spec or a manifest says otherwise.
	cfg.Config.User = spec.User
	if cfg.Config.User == "" {
		cfg.Config.User = defaultUser
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("setting image config: %w", err)
	}
	return mutate.CreatedAt(img, v1.Time{Time: epoch})
}

// layer is a tar of files and their parent directories, sorted by path (parents first), owner root, times
// the epoch. xattrs holds extended attributes by path.
func layer(files []File, xattrs map[string]map[string]string) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file path %q must be a clean absolute path", f.Path)
		}
		if _, dup := entries[f.Path]; dup {
			return nil, fmt.Errorf("file %q is in the image twice", f.Path)
		}
		kinds := 0
		for _, set := range []bool{f.Dir, f.Linkname != "", f.Data != nil} {
			if set {
				kinds++
			}
		}
		if kinds > 1 {
			return nil, fmt.Errorf("file %q must be one of a directory, a link or a regular file", f.Path)
		}
		entries[f.Path] = f
	}
	for p := range entries {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			e, ok := entries[d]
			if !ok {
				entries[d] = File{Path: d, Dir: true}
			} else if !e.Dir {
				return nil, fmt.Errorf("%q is a parent directory of %q but not a directory in the image", d, p)
			}
		}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	// A parent is a prefix of its children, so it sorts before them.
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := entries[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: f.Mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case f.Dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		case f.Linkname != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Linkname, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		if x := xattrs[p]; len(x) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range x {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
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
