package attestconfig

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func loadSeed(t *testing.T) vtpmtest.Seed {
	t.Helper()
	s, err := vtpmtest.LoadSeed()
	require.NoError(t, err)
	return s
}

func configYAML(t *testing.T, m measurements.M) []byte {
	t.Helper()
	out, err := yaml.Marshal(config.AttestationConfig{Variant: "qemu-vtpm", Measurements: m, PlatformCA: string(vtpmtest.PlatformCA(t).CertificatePEM())})
	require.NoError(t, err)
	return out
}

func writeConfig(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, data, 0o644))
	require.NoError(t, os.Rename(tmp, path))
}

func TestReload(t *testing.T) {
	s := loadSeed(t)
	path := filepath.Join(t.TempDir(), FileName)
	writeConfig(t, path, configYAML(t, s.Measurements))
	v, err := NewValidator(path, slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	validate := func() error {
		_, err := v.Validate(context.Background(), s.Document, s.Nonce)
		return err
	}
	require.NoError(t, validate())
	assert.ErrorIs(t, v.Reload(), ErrUnchanged)

	// The cluster's reference values change (say, an upgrade to another image): the same node is now refused.
	other := s.Measurements.Clone()
	d := sha256.Sum256([]byte("new image"))
	other[measurements.PCRKernel] = measurements.Measurement{Expected: d[:]}
	writeConfig(t, path, configYAML(t, other))
	require.NoError(t, v.Reload())
	assert.ErrorIs(t, validate(), attestation.ErrMeasurementMismatch)

	// A broken update is refused and the last good config stays in force.
	writeConfig(t, path, []byte("variant: qemu-vtpm\nmeasurements: {4: {expected: zz}}\n"))
	assert.Error(t, v.Reload())
	assert.ErrorIs(t, validate(), attestation.ErrMeasurementMismatch, "still the last good config")
	// So is a config that lacks an enforced PCR.
	incomplete := s.Measurements.Clone()
	delete(incomplete, measurements.PCRUKI)
	writeConfig(t, path, configYAML(t, incomplete))
	assert.ErrorContains(t, v.Reload(), "no reference value for an enforced PCR")
	// And a missing file.
	require.NoError(t, os.Remove(path))
	assert.Error(t, v.Reload())

	writeConfig(t, path, configYAML(t, s.Measurements))
	require.NoError(t, v.Reload())
	require.NoError(t, validate())
	assert.Equal(t, "qemu-vtpm", v.Variant().String())
}

func TestWatch(t *testing.T) {
	s := loadSeed(t)
	path := filepath.Join(t.TempDir(), FileName)
	writeConfig(t, path, configYAML(t, s.Measurements))
	logs := &syncBuffer{}
	v, err := NewValidator(path, slog.New(slog.NewTextHandler(logs, nil)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		v.Watch(ctx, 10*time.Millisecond)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()

	other := s.Measurements.Clone()
	d := sha256.Sum256([]byte("new image"))
	other[measurements.PCRKernel] = measurements.Measurement{Expected: d[:]}
	writeConfig(t, path, configYAML(t, other))
	assert.Eventually(t, func() bool {
		_, err := v.Validate(context.Background(), s.Document, s.Nonce)
		return err != nil
	}, 5*time.Second, 10*time.Millisecond, "the change takes effect without a restart")

	writeConfig(t, path, []byte("variant: qemu-vtpm\nmeasurements: {4: {expected: zz}}\n"))
	assert.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "keeping the last good one")
	}, 5*time.Second, 10*time.Millisecond, "a broken config is logged")
}

// syncBuffer is a bytes.Buffer safe for the watcher goroutine and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestNewValidatorNeedsAGoodFirstConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	_, err := NewValidator(path, slog.New(slog.DiscardHandler))
	assert.Error(t, err)
	writeConfig(t, path, []byte("variant: tdx\nmeasurements: {}\n"))
	_, err = NewValidator(path, slog.New(slog.DiscardHandler))
	assert.ErrorContains(t, err, `unknown attestation variant "tdx"`)
	writeConfig(t, path, []byte("variant: qemu-vtpm\nmeasurments: {}\n"))
	_, err = NewValidator(path, slog.New(slog.DiscardHandler))
	assert.ErrorContains(t, err, "measurments")
}

// rolloutYAML is a config whose target is target and, during a roll-out, previous.
func rolloutYAML(t *testing.T, target, previous measurements.M) []byte {
	t.Helper()
	f := File{AttestationConfig: config.AttestationConfig{Variant: "qemu-vtpm", Measurements: target, PlatformCA: string(vtpmtest.PlatformCA(t).CertificatePEM())}}
	if previous != nil {
		f.Rollout = &Rollout{PreviousMeasurements: previous}
	}
	out, err := yaml.Marshal(f)
	require.NoError(t, err)
	return out
}

