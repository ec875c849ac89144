package attestation

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrMeasurementMismatch matches a ValidationError that contains at least one enforced PCR mismatch.
var ErrMeasurementMismatch = errors.New("measurements do not match the reference values")

// PCRMismatch explains why one PCR differs from its reference value.
type PCRMismatch struct {
	PCR      uint32 `json:"pcr"`
	Expected string `json:"expected"`
	Actual   string `json:"actual"`
	WarnOnly bool   `json:"warnOnly"`
	// Events lists, from the node's event log, what was extended into this PCR, in order. Empty when the
	// document carries no event log or no event touched the PCR.
	Events []string `json:"events,omitempty"`
}

func (m PCRMismatch) String() string {
	var b strings.Builder
	kind := "enforced"
	if m.WarnOnly {
		kind = "warn-only"
	}
	fmt.Fprintf(&b, "PCR %d (%s): expected %s, got %s", m.PCR, kind, m.Expected, m.Actual)
	if m.Actual == zeroHex {
		b.WriteString(" (never extended)")
	}
	if len(m.Events) > 0 {
		b.WriteString("; measured events:")
		for _, ev := range m.Events {
			b.WriteString("\n    - " + ev)
		}
	}
	return b.String()
}

var zeroHex = hex.EncodeToString(make([]byte, 32))

// ValidationError reports every failed check of one validation at once: the user sees all mismatches,
// not just the first. Warn-only mismatches are listed too, but alone they do not make an error.
type ValidationError struct {
	Variant    string        `json:"variant"`
	Mismatches []PCRMismatch `json:"mismatches,omitempty"`
	// Failures are checks other than PCR comparisons (e.g. a missing reference value).
	Failures []string `json:"failures,omitempty"`
}

func (e *ValidationError) Error() string {
	var lines []string
	for _, f := range e.Failures {
		lines = append(lines, "  "+f)
	}
	for _, m := range e.Mismatches {
		lines = append(lines, "  "+m.String())
	}
	return fmt.Sprintf("%s attestation failed validation:\n%s", e.Variant, strings.Join(lines, "\n"))
}

// Is makes errors.Is(err, ErrMeasurementMismatch) true when an enforced PCR differs.
func (e *ValidationError) Is(target error) bool {
	if target != ErrMeasurementMismatch {
		return false
	}
	for _, m := range e.Mismatches {
		if !m.WarnOnly {
			return true
		}
	}
	return false
}

// Failed reports whether the validation failed (as opposed to only carrying warnings).
func (e *ValidationError) Failed() bool {
	return len(e.Failures) > 0 || e.Is(ErrMeasurementMismatch)
}

// JSON renders the error for `-o json` output.
func (e *ValidationError) JSON() ([]byte, error) {
	return json.MarshalIndent(e, "", "  ")
}
