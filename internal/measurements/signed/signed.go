// Package signed defines measurements.json, the reference values published with a node image, and how it
// travels with its cosign signature, measurements.json.sig.
//
//	{
//	  "version": "v2",
//	  "image": "sha256:<hex of the UKI>",
//	  "variant": "qemu-vtpm",
//	  "issued": "2026-12-04T18:00:00Z",
//	  "measurements": {
//	    "4": {"expected": "<64 hex digits>", "warnOnly": false},
//	    ...
//	  }
//	}
//
// The signature covers the exact bytes of the file, so encoding is deterministic (PCRs in ascending order,
// fixed indentation) and decoding is strict: unknown or repeated fields, non-canonical PCR indices and
// trailing data are rejected, so that no two readers can see different measurements in one signed file.
//
// Version v2 adds the issue time, which lets a reader refuse a validly signed but older file than the one
// it holds (a rollback to measurements that were since revoked). v1 files, which have none, still parse,
// with a zero issue time: older than any v2 file.
package signed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/measurements"
)

const (
	// FileName is the conventional name of the measurements file.
	FileName = "measurements.json"
	// SignatureSuffix is appended to the measurements file's name or URL to get its signature's.
	SignatureSuffix = ".sig"
	// Version1 is the first format version, without an issue time.
	Version1 = "v1"
	// Version2 is the current format version: Version1 plus the issue time.
	Version2 = "v2"
	// MaxFileSize bounds what a reader accepts; a real file is about 1 KiB.
	MaxFileSize = 64 << 10
	// maxImageLen bounds the image reference, which is shown to users and compared, never interpreted.
	maxImageLen = 256
)

// ErrInvalid marks a measurements file that does not decode or validate.
var ErrInvalid = errors.New("invalid measurements file")

// File is the content of measurements.json.
type File struct {
	// Version is the format version, Version2 (or Version1 for a file without issue time).
	Version string
	// Image names the node image the measurements belong to, e.g. constellation-node-v1.2.3 or
	// sha256:<hex of the UKI>.
	Image string
	// Variant is the attestation variant the measurements are for, e.g. qemu-vtpm.
	Variant string
	// Issued is when the publisher issued the file (UTC, whole seconds); required from Version2 on. A newer
	// file supersedes an older one for the same image line.
	Issued time.Time
	// Measurements are the reference values by PCR index.
	Measurements measurements.M
}

// Validate checks every field.
func (f *File) Validate() error {
	var errs []error
	switch f.Version {
	case Version1:
		if !f.Issued.IsZero() {
			errs = append(errs, fmt.Errorf("issued: not part of version %s; use %s", Version1, Version2))
		}
	case Version2:
		if f.Issued.IsZero() {
			errs = append(errs, errors.New("issued: must be set"))
		} else if !f.Issued.Equal(f.Issued.UTC().Truncate(time.Second)) {
			errs = append(errs, errors.New("issued: must be whole seconds"))
		}
	default:
		errs = append(errs, fmt.Errorf("version %q is not supported: this CLI reads %s and %s", f.Version, Version1, Version2))
	}
	if err := validateImage(f.Image); err != nil {
		errs = append(errs, err)
	}
	if _, err := variant.FromString(f.Variant); err != nil {
		errs = append(errs, fmt.Errorf("variant: %w", err))
	}
	if len(f.Measurements) == 0 {
		errs = append(errs, errors.New("measurements: at least one PCR is required"))
	} else if err := f.Measurements.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("measurements: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

func validateImage(image string) error {
	if image == "" {
		return errors.New("image: must be set")
	}
	if len(image) > maxImageLen {
		return fmt.Errorf("image: longer than %d bytes", maxImageLen)
	}
	for _, r := range image {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("image %q: must not contain spaces or control characters", image)
		}
	}
	return nil
}

// wire is the JSON form. Measurements are keyed by the decimal PCR index; encoding/json would sort such
// keys as strings ("11" before "4"), so Marshal writes them itself.
type wire struct {
	Version      string                     `json:"version"`
	Image        string                     `json:"image"`
	Variant      string                     `json:"variant"`
	Issued       *string                    `json:"issued,omitempty"`
	Measurements map[string]wireMeasurement `json:"measurements"`
}

type wireMeasurement struct {
	Expected *measurements.Digest `json:"expected"`
	WarnOnly *bool                `json:"warnOnly"`
}

// Marshal validates f and encodes it deterministically: the same File always yields the same bytes.
func (f *File) Marshal() ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("{\n")
	fields := []struct{ name, value string }{{"version", f.Version}, {"image", f.Image}, {"variant", f.Variant}}
	if f.Version != Version1 {
		fields = append(fields, struct{ name, value string }{"issued", f.Issued.UTC().Format(time.RFC3339)})
	}
	for _, field := range fields {
		value, err := json.Marshal(field.value)
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", field.name, err)
		}
		fmt.Fprintf(&b, "  %q: %s,\n", field.name, value)
	}
	b.WriteString("  \"measurements\": {\n")
	indices := f.Measurements.Indices()
	for i, idx := range indices {
		m := f.Measurements[idx]
		fmt.Fprintf(&b, "    \"%d\": {\"expected\": %q, \"warnOnly\": %t}", idx, m.Expected.String(), m.WarnOnly)
		if i < len(indices)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("  }\n}\n")
	return b.Bytes(), nil
}

