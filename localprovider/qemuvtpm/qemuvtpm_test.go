package qemuvtpm

import (
	"context"
	"crypto/x509"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/testenv"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openState runs the vTPM's state with a command socket of its own (its swtpm must be stopped); the state
// is saved and released when stop is called.
func openState(t *testing.T, v VTPM) (tp transport.TPM, stop func()) {
	t.Helper()
	dir := testenv.TempDir(t)
	require.NoError(t, os.Symlink(v.stateDir(), filepath.Join(dir, "state")))
	p, err := swtpm.Start(context.Background(), dir)
	require.NoError(t, err)
	closer, err := tpm.Open(p.Address())
	require.NoError(t, err)
	return closer, func() {
		_ = closer.Close()
		require.NoError(t, p.Stop())
	}
}

// reopen returns what manufacturing the vTPM again with ca says: nil for a vTPM ca certified.
func reopen(t *testing.T, v VTPM, ca *manufacturer.CA) error {
	t.Helper()
	tp, stop := openState(t, v)
	defer stop()
	return ca.Manufacture(tp, "worker-0")
}

// attestation starts the vTPM's state with a command socket of its own (its swtpm must be stopped), issues
// an attestation as the node's bootstrapper does and validates it against ca as the JoinService does. It
// returns the validator's error and the node name the AK certificate carries.
func attestation(t *testing.T, v VTPM, ca *manufacturer.CA) (string, error) {
	t.Helper()
	tp, stop := openState(t, v)
	defer stop()
	// Nothing was measured: an empty log and the PCRs of a fresh node with no boot events.
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, tp, vtpm.WithEventLog(func() ([]byte, error) { return eventlog.NewBuilder().Bytes(), nil }))
	defer issuer.Close()
	nonce := make([]byte, 32)
	doc, err := issuer.Issue(context.Background(), []byte("user data"), nonce)
	require.NoError(t, err)
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{
		Measurements: vtpmtest.ReferenceValues(nil), AKRoots: []*x509.Certificate{ca.Certificate()},
	})
	require.NoError(t, err)
	if _, err := validator.Validate(context.Background(), doc, nonce); err != nil {
		return "", err
	}
	return vtpm.CertifiedName(doc)
}

func TestEnsure(t *testing.T) {
	testenv.Need(t, "apt-get install swtpm", "swtpm")
	me, err := user.Current()
	require.NoError(t, err)
	ca, err := manufacturer.NewCA("test platform CA")
	require.NoError(t, err)
	ctx := context.Background()
	base := testenv.TempDir(t)
	require.NoError(t, os.Chmod(base, 0o711))
	v := VTPM{Dir: filepath.Join(base, "state", "worker-0"), Socket: filepath.Join(base, "run", "cluster", "worker-0.sock")}

	require.NoError(t, Ensure(ctx, v, ca, "worker-0", me.Username))
	t.Cleanup(func() { _ = Remove(ctx, v) })
	require.True(t, Running(v))
	fi, err := os.Stat(v.Socket)
	require.NoError(t, err)
	assert.Equal(t, os.ModeSocket|0o600, fi.Mode(), "only QEMU's user may reset this vTPM")
	assert.Equal(t, me.Uid, strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)))
	for _, d := range []string{filepath.Dir(v.Socket), filepath.Dir(filepath.Dir(v.Socket))} {
		di, err := os.Stat(d)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o711), di.Mode().Perm(), "%s: QEMU may pass, not list", d)
	}
	di, err := os.Stat(v.Dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), di.Mode().Perm(), "the state is root's alone")

	first, ok := v.running()
	require.True(t, ok)
	require.NoError(t, Ensure(ctx, v, ca, "worker-0", me.Username), "idempotent")
	again, _ := v.running()
	assert.Equal(t, first, again, "a running vTPM is left running")

	// A reboot of the host: the state survives, and the vTPM is still the one ca certified.
	require.NoError(t, Stop(ctx, v))
	assert.False(t, Running(v))
	assert.NoFileExists(t, v.Socket)
	require.NoError(t, reopen(t, v, ca))
	other, err := manufacturer.NewCA("another platform CA")
	require.NoError(t, err)
	// Its attestations chain to ca, name the node, and do not pass for another platform's CA.
	name, err := attestation(t, v, ca)
	require.NoError(t, err)
	assert.Equal(t, "worker-0", name)
	_, err = attestation(t, v, other)
	require.ErrorIs(t, err, akcert.ErrCertificate)
	require.ErrorIs(t, reopen(t, v, other), manufacturer.ErrOtherManufacturer)
	require.ErrorIs(t, Ensure(ctx, v, other, "worker-0", me.Username), manufacturer.ErrOtherManufacturer,
		"another CA never takes over a vTPM")
	require.NoError(t, Ensure(ctx, v, ca, "worker-0", me.Username), "started again after the reboot")
	assert.True(t, Running(v))

	require.NoError(t, Remove(ctx, v))
	assert.False(t, Running(v))
	assert.NoDirExists(t, v.Dir)
	assert.NoDirExists(t, filepath.Dir(v.Socket), "the socket directory of the last vTPM goes too")
}

func TestEnsureRefusesAnUnknownOwner(t *testing.T) {
	ca, err := manufacturer.NewCA("test platform CA")
	require.NoError(t, err)
	dir := t.TempDir()
	err = Ensure(context.Background(), VTPM{Dir: dir, Socket: filepath.Join(dir, "s.sock")}, ca, "worker-0", "no-such-user-x")
	require.ErrorContains(t, err, `the vTPM socket's owner "no-such-user-x"`)
}

func TestEnsureRefusesAnUntraversableSocketDirectory(t *testing.T) {
	me, err := user.Current()
	require.NoError(t, err)
	ca, err := manufacturer.NewCA("test platform CA")
	require.NoError(t, err)
	closed := testenv.TempDir(t) // 0700
	err = Ensure(context.Background(), VTPM{Dir: filepath.Join(closed, "vtpm"), Socket: filepath.Join(closed, "run", "x.sock")}, ca, "worker-0", me.Username)
	require.ErrorContains(t, err, closed+" is not traversable by others")
	assert.NoDirExists(t, filepath.Join(closed, "run"), "nothing is created below it")

	err = Ensure(context.Background(), VTPM{Dir: "relative", Socket: "/run/x.sock"}, ca, "worker-0", me.Username)
	require.ErrorContains(t, err, "must be absolute")
}
