// Package file reads and writes the CLI's workspace files through afero, so that tests run on memory.
// Every write is atomic: data goes to a temporary file in the same directory, is synced, and is renamed
// over the target. An interrupted write leaves the old file intact.
package file

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/afero"
	"gopkg.in/yaml.v3"
)

// Option changes how a file is written.
type Option uint

const (
	// OptNone writes a new file with mode 0644 and fails if it exists.
	OptNone Option = 0
	// OptOverwrite replaces an existing file.
	OptOverwrite Option = 1 << iota
	// OptMkdirAll creates missing parent directories (0755).
	OptMkdirAll
	// OptSecret writes the file with mode 0600. Use it for anything holding key material.
	OptSecret
)

const (
	modePublic = 0o644
	modeSecret = 0o600
	modeDir    = 0o755
)

// ErrExists is returned when writing to an existing file without OptOverwrite.
var ErrExists = errors.New("file exists")

// Handler reads and writes files on an afero file system.
type Handler struct {
	fs afero.Afero
}

// NewHandler returns a Handler on fs.
func NewHandler(fs afero.Fs) Handler {
	return Handler{fs: afero.Afero{Fs: fs}}
}

// Read returns the content of name.
func (h Handler) Read(name string) ([]byte, error) {
	data, err := h.fs.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return data, nil
}

// Write writes data to name atomically.
func (h Handler) Write(name string, data []byte, opts ...Option) error {
	opt := combine(opts)
	dir := filepath.Dir(name)
	if opt&OptMkdirAll != 0 {
		if err := h.fs.MkdirAll(dir, modeDir); err != nil {
			return fmt.Errorf("creating directory %s: %w", dir, err)
		}
	}
	if opt&OptOverwrite == 0 {
		if _, err := h.fs.Stat(name); err == nil {
			return fmt.Errorf("writing %s: %w (use the overwrite option to replace it)", name, ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checking %s: %w", name, err)
		}
	}
	mode := fs.FileMode(modePublic)
	if opt&OptSecret != 0 {
		mode = modeSecret
	}

	tmpName, err := tempName(name)
	if err != nil {
		return err
	}
	// O_EXCL: never follow or reuse an existing temp file.
	tmp, err := h.fs.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating temporary file for %s: %w", name, err)
	}
	cleanup := func() { _ = h.fs.Remove(tmpName) }
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		cleanup()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		cleanup()
		return fmt.Errorf("syncing %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		cleanup()
		return fmt.Errorf("closing %s: %w", name, err)
	}
	// OpenFile filters the mode through the umask; set it explicitly so the result is exactly the mode asked for.
	if err := h.fs.Chmod(tmpName, mode); err != nil {
		cleanup()
		return fmt.Errorf("setting mode of %s: %w", name, err)
	}
	if err := h.fs.Rename(tmpName, name); err != nil {
		cleanup()
		return fmt.Errorf("renaming into %s: %w", name, err)
	}
	return nil
}

// ReadYAML decodes name into out. Unknown fields are an error.
func (h Handler) ReadYAML(name string, out any) error {
	data, err := h.Read(name)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("decoding %s: %w", name, err)
	}
	return nil
}

// WriteYAML encodes in as YAML with two-space indentation and writes it atomically.
func (h Handler) WriteYAML(name string, in any, opts ...Option) error {
	data, err := EncodeYAML(in)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", name, err)
	}
	return h.Write(name, data, opts...)
}

// ReadJSON decodes name into out. Unknown fields are an error.
func (h Handler) ReadJSON(name string, out any) error {
	data, err := h.Read(name)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("decoding %s: %w", name, err)
	}
	return nil
}

// WriteJSON encodes in as indented JSON and writes it atomically.
func (h Handler) WriteJSON(name string, in any, opts ...Option) error {
	data, err := json.MarshalIndent(in, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", name, err)
	}
	return h.Write(name, append(data, '\n'), opts...)
}

// Exists reports whether name exists.
func (h Handler) Exists(name string) (bool, error) {
	ok, err := h.fs.Exists(name)
	if err != nil {
		return false, fmt.Errorf("checking %s: %w", name, err)
	}
	return ok, nil
}

// Remove deletes name.
func (h Handler) Remove(name string) error {
	if err := h.fs.Remove(name); err != nil {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}

// EncodeYAML encodes in (a value or a *yaml.Node) with two-space indentation.
func EncodeYAML(in any) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(in); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func tempName(name string) (string, error) {
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", fmt.Errorf("creating temporary name for %s: %w", name, err)
	}
	return filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp-"+hex.EncodeToString(suffix[:])), nil
}

func combine(opts []Option) Option {
	var o Option
	for _, opt := range opts {
		o |= opt
	}
	return o
}
