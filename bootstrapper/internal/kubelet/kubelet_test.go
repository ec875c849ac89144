package kubelet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeProcess is a kubelet that runs until the test (or a signal) ends it.
type fakeProcess struct {
	args    []string
	exit    chan error
	signals chan os.Signal
	// ignoreTerm makes the process survive SIGTERM, so the supervisor must kill it.
	ignoreTerm bool
	once       sync.Once
}

func (p *fakeProcess) Wait() error { return <-p.exit }

func (p *fakeProcess) Signal(sig os.Signal) error {
	p.signals <- sig
	if sig == syscall.SIGKILL || !p.ignoreTerm {
		p.crash(errors.New("signal: " + sig.String()))
	}
	return nil
}

func (p *fakeProcess) crash(err error) {
	p.once.Do(func() { p.exit <- err })
}

type fakeStarter struct {
	mu         sync.Mutex
	started    chan *fakeProcess
	startTimes []time.Time
	failStart  int // the first failStart starts fail
	ignoreTerm bool
}

func newFakeStarter() *fakeStarter {
	return &fakeStarter{started: make(chan *fakeProcess, 100)}
}

func (f *fakeStarter) Start(args []string, out io.Writer) (Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.startTimes = append(f.startTimes, time.Now())
	if f.failStart > 0 {
		f.failStart--
		return nil, errors.New("exec: kubelet: not found")
	}
	_, _ = io.WriteString(out, "kubelet output\n")
	p := &fakeProcess{args: args, exit: make(chan error, 1), signals: make(chan os.Signal, 4), ignoreTerm: f.ignoreTerm}
	f.started <- p
	return p, nil
}

func (f *fakeStarter) next(t *testing.T) *fakeProcess {
	t.Helper()
	select {
	case p := <-f.started:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("kubelet was not started")
		return nil
	}
}

func writeKubeadmFiles(t *testing.T, root string, flags string) {
	t.Helper()
	if flags == "" {
		flags = `KUBELET_KUBEADM_ARGS=""` + "\n"
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "var/lib/kubelet"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, FlagsEnvFile), []byte(flags), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, ConfigFile), []byte("kind: KubeletConfiguration\n"), 0o644))
}

func newTestSupervisor(starter Starter, root string, out io.Writer) *Supervisor {
	s := NewSupervisor(starter, Paths{Root: root}, []string{"--v=2"}, out, slog.New(slog.DiscardHandler))
	s.Backoff = Backoff{Initial: 20 * time.Millisecond, Max: 80 * time.Millisecond, Stable: time.Hour}
	s.PollInterval = 5 * time.Millisecond
	s.StopGrace = 50 * time.Millisecond
	return s
}

// run runs s until the test ends; stop cancels it and returns Run's result (it may be called repeatedly).
func run(t *testing.T, s *Supervisor) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- s.Run(ctx) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-ch:
			case <-time.After(10 * time.Second):
				result = errors.New("supervisor did not stop")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestSupervisorWaitsForKubeadmAndRestarts(t *testing.T) {
	root := t.TempDir()
	starter := newFakeStarter()
	out := &syncWriter{}
	s := newTestSupervisor(starter, root, out)
	stop := run(t, s)

	// Nothing starts before kubeadm wrote the configuration and the flags: kubeadm join writes the
	// configuration first.
	time.Sleep(50 * time.Millisecond)
	assert.Zero(t, s.Starts())
	require.NoError(t, os.MkdirAll(filepath.Join(root, "var/lib/kubelet"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, ConfigFile), []byte("kind: KubeletConfiguration\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, FlagsEnvFile), nil, 0o644))
	time.Sleep(50 * time.Millisecond)
	assert.Zero(t, s.Starts(), "an empty flags file is one being written")
	writeKubeadmFiles(t, root, `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip=10.42.0.2 --pod-infra-container-image=registry.k8s.io/pause:3.10"`+"\n")

	p := starter.next(t)
	assert.Equal(t, []string{
		"--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
		"--kubeconfig=/etc/kubernetes/kubelet.conf",
		"--config=/var/lib/kubelet/config.yaml",
		"--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
		"--node-ip=10.42.0.2",
		"--pod-infra-container-image=registry.k8s.io/pause:3.10",
		"--v=2",
	}, p.args)

	// Each crash is followed by a restart; the delay grows up to the maximum.
	for range 4 {
		p.crash(errors.New("exit status 1"))
		p = starter.next(t)
	}
	require.Eventually(t, func() bool { return s.Starts() == 5 }, 5*time.Second, time.Millisecond)
	starter.mu.Lock()
	times := append([]time.Time(nil), starter.startTimes...)
	starter.mu.Unlock()
	require.Len(t, times, 5)
	gaps := make([]time.Duration, 0, 4)
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]))
	}
	assert.GreaterOrEqual(t, gaps[0], 20*time.Millisecond)
	assert.GreaterOrEqual(t, gaps[1], 40*time.Millisecond)
	assert.GreaterOrEqual(t, gaps[2], 80*time.Millisecond)
	assert.GreaterOrEqual(t, gaps[3], 80*time.Millisecond)
	assert.Less(t, gaps[3], 2*time.Second, "the delay is capped")

	// The flags file is read again at every start.
	writeKubeadmFiles(t, root, `KUBELET_KUBEADM_ARGS="--node-ip=10.42.0.9"`+"\n")
	p.crash(errors.New("exit status 1"))
	p = starter.next(t)
	assert.Contains(t, p.args, "--node-ip=10.42.0.9")

	// Shutdown stops the running kubelet with SIGTERM and returns.
	require.NoError(t, stop())
	assert.Equal(t, syscall.SIGTERM, <-p.signals)
	assert.Contains(t, out.String(), "kubelet output")
}

