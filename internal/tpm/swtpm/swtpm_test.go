package swtpm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func requireSwtpm(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("swtpm is not installed; CI must install it")
		}
		t.Skip("skipping: swtpm is not installed")
	}
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