// ParseIssued reads an issue time. Only the canonical form (RFC 3339 in UTC, whole seconds) is accepted, so
// that one signed file cannot be read as two different times.
func ParseIssued(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil || t.UTC().Format(time.RFC3339) != s {
		return time.Time{}, fmt.Errorf("%q must be a UTC time like 2026-12-04T18:00:00Z", s)
	}
	return t.UTC(), nil
}

// Parse decodes and validates a measurements file strictly. It does not check a signature: use Verify for
// data from anywhere but this machine.
func Parse(data []byte) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, MaxFileSize)
	}
	if err := checkNoDuplicateKeys(data); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w wire
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: unexpected data after the JSON object", ErrInvalid)
	}
	if w.Measurements == nil {
		return nil, fmt.Errorf("%w: measurements: must be set", ErrInvalid)
	}
	f := &File{Version: w.Version, Image: w.Image, Variant: w.Variant, Measurements: measurements.M{}}
	var errs []error
	if w.Issued != nil {
		issued, err := ParseIssued(*w.Issued)
		if err != nil {
			errs = append(errs, fmt.Errorf("issued: %w", err))
		}
		f.Issued = issued
	}
	for key, m := range w.Measurements {
		idx, err := parseIndex(key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if m.Expected == nil {
			errs = append(errs, fmt.Errorf("PCR %d: expected: must be set", idx))
			continue
		}
		if m.WarnOnly == nil {
			errs = append(errs, fmt.Errorf("PCR %d: warnOnly: must be set", idx))
			continue
		}
		f.Measurements[idx] = measurements.Measurement{Expected: *m.Expected, WarnOnly: *m.WarnOnly}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: measurements: %w", ErrInvalid, errors.Join(errs...))
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// parseIndex accepts only the canonical decimal form, so that "4" and "04" cannot name one PCR twice.
func parseIndex(key string) (uint32, error) {
	idx, err := strconv.ParseUint(key, 10, 32)
	if err != nil || strconv.FormatUint(idx, 10) != key {
		return 0, fmt.Errorf("PCR index %q is not a decimal number without leading zeros", key)
	}
	return uint32(idx), nil
}

// checkNoDuplicateKeys rejects an object with a repeated key at any depth: encoding/json would silently
// keep the last one, where another reader might keep the first.
func checkNoDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var check func(path string) error
	check = func(path string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				keyTok, err := dec.Token()
				if err != nil {
					return err
				}
				key, _ := keyTok.(string)
				if seen[key] {
					return fmt.Errorf("field %q appears twice", path+key)
				}
				seen[key] = true
				if err := check(path + key + "."); err != nil {
					return err
				}
			}
			_, err = dec.Token() // '}'
			return err
		case json.Delim('['):
			for dec.More() {
				if err := check(path); err != nil {
					return err
				}
			}
			_, err = dec.Token() // ']'
			return err
		}
		return nil
	}
	return check("")
}

// Sign encodes f and signs the encoding. It returns measurements.json and measurements.json.sig.
func Sign(f *File, key *cosign.Signer) (data, sig []byte, err error) {
	data, err = f.Marshal()
	if err != nil {
		return nil, nil, err
	}
	sig, err = key.SignBlob(data)
	if err != nil {
		return nil, nil, err
	}
	return data, sig, nil
}

// Verify checks sig over the exact bytes of data with key, and only then decodes data.
func Verify(data, sig []byte, key *cosign.Verifier) (*File, error) {
	if err := key.VerifyBlob(data, sig); err != nil {
		return nil, fmt.Errorf("verifying the measurements' signature: %w", err)
	}
	return Parse(data)
}
