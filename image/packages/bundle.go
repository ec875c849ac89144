package packages

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	fileio "github.com/constellation-go/constellation/internal/file"
)

// A bundle holds every package one build installed, so that the build can be repeated without Debian's
// archive. It is a directory, or an uncompressed tar of the same content:
//
//	packages.lock        the build's lock (what went in)
//	debs/<file>.deb      each package of the lock, named as Entry.DebFileName; a file used in two scopes
//	                     (image and initrd) is there once
//
// Opening a bundle verifies every file against the lock's sha256 and refuses anything else in it.
const (
	BundleLock = "packages.lock"
	BundleDebs = "debs"
)

// ErrBundle marks a bundle that is incomplete, has files the lock does not list, or files whose sha256
// differs from the lock.
var ErrBundle = errors.New("invalid package bundle")

// SaveBundle writes the packages of l, found in dirs, as a bundle at out: a tar if out ends in ".tar",
// else a directory. In a directory the files are hard links where possible (the caches and the bundle
// share one file system), copies otherwise. Every file is hashed against the lock first. out is replaced
// atomically.
func SaveBundle(l Lock, dirs []string, out string) error {
	files, err := bundleFiles(l, dirs)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if strings.HasSuffix(out, ".tar") {
		err = writeTar(l, files, tmp)
	} else {
		err = writeDir(l, files, tmp)
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// bundleFiles maps each distinct .deb file name of the lock to a verified file in dirs.
func bundleFiles(l Lock, dirs []string) (map[string]string, error) {
	files := map[string]string{}
	sums := map[string]string{}
	var missing []string
	for _, e := range l {
		name := e.DebFileName()
		if prev, ok := sums[name]; ok {
			if prev != e.SHA256 {
				return nil, fmt.Errorf("%w: %s is listed twice with different sha256", ErrBundle, name)
			}
			continue
		}
		path := FindDeb(e, dirs)
		if path == "" {
			missing = append(missing, name)
			continue
		}
		sum, err := fileio.SHA256(path)
		if err != nil {
			return nil, err
		}
		if sum != e.SHA256 {
			return nil, fmt.Errorf("%w: %s has sha256 %s, the lock says %s", ErrBundle, path, sum, e.SHA256)
		}
		files[name], sums[name] = path, sum
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %d package file(s) are no longer cached (%s, ...); rebuild the image with --no-cache to fetch them again",
			ErrMissingDeb, len(missing), missing[0])
	}
	return files, nil
}

func writeDir(l Lock, files map[string]string, dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, BundleDebs), 0o755); err != nil {
		return err
	}
	for name, src := range files {
		dst := filepath.Join(dir, BundleDebs, name)
		if err := os.Link(src, dst); err != nil {
			if err := copyFile(src, dst); err != nil {
				return err
			}
		}
	}
	return writeLockFile(l, filepath.Join(dir, BundleLock))
}

func writeLockFile(l Lock, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := l.Write(f, "The packages of one node image build: <scope> <name> <version> <arch> <sha256 of the .deb>."); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// writeTar writes a reproducible tar: sorted names, fixed owner, mode and time.
func writeTar(l Lock, files map[string]string, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	var lock strings.Builder
	if err := l.Write(&lock, "The packages of one node image build: <scope> <name> <version> <arch> <sha256 of the .deb>."); err != nil {
		return err
	}
	hdr := func(name string, size int64, mode int64, typ byte) *tar.Header {
		return &tar.Header{Name: name, Size: size, Mode: mode, Typeflag: typ, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
	}
	if err := tw.WriteHeader(hdr(BundleLock, int64(lock.Len()), 0o644, tar.TypeReg)); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, lock.String()); err != nil {
		return err
	}
	if err := tw.WriteHeader(hdr(BundleDebs+"/", 0, 0o755, tar.TypeDir)); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := appendFile(tw, files[n], hdr(BundleDebs+"/"+n, 0, 0o644, tar.TypeReg)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Sync()
}

func appendFile(tw *tar.Writer, src string, h *tar.Header) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	h.Size = fi.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err = io.Copy(tw, in)
	return err
}

// OpenBundle verifies the bundle at path (a directory or a .tar) and returns its lock and the directory
// holding its .deb files. A tar is unpacked into work first (only packages.lock and debs/<file>.deb;
// anything else is refused).
func OpenBundle(path, work string) (Lock, string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, "", fmt.Errorf("package bundle: %w", err)
	}
	dir := path
	if !fi.IsDir() {
		dir = filepath.Join(work, "bundle")
		if err := untar(path, dir); err != nil {
			return nil, "", fmt.Errorf("%w: %s: %w", ErrBundle, path, err)
		}
	}
	l, err := ReadLock(filepath.Join(dir, BundleLock))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrBundle, err)
	}
	if len(l) == 0 {
		return nil, "", fmt.Errorf("%w: %s lists no packages", ErrBundle, BundleLock)
	}
	debs := filepath.Join(dir, BundleDebs)
	want := map[string]string{}
	for _, e := range l {
		want[e.DebFileName()] = e.SHA256
	}
	entries, err := os.ReadDir(debs)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrBundle, err)
	}
	var extra []string
	have := map[string]bool{}
	for _, de := range entries {
		sum, listed := want[de.Name()]
		if !listed || !de.Type().IsRegular() {
			extra = append(extra, de.Name())
			continue
		}
		got, err := fileio.SHA256(filepath.Join(debs, de.Name()))
		if err != nil {
			return nil, "", err
		}
		if got != sum {
			return nil, "", fmt.Errorf("%w: %s has sha256 %s, its lock says %s", ErrBundle, de.Name(), got, sum)
		}
		have[de.Name()] = true
	}
	if len(extra) > 0 {
		return nil, "", fmt.Errorf("%w: %s holds files its lock does not list: %s", ErrBundle, debs, strings.Join(extra, ", "))
	}
	var missing []string
	for name := range want {
		if !have[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, "", fmt.Errorf("%w: %d package(s) of its lock are missing: %s", ErrBundle, len(missing), strings.Join(missing, ", "))
	}
	return l, debs, nil
}

func untar(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.MkdirAll(filepath.Join(dir, BundleDebs), 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case h.Typeflag == tar.TypeDir && strings.TrimSuffix(name, "/") == BundleDebs:
			continue
		case h.Typeflag != tar.TypeReg:
			return fmt.Errorf("entry %q is not a regular file", h.Name)
		case name == BundleLock:
		case strings.HasPrefix(name, BundleDebs+"/"):
			base := strings.TrimPrefix(name, BundleDebs+"/")
			if base == "" || strings.Contains(base, "/") || base == "." || base == ".." || !strings.HasSuffix(base, ".deb") {
				return fmt.Errorf("unexpected entry %q", h.Name)
			}
		default:
			return fmt.Errorf("unexpected entry %q", h.Name)
		}
		out, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(name)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, tr); err != nil {
			_ = out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
	}
}
