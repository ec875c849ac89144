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
	return parse(data, func(m measurements.M) (measurements.M, error) { return m.WithFreshNode(), nil }, log)
}

// ParseJoined is Parse for nodes that joined the cluster of clusterID: PCR 15 must be clusterID.
func ParseJoined(data, clusterID []byte, log *slog.Logger) (attestation.Validator, error) {
	return parse(data, func(m measurements.M) (measurements.M, error) { return m.WithClusterID(clusterID) }, log)
}

// parse builds the validator of f with PCR 15 as lock sets it.
func parse(data []byte, lock func(measurements.M) (measurements.M, error), log *slog.Logger) (attestation.Validator, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decoding attestation config: %w", err)
	}
	refs, err := lock(f.Measurements)
	if err != nil {
		return nil, err
	}
	if f.Rollout == nil {
		return choose.ForConfig(f.AttestationConfig, refs, log)
	}
	if len(f.Rollout.PreviousMeasurements) == 0 {
		return nil, errors.New("rollout.previousMeasurements: empty; remove the rollout when no roll-out runs")
	}
	previous, err := lock(f.Rollout.PreviousMeasurements)
	if err != nil {
		return nil, err
	}
	v, err := choose.ForRollout(f.AttestationConfig, refs, previous, log)
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
	data    []byte
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
	v.current, v.digest, v.data = next, digest, data
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

// Joined returns a validator of nodes that joined the cluster of clusterID (PCR 15 = clusterID) that follows
// the same file: the re-attestation of running nodes.
func (v *Validator) Joined(clusterID []byte) attestation.Validator {
	return &joinedValidator{file: v, clusterID: clusterID}
}

type joinedValidator struct {
	file      *Validator
	clusterID []byte

	mu      sync.Mutex
	current attestation.Validator
	digest  [sha256.Size]byte
}

func (j *joinedValidator) Variant() variant.Variant { return j.file.Variant() }

// Validate builds the joined validator again when the file changed (the file's last good version).
func (j *joinedValidator) Validate(ctx context.Context, doc, nonce []byte) ([]byte, error) {
	j.file.mu.RLock()
	data, digest := j.file.data, j.file.digest
	j.file.mu.RUnlock()
	j.mu.Lock()
	if j.current == nil || j.digest != digest {
		next, err := ParseJoined(data, j.clusterID, j.file.log)
		if err != nil {
			j.mu.Unlock()
			return nil, err
		}
		j.current, j.digest = next, digest
	}
	current := j.current
	j.mu.Unlock()
	return current.Validate(ctx, doc, nonce)
}
