// Package measurements holds the reference values that attestation validators compare a node's PCRs to.
package measurements

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// PCRCount is the number of PCRs of a TPM 2.0 with the standard PC client profile.
const PCRCount = 24

// AllPCRs returns the indices of every PCR, 0 to PCRCount-1.
func AllPCRs() []uint32 {
	out := make([]uint32, PCRCount)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

// DigestSize is the size of a SHA-256 PCR value.
const DigestSize = 32

// PCR indices with a fixed meaning in this project.
const (
	PCRBootChain  = 4
	PCRKernel     = 9
	PCRUKI        = 11
	PCRBootLoader = 12
	PCRSystemd    = 13
	PCRClusterID  = 15
	PCRMaxIndex   = PCRCount - 1
)

// DefaultEnforced lists the PCRs a fresh configuration enforces: boot chain, kernel command line and
// initrd, UKI sections, boot loader, systemd's measurements and the cluster ID.
var DefaultEnforced = []uint32{PCRBootChain, PCRKernel, PCRUKI, PCRBootLoader, PCRSystemd, PCRClusterID}

// Measurement is the reference value for one PCR.
type Measurement struct {
	// Expected is the SHA-256 PCR value.
	Expected Digest `json:"expected" yaml:"expected" jsonschema_description:"Expected SHA-256 PCR value, 64 hex digits."`
	// WarnOnly reports a mismatch instead of failing the attestation.
	WarnOnly bool `json:"warnOnly" yaml:"warnOnly" jsonschema_description:"Report a mismatch as a warning instead of failing the attestation."`
}

// M maps PCR indices to reference values.
type M map[uint32]Measurement

// Validate checks every index and value. It does not decide which PCRs must be present: that is the
// validator's job, since it depends on the attestation variant.
func (m M) Validate() error {
	var errs []error
	for _, idx := range m.Indices() {
		if idx > PCRMaxIndex {
			errs = append(errs, fmt.Errorf("PCR %d: index out of range 0..%d", idx, PCRMaxIndex))
			continue
		}
		if err := m[idx].Expected.validate(); err != nil {
			errs = append(errs, fmt.Errorf("PCR %d: %w", idx, err))
		}
	}
	return errors.Join(errs...)
}

// Indices returns the PCR indices in ascending order.
func (m M) Indices() []uint32 {
	idx := make([]uint32, 0, len(m))
	for i := range m {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

// Missing returns the indices of want that have no reference value.
func (m M) Missing(want []uint32) []uint32 {
	var missing []uint32
	for _, idx := range want {
		if _, ok := m[idx]; !ok {
			missing = append(missing, idx)
		}
	}
	return missing
}

// UnmarshalYAML decodes PCR indices written plainly (4:) or quoted ("4":), as JSON-minded editors do.
func (m *M) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: measurements must be a mapping from PCR index to reference value", node.Line)
	}
	out := make(M, len(node.Content)/2)
	for i := 0; i+1 < len(node.Content); i += 2 {
		key, value := node.Content[i], node.Content[i+1]
		idx, err := strconv.ParseUint(key.Value, 10, 32)
		if err != nil {
			return fmt.Errorf("line %d: PCR index %q is not a number", key.Line, key.Value)
		}
		if _, dup := out[uint32(idx)]; dup {
			return fmt.Errorf("line %d: PCR %d is listed twice", key.Line, idx)
		}
		var meas Measurement
		if err := value.Decode(&meas); err != nil {
			return err
		}
		out[uint32(idx)] = meas
	}
	*m = out
	return nil
}

// Digest is a SHA-256 PCR value, encoded as hex in YAML and JSON.
type Digest []byte

// ParseDigest decodes a hex PCR value.
func ParseDigest(s string) (Digest, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(s), "0x"))
	if err != nil {
		return nil, fmt.Errorf("expected value %q is not hex: %w", s, err)
	}
	d := Digest(b)
	if err := d.validate(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d Digest) validate() error {
	if len(d) != DigestSize {
		return fmt.Errorf("expected value must be %d bytes (%d hex digits), got %d bytes", DigestSize, 2*DigestSize, len(d))
	}
	return nil
}

func (d Digest) String() string {
	return hex.EncodeToString(d)
}

// MarshalText encodes the digest as lower-case hex.
func (d Digest) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// UnmarshalText decodes hex and checks the length.
func (d *Digest) UnmarshalText(text []byte) error {
	parsed, err := ParseDigest(string(text))
	if err != nil {
		return err
	}
	*d = parsed
	return nil
}

// UnmarshalYAML decodes hex from a YAML scalar. yaml.v3 does not use UnmarshalText for byte slices.
func (d *Digest) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected value must be a hex string", node.Line)
	}
	if err := d.UnmarshalText([]byte(node.Value)); err != nil {
		return fmt.Errorf("line %d: %w", node.Line, err)
	}
	return nil
}

// MarshalYAML encodes the digest as a hex string.
func (d Digest) MarshalYAML() (any, error) {
	return d.String(), nil
}

// MarshalJSON encodes the digest as a hex string.
func (d Digest) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.String())
}

// UnmarshalJSON decodes a hex string.
func (d *Digest) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("expected value must be a hex string: %w", err)
	}
	return d.UnmarshalText([]byte(s))
}
