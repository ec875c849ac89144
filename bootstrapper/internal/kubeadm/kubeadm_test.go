package kubeadm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type fakeExec struct {
	name       string
	args, env  []string
	config     []byte
	configMode os.FileMode
	configPath string
	err        error
}

func (f *fakeExec) Run(_ context.Context, name string, args, env []string, out io.Writer) error {
	f.name, f.args, f.env = name, args, env
	for _, a := range args {
		if p, ok := strings.CutPrefix(a, "--config="); ok {
			f.configPath = p
			f.config, _ = os.ReadFile(p)
			if fi, err := os.Stat(p); err == nil {
				f.configMode = fi.Mode().Perm()
			}
		}
	}
	_, _ = io.WriteString(out, "[init] Using Kubernetes version: v1.33.13\n")
	return f.err
}

func newRunner(t *testing.T, exe Executor, out io.Writer) *Runner {
	t.Helper()
	procSys := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(procSys, "net/ipv4"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(procSys, "net/ipv4/ip_forward"), []byte("0\n"), 0o644))
	return &Runner{Exec: exe, Kubeadm: "/var/lib/constellation/bin/kubeadm", Env: []string{"PATH=/var/lib/constellation/bin:/usr/bin"},
		TempDir: t.TempDir(), ProcSys: procSys, Out: out}
}

func TestRun(t *testing.T) {
	testCases := map[string]struct {
		run      func(*Runner) error
		wantArgs []string
	}{
		"init": {
			run:      func(r *Runner) error { return r.Init(context.Background(), []byte("kind: InitConfiguration\n")) },
			wantArgs: []string{"init", "--config=", "--v=1", "--skip-token-print", "--skip-certificate-key-print"},
		},
		"join": {
			run:      func(r *Runner) error { return r.Join(context.Background(), []byte("kind: JoinConfiguration\n")) },
			wantArgs: []string{"join", "--config=", "--v=1"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			exe := &fakeExec{}
			var out bytes.Buffer
			r := newRunner(t, exe, &out)
			require.NoError(t, tc.run(r))
			assert.Equal(t, r.Kubeadm, exe.name)
			require.Len(t, exe.args, len(tc.wantArgs))
			for i, want := range tc.wantArgs {
				assert.True(t, strings.HasPrefix(exe.args[i], want), "arg %d: %q", i, exe.args[i])
			}
			assert.Equal(t, r.Env, exe.env)
			assert.Contains(t, string(exe.config), "Configuration")
			assert.Equal(t, os.FileMode(0o600), exe.configMode, "the configuration holds a token")
			assert.Equal(t, r.TempDir, filepath.Dir(exe.configPath))
			_, err := os.Stat(exe.configPath)
			assert.ErrorIs(t, err, os.ErrNotExist, "the configuration is removed afterwards")
			assert.Contains(t, out.String(), "Using Kubernetes version")
			fwd, err := os.ReadFile(filepath.Join(r.ProcSys, "net/ipv4/ip_forward"))
			require.NoError(t, err)
			assert.Equal(t, "1\n", string(fwd))
		})
	}
}

func TestRunFailures(t *testing.T) {
	exe := &fakeExec{err: errors.New("exit status 1")}
	r := newRunner(t, exe, nil)
	err := r.Init(context.Background(), []byte("x"))
	require.ErrorContains(t, err, "kubeadm init: exit status 1")
	_, statErr := os.Stat(exe.configPath)
	assert.ErrorIs(t, statErr, os.ErrNotExist, "the configuration is removed after a failure too")

	r = newRunner(t, &fakeExec{}, nil)
	r.ProcSys = filepath.Join(t.TempDir(), "missing")
	require.ErrorContains(t, r.Join(context.Background(), []byte("x")), "IPv4 forwarding")

	r = newRunner(t, &fakeExec{}, nil)
	r.TempDir = filepath.Join(t.TempDir(), "missing")
	require.ErrorContains(t, r.Join(context.Background(), []byte("x")), "writing configuration")
}

func TestOSExecutor(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	var out bytes.Buffer
	err = OSExecutor{}.Run(context.Background(), sh, []string{"-c", `echo "out $FOO"; echo err >&2; exit 3`}, []string{"FOO=bar"}, &out)
	require.Error(t, err)
	assert.Contains(t, out.String(), "out bar")
	assert.Contains(t, out.String(), "err")

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = OSExecutor{}.Run(ctx, sh, []string{"-c", "sleep 30"}, nil, io.Discard)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 10*time.Second, "a cancelled command is stopped")
}

func TestReset(t *testing.T) {
	exe := &fakeExec{}
	var out bytes.Buffer
	r := newRunner(t, exe, &out)
	require.NoError(t, r.Reset(context.Background()))
	assert.Equal(t, r.Kubeadm, exe.name)
	assert.Equal(t, []string{"reset", "--force", "--v=1"}, exe.args, "no prompt: nobody is there to answer")
	assert.Equal(t, r.Env, exe.env)
	assert.NotEmpty(t, out.String(), "kubeadm's output goes to the node's log")

	exe.err = errors.New("exit status 1")
	require.ErrorContains(t, r.Reset(context.Background()), "kubeadm reset: exit status 1")
}

// stoppedKubelet records whether kubeadm ran while the kubelet was stopped.
type stoppedKubelet struct{ calls int }

func (k *stoppedKubelet) WhileStopped(ctx context.Context, f func(context.Context) error) error {
	k.calls++
	return f(ctx)
}

// TestResetStopsTheKubelet: with a supervisor, kubeadm reset runs while it has the kubelet stopped.
func TestResetStopsTheKubelet(t *testing.T) {
	exe := &fakeExec{}
	r := newRunner(t, exe, io.Discard)
	k := &stoppedKubelet{}
	r.Kubelet = k
	require.NoError(t, r.Reset(context.Background()))
	assert.Equal(t, 1, k.calls)
	assert.Equal(t, []string{"reset", "--force", "--v=1"}, exe.args)
}

// TestUpgrade: kubeadm's upgrade commands, with init's kernel check ignored; a failure names the command.
func TestUpgrade(t *testing.T) {
	exe := &fakeExec{}
	r := newRunner(t, exe, nil)
	require.NoError(t, r.UpgradeApply(context.Background(), "v1.34.10"))
	assert.Equal(t, []string{"upgrade", "apply", "v1.34.10", "--yes", "--ignore-preflight-errors=SystemVerification", "--v=1"}, exe.args)
	require.NoError(t, r.UpgradeNode(context.Background()))
	assert.Equal(t, []string{"upgrade", "node", "--ignore-preflight-errors=SystemVerification", "--v=1"}, exe.args)

	exe.err = errors.New("exit status 1")
	assert.EqualError(t, r.UpgradeApply(context.Background(), "v1.34.10"), "kubeadm upgrade apply v1.34.10: exit status 1")
}
