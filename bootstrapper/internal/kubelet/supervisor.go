// Package kubelet runs the node's kubelet the way systemd and kubeadm's drop-in would on a normal host: nodes
// here have no systemd, so the bootstrapper starts the kubelet with the files kubeadm wrote, restarts it with
// backoff when it dies, and stops it on shutdown. It also writes the kubelet's kubeconfig for a joining node.
package kubelet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Paths are the files kubeadm writes for the kubelet (kubeadm's constants), relative to Root.
type Paths struct {
	// Root prefixes every path; "" or "/" on a node, a temporary directory in tests.
	Root string
}

// Files kubeadm writes, as absolute paths on the node.
const (
	ConfigFile              = "/var/lib/kubelet/config.yaml"
	FlagsEnvFile            = "/var/lib/kubelet/kubeadm-flags.env"
	KubeconfigFile          = "/etc/kubernetes/kubelet.conf"
	BootstrapKubeconfigFile = "/etc/kubernetes/bootstrap-kubelet.conf"
	// ClientCertFile holds the kubelet's client certificate and key (the kubelet's certificate manager keeps
	// rotating it there).
	ClientCertFile = "/var/lib/kubelet/pki/kubelet-client-current.pem"
	// CACertFile is the cluster CA kubeadm writes during join (discovery verified it against the hash).
	CACertFile = "/etc/kubernetes/pki/ca.crt"
	// flagsEnvVar is the variable kubeadm's flags file sets.
	flagsEnvVar = "KUBELET_KUBEADM_ARGS"
)

// Path returns the path of a node file under p.Root.
func (p Paths) Path(file string) string {
	if p.Root == "" {
		return file
	}
	return filepath.Join(p.Root, file)
}

// Process is a started kubelet.
type Process interface {
	// Wait blocks until the process exits.
	Wait() error
	// Signal sends sig.
	Signal(sig os.Signal) error
}

// Starter starts the kubelet binary with args; its output goes to out.
type Starter interface {
	Start(args []string, out io.Writer) (Process, error)
}

// Backoff is the restart delay: Initial after the first exit, doubling up to Max; a kubelet that ran for at
// least Stable resets it.
type Backoff struct {
	Initial, Max, Stable time.Duration
}

// DefaultBackoff restarts quickly while kubeadm brings the node up and settles at systemd's usual 10 s.
var DefaultBackoff = Backoff{Initial: 500 * time.Millisecond, Max: 10 * time.Second, Stable: time.Minute}

// Supervisor keeps one kubelet running.
type Supervisor struct {
	starter   Starter
	paths     Paths
	extraArgs []string
	out       io.Writer
	log       *slog.Logger

	// Backoff is the restart policy.
	Backoff Backoff
	// PollInterval is how often to check for kubeadm's configuration before the first start.
	PollInterval time.Duration
	// StopGrace is how long the kubelet gets after SIGTERM before SIGKILL.
	StopGrace time.Duration

	starts atomic.Int64
	// pauses carries WhileStopped's requests to Run; running tells whether Run is there to take them.
	pauses  chan pause
	running atomic.Bool
}

// pause is a WhileStopped request: Run closes stopped once no kubelet runs, and waits for resume.
type pause struct {
	stopped, resume chan struct{}
}

// errPaused ends a kubelet run that WhileStopped stopped.
var errPaused = errors.New("stopped on request")

// errNotInstalled is a start that found no kubelet binary.
var errNotInstalled = errors.New("the kubelet is not installed yet")

// NewSupervisor returns a supervisor that starts the kubelet through starter with kubeadm's files under
// paths, plus extraArgs; the kubelet's output goes to out.
func NewSupervisor(starter Starter, paths Paths, extraArgs []string, out io.Writer, log *slog.Logger) *Supervisor {
	return &Supervisor{
		starter: starter, paths: paths, extraArgs: extraArgs, out: out, log: log,
		Backoff: DefaultBackoff, PollInterval: 250 * time.Millisecond, StopGrace: 10 * time.Second,
		pauses: make(chan pause),
	}
}

// WhileStopped stops the kubelet, runs f (`kubeadm reset`, or replacing the kubelet binary in an upgrade),
// and lets the supervisor go back to waiting for kubeadm's configuration, as `kubeadm reset` does on a host
// with systemd (it stops the kubelet service, and the next init or join starts it). Without this the kubelet of a failed or cut-off join keeps running with
// the configuration reset removed, and holds the port that the next join's preflight finds in use. If Run
// is not running, f just runs.
func (s *Supervisor) WhileStopped(ctx context.Context, f func(context.Context) error) error {
	if !s.running.Load() {
		return f(ctx)
	}
	p := pause{stopped: make(chan struct{}), resume: make(chan struct{})}
	defer close(p.resume)
	select {
	case s.pauses <- p:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-p.stopped:
	case <-ctx.Done():
		return ctx.Err()
	}
	return f(ctx)
}

// paused serves a WhileStopped request while no kubelet runs; false if ctx ended.
func paused(ctx context.Context, p pause) bool {
	close(p.stopped)
	select {
	case <-p.resume:
		return true
	case <-ctx.Done():
		return false
	}
}

// Starts returns how often the kubelet was started.
func (s *Supervisor) Starts() int64 {
	return s.starts.Load()
}

// Run keeps the kubelet running until ctx ends, then stops it and returns. It waits for kubeadm's kubelet
// configuration and flags before the first start (on a fresh node kubeadm writes them during init or join,
// and waits for the kubelet to come up), and reads kubeadm's flags file anew at every start.
func (s *Supervisor) Run(ctx context.Context) error {
	s.running.Store(true)
	defer s.running.Store(false)
	if !s.waitForConfig(ctx) {
		return nil
	}
	delay := s.Backoff.Initial
	waitingForBinary := false
	for {
		started := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errNotInstalled) {
			// Not a crash: the installer has not put the binary there yet (a node installs it after the images its
			// pods need, internal/components/install). Looked for every PollInterval, without the back-off, which
			// had grown to 8 s by the time a restarted control plane's images were in.
			if !waitingForBinary {
				s.log.Info("waiting for the kubelet binary to be installed", "error", err)
				waitingForBinary = true
			}
			if !s.idle(ctx, s.PollInterval) {
				return nil
			}
			continue
		}
		waitingForBinary = false
		if errors.Is(err, errPaused) {
			s.log.Info("kubelet stopped on request (kubeadm reset or a kubelet upgrade); waiting for kubeadm's configuration to start it again")
			if !s.waitForConfig(ctx) {
				return nil
			}
			delay = s.Backoff.Initial
			continue
		}
		if time.Since(started) >= s.Backoff.Stable {
			delay = s.Backoff.Initial
		}
		s.log.Warn("kubelet stopped; restarting", "error", err, "ran", time.Since(started).Round(time.Millisecond), "restartIn", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, s.Backoff.Max)
	}
}

