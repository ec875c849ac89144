// Package packages records, compares and bundles the Debian packages a node image is built from.
//
// A lock lists every package of the image, its initrd and the tools tree that built them, one per line:
//
//	<scope> <name> <version> <architecture> <sha256 of the .deb>
//
// image/mkosi/packages.lock is the committed lock of a release; every build writes the lock of what it
// actually installed next to its outputs. Debian's archive serves only the newest version of each package,
// so the two drift apart after every point release. A normal build reports the drift (Check) and goes on;
// a --locked build refuses it. A bundle (bundle.go) keeps the .deb files of one build, so that the same
// image can be rebuilt from them alone after the archive moved.
package packages

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	fileio "github.com/constellation-go/constellation/internal/file"
)

// Scopes of a lock: where a package was installed.
const (
	ScopeImage  = "image"
	ScopeInitrd = "initrd"
	ScopeTools  = "tools"
)

var scopes = []string{ScopeImage, ScopeInitrd, ScopeTools}

// Entry is one installed package.
type Entry struct {
	Scope   string
	Name    string
	Version string
	Arch    string
	// SHA256 is the hex sha256 of the .deb file the package was installed from.
	SHA256 string
}

func (e Entry) String() string {
	return strings.Join([]string{e.Scope, e.Name, e.Version, e.Arch, e.SHA256}, " ")
}

// key identifies a package within a lock; a scope holds one version of each package.
func (e Entry) key() string { return e.Scope + " " + e.Name }

// DebFileName is the name apt and debootstrap give the package's file: "<name>_<version>_<arch>.deb", with
// the epoch's ":" written as "%3a".
func (e Entry) DebFileName() string {
	return e.Name + "_" + strings.ReplaceAll(e.Version, ":", "%3a") + "_" + e.Arch + ".deb"
}

// Lock is a sorted list of entries.
type Lock []Entry

// ErrMalformed marks a lock that cannot be parsed.
var ErrMalformed = errors.New("malformed package lock")

// ParseLock reads a lock; "#" starts a comment line.
func ParseLock(r io.Reader) (Lock, error) {
	var l Lock
	seen := map[string]int{}
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 5 {
			return nil, fmt.Errorf("%w: line %d: want \"<scope> <name> <version> <arch> <sha256>\", got %q", ErrMalformed, n, line)
		}
		e := Entry{Scope: f[0], Name: f[1], Version: f[2], Arch: f[3], SHA256: f[4]}
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrMalformed, n, err)
		}
		if prev, dup := seen[e.key()]; dup {
			return nil, fmt.Errorf("%w: line %d: %s %s is already listed on line %d", ErrMalformed, n, e.Scope, e.Name, prev)
		}
		seen[e.key()] = n
		l = append(l, e)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	l.sort()
	return l, nil
}

// ReadLock reads a lock file.
func ReadLock(path string) (Lock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := ParseLock(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

func (e Entry) validate() error {
	if !slices.Contains(scopes, e.Scope) {
		return fmt.Errorf("unknown scope %q (want one of %s)", e.Scope, strings.Join(scopes, ", "))
	}
	// Names and versions end up in file names: only Debian's own characters are allowed, never a "/".
	for what, v := range map[string]string{"name": e.Name, "version": e.Version, "architecture": e.Arch} {
		if v == "" || strings.ContainsAny(v, "/\\ \t") || v == "." || v == ".." {
			return fmt.Errorf("invalid package %s %q", what, v)
		}
	}
	if b, err := hex.DecodeString(e.SHA256); err != nil || len(b) != 32 || strings.ToLower(e.SHA256) != e.SHA256 {
		return fmt.Errorf("%s: sha256 %q is not 64 lower-case hex digits", e.Name, e.SHA256)
	}
	return nil
}

func (l Lock) sort() {
	slices.SortFunc(l, func(a, b Entry) int {
		if c := strings.Compare(a.Scope, b.Scope); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// Write writes the lock, with header lines as comments.
func (l Lock) Write(w io.Writer, header ...string) error {
	var b bytes.Buffer
	for _, h := range header {
		b.WriteString("# " + h + "\n")
	}
	for _, e := range l {
		b.WriteString(e.String() + "\n")
	}
	_, err := w.Write(b.Bytes())
	return err
}

// Scope returns the entries of the given scopes.
func (l Lock) Scope(scope ...string) Lock {
	var out Lock
	for _, e := range l {
		if slices.Contains(scope, e.Scope) {
			out = append(out, e)
		}
	}
	return out
}

// Installed is a package a build installed, before its .deb is known.
type Installed struct{ Name, Version, Arch string }

// FromManifest reads the packages of one of mkosi's JSON manifests (ManifestFormat=json).
func FromManifest(data []byte) ([]Installed, error) {
	var m struct {
		Packages []struct {
			Type         string `json:"type"`
			Name         string `json:"name"`
			Version      string `json:"version"`
			Architecture string `json:"architecture"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("reading the mkosi manifest: %w", err)
	}
	if len(m.Packages) == 0 {
		return nil, errors.New("the mkosi manifest lists no packages")
	}
	out := make([]Installed, 0, len(m.Packages))
	for _, p := range m.Packages {
		if p.Type != "deb" {
			return nil, fmt.Errorf("the mkosi manifest lists a %q package (%s), want deb", p.Type, p.Name)
		}
		out = append(out, Installed{Name: p.Name, Version: p.Version, Arch: p.Architecture})
	}
	return out, nil
}

// FromDpkgStatus reads the installed packages of a dpkg status file (var/lib/dpkg/status).
func FromDpkgStatus(data []byte) ([]Installed, error) {
	var out []Installed
	for _, stanza := range strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if line == "" || line[0] == ' ' || line[0] == '\t' {
				continue // continuation lines (descriptions, conffiles)
			}
			k, v, ok := strings.Cut(line, ":")
			if ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		if fields["Package"] == "" || fields["Status"] != "install ok installed" {
			continue
		}
		out = append(out, Installed{Name: fields["Package"], Version: fields["Version"], Arch: fields["Architecture"]})
	}
	if len(out) == 0 {
		return nil, errors.New("the dpkg status file lists no installed packages")
	}
	return out, nil
}

// ErrMissingDeb marks an installed package whose .deb is in none of the package directories.
var ErrMissingDeb = errors.New("package file not found")

// Record turns installed packages into lock entries, hashing each package's .deb, which it looks for in
// dirs in order. It also returns where each file is, by the entry's key.
func Record(scope string, installed []Installed, dirs []string) (Lock, map[string]string, error) {
	var l Lock
	files := map[string]string{}
	var missing []string
	for _, p := range installed {
		e := Entry{Scope: scope, Name: p.Name, Version: p.Version, Arch: p.Arch}
		path := FindDeb(e, dirs)
		if path == "" {
			missing = append(missing, e.DebFileName())
			continue
		}
		sum, err := fileio.SHA256(path)
		if err != nil {
			return nil, nil, err
		}
		e.SHA256 = sum
		if err := e.validate(); err != nil {
			return nil, nil, err
		}
		l = append(l, e)
		files[e.key()] = path
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("%w: %s in none of %s", ErrMissingDeb, strings.Join(missing, ", "), strings.Join(dirs, ", "))
	}
	l.sort()
	return l, files, nil
}

// FindDeb returns the first dirs/<DebFileName> that exists, or "".
func FindDeb(e Entry, dirs []string) string {
	for _, d := range dirs {
		p := filepath.Join(d, e.DebFileName())
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}
