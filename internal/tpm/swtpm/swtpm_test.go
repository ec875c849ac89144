package swtpm

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func requireSwtpm(t *testing.T) {
	t.Helper()
	testenv.Need(t, "apt-get install swtpm swtpm-tools", "swtpm")
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "swtpm-test-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestStartStop(t *testing.T) {
	requireSwtpm(t)
	dir := shortDir(t)
	p, err := Start(context.Background(), dir)
	require.NoError(t, err)
	fi, err := os.Stat(p.SocketPath())
	require.NoError(t, err)
	assert.NotZero(t, fi.Mode()&os.ModeSocket)
	assert.Equal(t, "swtpm:"+filepath.Join(dir, socketName), p.Address())

	require.NoError(t, p.Stop())
	require.NoError(t, p.Stop(), "stopping twice is fine")
	select {
	case <-p.Done():
	case <-time.After(time.Second):
		t.Fatal("process still running after Stop")
	}
	_, err = os.Stat(p.SocketPath())
	assert.True(t, os.IsNotExist(err), "sockets are removed")

	// Restarting on the same directory works (state persists, stale sockets are cleaned).
	p2, err := Start(context.Background(), dir)
	require.NoError(t, err)
	require.NoError(t, p2.Stop())
}

func TestStartFailsClearly(t *testing.T) {
	requireSwtpm(t)
	// A directory we cannot create below a file.
	f := filepath.Join(shortDir(t), "file")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	_, err := Start(context.Background(), filepath.Join(f, "sub"))
	assert.ErrorContains(t, err, "creating swtpm state directory")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p, err := Start(ctx, shortDir(t))
	// Either swtpm was fast enough or the cancelled context stopped the wait; never a hang or a leak.
	if err != nil {
		assert.ErrorIs(t, err, context.Canceled)
	} else {
		require.NoError(t, p.Stop())
	}
}

func TestNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Start(context.Background(), shortDir(t))
	assert.ErrorIs(t, err, ErrNotInstalled)
}

// readPCR0 reads PCR 0 of the SHA-256 bank.
func readPCR0(t *testing.T, p *Process) []byte {
	t.Helper()
	conn, err := net.Dial("unix", p.SocketPath())
	require.NoError(t, err)
	defer conn.Close()
	rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
		{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(0)},
	}}}.Execute(transport.FromReadWriter(conn))
	require.NoError(t, err)
	require.Len(t, rsp.PCRValues.Digests, 1)
	return rsp.PCRValues.Digests[0].Buffer
}

func TestStartupLocality(t *testing.T) {
	requireSwtpm(t)
	testCases := map[string]struct {
		opts     []Option
		wantLast byte
	}{
		"locality 0 (the default)":      {wantLast: 0},
		"locality 3, as with an H-CRTM": {opts: []Option{StartupLocality(3)}, wantLast: 3},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			p, err := Start(context.Background(), shortDir(t), tc.opts...)
			require.NoError(t, err)
			defer func() { require.NoError(t, p.Stop()) }()
			want := make([]byte, 32)
			want[31] = tc.wantLast
			assert.Equal(t, want, readPCR0(t, p))
		})
	}
}