func TestSupervisorKillsAStuckKubelet(t *testing.T) {
	root := t.TempDir()
	writeKubeadmFiles(t, root, "")
	starter := newFakeStarter()
	starter.ignoreTerm = true
	s := newTestSupervisor(starter, root, io.Discard)
	stop := run(t, s)
	p := starter.next(t)
	require.NoError(t, stop())
	assert.Equal(t, syscall.SIGTERM, <-p.signals)
	assert.Equal(t, syscall.SIGKILL, <-p.signals)
}

func TestSupervisorRetriesFailedStarts(t *testing.T) {
	root := t.TempDir()
	writeKubeadmFiles(t, root, "")
	starter := newFakeStarter()
	starter.failStart = 2
	s := newTestSupervisor(starter, root, io.Discard)
	run(t, s)
	p := starter.next(t)
	assert.NotNil(t, p)
	starter.mu.Lock()
	assert.Len(t, starter.startTimes, 3)
	starter.mu.Unlock()
}

func TestSupervisorStopsWhileWaiting(t *testing.T) {
	s := newTestSupervisor(newFakeStarter(), t.TempDir(), io.Discard)
	stop := run(t, s)
	require.NoError(t, stop())
	assert.Zero(t, s.Starts())
}

func TestSupervisorStableKubeletResetsBackoff(t *testing.T) {
	root := t.TempDir()
	writeKubeadmFiles(t, root, "")
	starter := newFakeStarter()
	s := newTestSupervisor(starter, root, io.Discard)
	s.Backoff = Backoff{Initial: 10 * time.Millisecond, Max: 5 * time.Second, Stable: 30 * time.Millisecond}
	run(t, s)
	p := starter.next(t)
	time.Sleep(40 * time.Millisecond) // ran long enough to count as stable
	start := time.Now()
	p.crash(errors.New("exit status 1"))
	starter.next(t)
	assert.Less(t, time.Since(start), 2*time.Second, "restarted after the initial delay")
}

// TestSupervisorWaitsForTheBinary: a kubelet binary that is not installed yet is looked for every
// PollInterval, however long that takes, not with the growing restart back-off (an hour here).
func TestSupervisorWaitsForTheBinary(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	root := t.TempDir()
	writeKubeadmFiles(t, root, "")
	script := filepath.Join(root, "bin/kubelet")
	s := newTestSupervisor(ExecStarter{Path: script}, root, io.Discard)
	s.Backoff = Backoff{Initial: time.Hour, Max: time.Hour, Stable: time.Hour}
	run(t, s)
	time.Sleep(50 * time.Millisecond) // several looks find nothing
	assert.Zero(t, s.Starts())
	require.NoError(t, os.MkdirAll(filepath.Dir(script), 0o755))
	require.NoError(t, os.WriteFile(script, []byte("#!"+sh+"\nexec sleep 60\n"), 0o755))
	assert.Eventually(t, func() bool { return s.Starts() == 1 }, 5*time.Second, 5*time.Millisecond)
}

// TestExecStarter runs a real process through the supervisor: a shell script standing in for the kubelet
// that exits once, then stays up until stopped.
func TestExecStarter(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	root := t.TempDir()
	writeKubeadmFiles(t, root, `KUBELET_KUBEADM_ARGS="--node-ip=10.42.0.2"`+"\n")
	marker := filepath.Join(root, "ran-once")
	script := filepath.Join(root, "kubelet")
	require.NoError(t, os.WriteFile(script, []byte("#!"+sh+"\necho \"args: $*\"\nif [ ! -e "+marker+" ]; then touch "+marker+"; exit 3; fi\nexec sleep 60\n"), 0o755))
	var out syncWriter
	s := newTestSupervisor(ExecStarter{Path: script}, root, &out)
	stop := run(t, s)
	require.Eventually(t, func() bool { return s.Starts() == 2 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, stop())
	assert.Contains(t, out.String(), "args: --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf")
	assert.EqualValues(t, 2, s.Starts())
}

func TestReadFlagsEnv(t *testing.T) {
	testCases := map[string]struct {
		content string
		want    []string
		wantErr bool
	}{
		"kubeadm's format": {content: `KUBELET_KUBEADM_ARGS="--a=b --c=d"` + "\n", want: []string{"--a=b", "--c=d"}},
		"unquoted":         {content: "KUBELET_KUBEADM_ARGS=--a=b\n", want: []string{"--a=b"}},
		"comments, others": {content: "# x\nOTHER=1\n\nKUBELET_KUBEADM_ARGS=\"--a=b\"\n", want: []string{"--a=b"}},
		"bad quoting":      {content: `KUBELET_KUBEADM_ARGS="--a=b` + "\n", wantErr: true},
		"empty":            {content: ""},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kubeadm-flags.env")
			require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o644))
			got, err := ReadFlagsEnv(path)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	got, err := ReadFlagsEnv(filepath.Join(t.TempDir(), "missing"))
	require.NoError(t, err)
	assert.Empty(t, got)
}