// TestRollout: while a roll-out runs, a node of the target image and one of the image it replaces both
// join; each is checked against one complete set, so a node that matches half of each is refused; once the
// roll-out finished, a node of the old image is refused.
func TestRollout(t *testing.T) {
	s := loadSeed(t) // the node: its measurements are s.Measurements
	with := func(pcr uint32, data string) measurements.M {
		m := s.Measurements.Clone()
		d := sha256.Sum256([]byte(data))
		m[pcr] = measurements.Measurement{Expected: d[:]}
		return m
	}
	newImage := with(measurements.PCRKernel, "image B")
	// Each matches the node in one of the two PCRs and not in the other.
	halfA := with(measurements.PCRKernel, "image C")
	halfB := with(measurements.PCRUKI, "image D")

	tests := map[string]struct {
		target, previous measurements.M
		wantErr          string
	}{
		"the node runs the target image":               {target: s.Measurements, previous: newImage},
		"the node runs the image being replaced":       {target: newImage, previous: s.Measurements},
		"after the roll-out, the old image is refused": {target: newImage, wantErr: "PCR 9"},
		"neither image":                {target: newImage, previous: halfA, wantErr: "matches neither the roll-out's target image"},
		"half of each set is no match": {target: halfA, previous: halfB, wantErr: "nor the image it replaces"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v, err := Parse(rolloutYAML(t, tc.target, tc.previous), slog.New(slog.DiscardHandler))
			require.NoError(t, err)
			_, err = v.Validate(context.Background(), s.Document, s.Nonce)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, attestation.ErrMeasurementMismatch)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}

	_, err := Parse(append(configYAML(t, s.Measurements), "rollout: {previousMeasurements: {}}\n"...), slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "remove the rollout")
	incomplete := s.Measurements.Clone()
	delete(incomplete, measurements.PCRUKI)
	_, err = Parse(rolloutYAML(t, s.Measurements, incomplete), slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "rollout.previousMeasurements")
}

// Joined checks running nodes: PCR 15 must be this cluster's ID, where a joining node must show zero; it
// follows the file like the join validator.
func TestJoined(t *testing.T) {
	clusterID := bytes.Repeat([]byte{0xc1}, 32)
	n := vtpmtest.NewNode(t, vtpmtest.Boot)
	require.NoError(t, tpm.Extend(n.TPM, measurements.PCRClusterID, measurements.ClusterIDEvent(clusterID))) // the node lock, as the bootstrapper takes it
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, n.TPM, vtpm.WithEventLog(func() ([]byte, error) { return n.EventLog, nil }))
	t.Cleanup(issuer.Close)
	nonce := bytes.Repeat([]byte{7}, 32)
	doc, err := issuer.Issue(context.Background(), []byte("data"), nonce)
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), FileName)
	writeConfig(t, path, configYAML(t, vtpmtest.ReferenceValues(vtpmtest.Boot)))
	v, err := NewValidator(path, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	_, err = v.Joined(clusterID).Validate(context.Background(), doc, nonce)
	require.NoError(t, err, "a node of this cluster")
	_, err = v.Joined(bytes.Repeat([]byte{0xc2}, 32)).Validate(context.Background(), doc, nonce)
	assert.ErrorContains(t, err, "PCR 15", "a node of another cluster")
	_, err = v.Validate(context.Background(), doc, nonce)
	assert.ErrorContains(t, err, "PCR 15", "a node that took its lock no longer joins")

	// The file changes (another image): the joined validator follows it.
	joined := v.Joined(clusterID)
	other := vtpmtest.ReferenceValues(vtpmtest.Boot)
	d := sha256.Sum256([]byte("new image"))
	other[measurements.PCRKernel] = measurements.Measurement{Expected: d[:]}
	writeConfig(t, path, configYAML(t, other))
	require.NoError(t, v.Reload())
	_, err = joined.Validate(context.Background(), doc, nonce)
	assert.ErrorIs(t, err, attestation.ErrMeasurementMismatch)
	// During a roll-out from the node's image: accepted again.
	writeConfig(t, path, rolloutYAML(t, other, vtpmtest.ReferenceValues(vtpmtest.Boot)))
	require.NoError(t, v.Reload())
	_, err = joined.Validate(context.Background(), doc, nonce)
	require.NoError(t, err)
}
