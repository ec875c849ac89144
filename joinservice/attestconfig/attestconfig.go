// Package attestconfig keeps the JoinService's validator in step with the cluster's attestation config (a
// mounted ConfigMap). A changed file takes effect without a restart; a broken one is refused, logged, and
// the last good validator stays in force, so a typo cannot open or close the cluster.
package attestconfig

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/choose"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/measurements"
)

// FileName is the attestation config's key in its ConfigMap.
const FileName = "attestation-config.yaml"

// ConfigMapName is the kube-system ConfigMap that holds the file (key FileName), which the JoinService mounts
// and `constellation status` reads.
const ConfigMapName = "attestation-config"

// File is the ConfigMap's file: the attestation section of constellation-conf.yaml, and, while the cluster
// moves to another node image, the roll-out.
type File struct {
	config.AttestationConfig `yaml:",inline"`
	// Rollout is set while nodes move from one image to another.
	Rollout *Rollout `yaml:"rollout,omitempty"`
}

// Rollout is what a running roll-out adds: the measurements of the image the nodes move away from. A node
// of either image may join until the roll-out finishes and the field is removed; each node is checked
// against one whole set, never a mix of the two.
type Rollout struct {
	PreviousMeasurements measurements.M `yaml:"previousMeasurements"`
}

// Parse decodes an attestation config (File) and builds the validator for joining nodes: every enforced
// reference value, and PCR 15 zero (a node joins before it takes its node lock); during a roll-out, the
// previous image's reference values too, as a second, complete set.
func Parse(data []byte, log *slog.Logger) (attestation.Validator, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decoding attestation config: %w", err)
	}
	if f.Rollout == nil {
		return choose.ForConfig(f.AttestationConfig, f.Measurements.WithFreshNode(), log)
	}
	if len(f.Rollout.PreviousMeasurements) == 0 {
		return nil, errors.New("rollout.previousMeasurements: empty; remove the rollout when no roll-out runs")
	}
	v, err := choose.ForRollout(f.AttestationConfig, f.Measurements.WithFreshNode(), f.Rollout.PreviousMeasurements.WithFreshNode(), log)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	return v, nil
}

// Validator is an attestation.Validator whose configuration follows a file.
type Validator struct {
	path string
	log  *slog.Logger

	mu      sync.RWMutex
	current attestation.Validator
	digest  [sha256.Size]byte
}

// NewValidator loads path; it fails if the first load fails, since there is nothing to fall back to.
func NewValidator(path string, log *slog.Logger) (*Validator, error) {
	v := &Validator{path: path, log: log}
	if err := v.Reload(); err != nil {
		return nil, err
	}
	return v, nil
}

// ErrUnchanged is returned by Reload when the file did not change.
var ErrUnchanged = errors.New("attestation config unchanged")

// Reload reads the file and, if it changed and is valid, switches to it. On error the last good validator
// stays in force.
func (v *Validator) Reload() error {
	data, err := os.ReadFile(v.path)
	if err != nil {
		return fmt.Errorf("reading attestation config: %w", err)
	}
	digest := sha256.Sum256(data)
	v.mu.RLock()
	same := v.current != nil && digest == v.digest
	v.mu.RUnlock()
	if same {
		return ErrUnchanged
	}
	next, err := Parse(data, v.log)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.current, v.digest = next, digest
	v.mu.Unlock()
	return nil
}

// Watch reloads the file every interval until ctx ends. Mounted ConfigMaps change by an atomic symlink
// swap, which polling sees reliably without inotify subtleties.
func (v *Validator) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		switch err := v.Reload(); {
		case err == nil:
			v.log.Info("attestation config reloaded", "path", v.path)
		case errors.Is(err, ErrUnchanged):
		default:
			v.log.Error("attestation config not reloaded; keeping the last good one", "path", v.path, "error", err)
		}
	}
}

// Variant returns the current variant.
func (v *Validator) Variant() variant.Variant {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.current.Variant()
}

// Validate validates with the current configuration.
func (v *Validator) Validate(ctx context.Context, doc, nonce []byte) ([]byte, error) {
	v.mu.RLock()
	current := v.current
	v.mu.RUnlock()
	return current.Validate(ctx, doc, nonce)
}