func TestWriteKubeconfig(t *testing.T) {
	key, csrDER, err := NewClientKey("worker-0")
	require.NoError(t, err)
	csr, err := x509.ParseCertificateRequest(csrDER)
	require.NoError(t, err)
	require.NoError(t, csr.CheckSignature())
	assert.Equal(t, "system:node:worker-0", csr.Subject.CommonName)
	assert.Equal(t, []string{"system:nodes"}, csr.Subject.Organization)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	certDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: csr.Subject,
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}, ca, csr.PublicKey, caKey)
	require.NoError(t, err)

	p := Paths{Root: t.TempDir()}
	require.NoError(t, p.WriteKubeconfig("https://10.42.0.2:6443", certDER, key))
	cfg, err := clientcmd.LoadFromFile(p.Path(KubeconfigFile))
	require.NoError(t, err)
	ctx := cfg.Contexts[cfg.CurrentContext]
	assert.Equal(t, "https://10.42.0.2:6443", cfg.Clusters[ctx.Cluster].Server)
	assert.Equal(t, CACertFile, cfg.Clusters[ctx.Cluster].CertificateAuthority)
	assert.Equal(t, ClientCertFile, cfg.AuthInfos[ctx.AuthInfo].ClientCertificate)

	pemData, err := os.ReadFile(p.Path(ClientCertFile))
	require.NoError(t, err)
	fi, err := os.Stat(p.Path(ClientCertFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	block, rest := pem.Decode(pemData)
	require.NotNil(t, block)
	assert.Equal(t, certDER, block.Bytes)
	keyBlock, _ := pem.Decode(rest)
	require.NotNil(t, keyBlock)
	parsed, err := x509.ParseECPrivateKey(keyBlock.Bytes)
	require.NoError(t, err)
	assert.True(t, parsed.Equal(key))

	// A certificate for another key is refused.
	other, _, err := NewClientKey("worker-0")
	require.NoError(t, err)
	require.Error(t, p.WriteKubeconfig("https://10.42.0.2:6443", certDER, other))
	require.Error(t, p.WriteKubeconfig("https://10.42.0.2:6443", []byte("junk"), key))
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		s.w = &bytes.Buffer{}
	}
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		return ""
	}
	return s.w.String()
}

// TestSupervisorWhileStopped: kubeadm reset runs with the kubelet stopped, removes its configuration, and the
// kubelet starts again only once the next join has written a new one; without a running supervisor the
// reset just runs.
func TestSupervisorWhileStopped(t *testing.T) {
	root := t.TempDir()
	writeKubeadmFiles(t, root, "")
	starter := newFakeStarter()
	s := newTestSupervisor(starter, root, io.Discard)
	stop := run(t, s)
	p := starter.next(t)

	var sawRunning bool
	require.NoError(t, s.WhileStopped(context.Background(), func(context.Context) error {
		select {
		case sig := <-p.signals:
			assert.Equal(t, syscall.SIGTERM, sig)
		default:
			sawRunning = true
		}
		// What kubeadm reset does to the kubelet's files.
		require.NoError(t, os.Remove(filepath.Join(root, ConfigFile)))
		require.NoError(t, os.Remove(filepath.Join(root, FlagsEnvFile)))
		return nil
	}))
	assert.False(t, sawRunning, "the kubelet was stopped before the reset ran")
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, int64(1), s.Starts(), "no kubelet without a configuration")
	writeKubeadmFiles(t, root, "")
	p = starter.next(t)
	// The supervisor counts a start once Start returned, which is after the fake handed the process out.
	require.Eventually(t, func() bool { return s.Starts() == 2 }, 5*time.Second, time.Millisecond)

	// Another reset stops the second kubelet; one while the supervisor waits for a configuration returns too.
	require.NoError(t, s.WhileStopped(context.Background(), func(context.Context) error {
		require.NoError(t, os.Remove(filepath.Join(root, ConfigFile)))
		return nil
	}))
	require.NoError(t, s.WhileStopped(context.Background(), func(context.Context) error { return nil }))
	require.NoError(t, stop())

	// Without Run, the reset runs on its own; its error is returned.
	boom := errors.New("kubeadm reset: exit status 1")
	assert.ErrorIs(t, s.WhileStopped(context.Background(), func(context.Context) error { return boom }), boom)
}