// runOnce starts the kubelet and waits until it exits or ctx ends (then it stops it).
func (s *Supervisor) runOnce(ctx context.Context) error {
	args, err := s.Args()
	if err != nil {
		return err
	}
	p, err := s.starter.Start(args, s.out)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", errNotInstalled, err)
	}
	if err != nil {
		return fmt.Errorf("starting kubelet: %w", err)
	}
	n := s.starts.Add(1)
	s.log.Info("kubelet started", "start", n, "args", args)
	exited := make(chan error, 1)
	go func() { exited <- p.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			err = errors.New("kubelet exited with status 0")
		}
		return err
	case <-ctx.Done():
		s.stop(p, exited)
		return ctx.Err()
	case req := <-s.pauses:
		s.stop(p, exited)
		if !paused(ctx, req) {
			return ctx.Err()
		}
		return errPaused
	}
}

func (s *Supervisor) stop(p Process, exited <-chan error) {
	s.log.Info("stopping kubelet")
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(s.StopGrace):
	}
	s.log.Warn("kubelet did not stop in time; killing it", "grace", s.StopGrace)
	_ = p.Signal(syscall.SIGKILL)
	<-exited
}

// waitForConfig waits until kubeadm has written both the kubelet's configuration and its flags file (init
// writes the flags first, join the configuration first; a kubelet started without the flags would register
// the node without its --node-ip). An empty flags file is one being written.
func (s *Supervisor) waitForConfig(ctx context.Context) bool {
	logged := false
	for {
		if s.configReady() {
			return true
		}
		if !logged {
			s.log.Info("waiting for kubeadm to write the kubelet configuration", "files", []string{ConfigFile, FlagsEnvFile})
			logged = true
		}
		if !s.idle(ctx, s.PollInterval) {
			return false
		}
	}
}

// idle waits d while no kubelet runs, carrying out WhileStopped's requests meanwhile (a request ends the wait
// early); false once ctx ended.
func (s *Supervisor) idle(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case req := <-s.pauses:
		return paused(ctx, req)
	case <-time.After(d):
		return true
	}
}

func (s *Supervisor) configReady() bool {
	if _, err := os.Stat(s.paths.Path(ConfigFile)); err != nil {
		return false
	}
	fi, err := os.Stat(s.paths.Path(FlagsEnvFile))
	return err == nil && fi.Size() > 0
}

// Args returns the kubelet's command line, as kubeadm's systemd drop-in builds it: the kubeconfigs, the
// configuration file, the flags kubeadm wrote for this node, then the supervisor's extra arguments.
func (s *Supervisor) Args() ([]string, error) {
	args := []string{
		"--bootstrap-kubeconfig=" + BootstrapKubeconfigFile,
		"--kubeconfig=" + KubeconfigFile,
		"--config=" + ConfigFile,
	}
	kubeadmArgs, err := ReadFlagsEnv(s.paths.Path(FlagsEnvFile))
	if err != nil {
		return nil, err
	}
	return append(append(args, kubeadmArgs...), s.extraArgs...), nil
}

// ReadFlagsEnv reads kubeadm's kubeadm-flags.env (KUBELET_KUBEADM_ARGS="--a=b --c=d"). A missing file means
// no flags, as in the systemd drop-in's EnvironmentFile=-.
func ReadFlagsEnv(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading kubelet flags: %w", err)
	}
	defer f.Close()
	var args []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || name != flagsEnvVar {
			continue
		}
		if strings.HasPrefix(value, `"`) {
			if value, err = strconv.Unquote(value); err != nil {
				return nil, fmt.Errorf("reading kubelet flags: %s: bad quoting: %w", path, err)
			}
		}
		args = append(args, strings.Fields(value)...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading kubelet flags: %w", err)
	}
	return args, nil
}
