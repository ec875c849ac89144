package service

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// shortTempDir returns a new directory under /tmp: socket paths are limited to 108 bytes, which the test
// framework's temporary directories can exceed.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "svc")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestListenUnix(t *testing.T) {
	testCases := map[string]struct {
		prepare func(t *testing.T, sock string)
		addr    func(sock string) string
		wantErr string
	}{
		"new directory": {},
		"existing directory that others may enter is tightened": {
			prepare: func(t *testing.T, sock string) { require.NoError(t, os.Mkdir(filepath.Dir(sock), 0o755)) },
		},
		"stale socket of an earlier run": {
			prepare: func(t *testing.T, sock string) {
				require.NoError(t, os.Mkdir(filepath.Dir(sock), 0o700))
				stale, err := net.Listen("unix", sock)
				require.NoError(t, err)
				stale.(*net.UnixListener).SetUnlinkOnClose(false)
				require.NoError(t, stale.Close())
			},
		},
		"relative path": {
			addr:    func(string) string { return UnixPrefix + "run/x.sock" },
			wantErr: "the path must be absolute",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			sock := filepath.Join(shortTempDir(t), "keyservice", "api.sock")
			if tc.prepare != nil {
				tc.prepare(t, sock)
			}
			addr := UnixPrefix + sock
			if tc.addr != nil {
				addr = tc.addr(sock)
			}

			lis, err := Listen(addr)

			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			defer lis.Close()
			dirInfo, err := os.Stat(filepath.Dir(sock))
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o700), dirInfo.Mode().Perm())
			sockInfo, err := os.Stat(sock)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), sockInfo.Mode().Perm())
			assert.NotZero(t, sockInfo.Mode()&os.ModeSocket)

			// Its owner reaches a gRPC server on it with the same target syntax.
			srv := grpc.NewServer()
			healthpb.RegisterHealthServer(srv, health.NewServer())
			go func() { _ = srv.Serve(lis) }()
			defer srv.Stop()
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			require.NoError(t, err)
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			require.NoError(t, err)
		})
	}
}

// dialEnv makes the test binary, started by TestListenUnixRefusesOtherUsers, dial the socket it names and
// report the outcome instead of running tests.
const dialEnv = "SERVICE_TEST_DIAL_SOCKET"

// TestListenUnixRefusesOtherUsers shows what the unix socket adds over a loopback port: another process on
// the node, running as another user, cannot connect to it. The same process reaches a socket anyone may
// use, which is what a loopback port amounts to, so the refusal comes from the socket's permissions.
func TestListenUnixRefusesOtherUsers(t *testing.T) {
	if sock := os.Getenv(dialEnv); sock != "" {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			_, _ = io.WriteString(os.Stdout, "DIAL FAILED: "+err.Error()+"\n")
			return
		}
		_ = conn.Close()
		_, _ = io.WriteString(os.Stdout, "DIAL OK\n")
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a client as another user (nobody)")
	}
	// The other user needs a copy of this test binary it may execute.
	binDir := shortTempDir(t)
	require.NoError(t, os.Chmod(binDir, 0o755))
	exe, err := os.ReadFile("/proc/self/exe")
	require.NoError(t, err)
	bin := filepath.Join(binDir, "service.test")
	require.NoError(t, os.WriteFile(bin, exe, 0o755))

	testCases := map[string]struct {
		listen func(t *testing.T, sock string) net.Listener
		wantOK bool
	}{
		"the socket Listen makes": {
			listen: func(t *testing.T, sock string) net.Listener {
				lis, err := Listen(UnixPrefix + sock)
				require.NoError(t, err)
				return lis
			},
		},
		"a socket anyone may use": {
			listen: func(t *testing.T, sock string) net.Listener {
				require.NoError(t, os.Mkdir(filepath.Dir(sock), 0o755))
				require.NoError(t, os.Chmod(filepath.Dir(sock), 0o777))
				lis, err := net.Listen("unix", sock)
				require.NoError(t, err)
				require.NoError(t, os.Chmod(sock, 0o777))
				return lis
			},
			wantOK: true,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			dir := shortTempDir(t)
			require.NoError(t, os.Chmod(dir, 0o755))
			sock := filepath.Join(dir, "keyservice", "api.sock")
			lis := tc.listen(t, sock)
			defer lis.Close()

			cmd := exec.Command(bin, "-test.run=^TestListenUnixRefusesOtherUsers$")
			cmd.Env = append(os.Environ(), dialEnv+"="+sock)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			out, err := cmd.CombinedOutput()
			var exitErr *exec.ExitError
			require.False(t, err != nil && !errors.As(err, &exitErr), "starting the client: %v", err)
			t.Logf("client as nobody: %s", strings.TrimSpace(string(out)))

			if tc.wantOK {
				assert.Contains(t, string(out), "DIAL OK")
				return
			}
			assert.Contains(t, string(out), "DIAL FAILED")
			assert.Contains(t, string(out), "permission denied")
		})
	}
}
