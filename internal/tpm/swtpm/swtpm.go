// Package swtpm runs swtpm vTPM processes: one per local node, and one per test that needs a real TPM.
package swtpm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// ErrNotInstalled is returned when the swtpm binary is missing.
var ErrNotInstalled = errors.New("swtpm is not installed (Debian: apt-get install swtpm)")

const (
	socketName  = "tpm.sock"
	ctrlName    = "ctrl.sock"
	stateSubdir = "state"
	// startTimeout bounds how long swtpm may take to create its socket.
	startTimeout = 10 * time.Second
	stopTimeout  = 5 * time.Second
)

// Process is a running swtpm.
type Process struct {
	dir    string
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *lockedBuffer

	stopOnce sync.Once
	stopErr  error
}

// Option changes how Start starts the TPM.
type Option func(*options)

type options struct {
	startupLocality uint8
}

// StartupLocality makes Start issue TPM2_Startup from locality l, as platforms with an H-CRTM or a DRTM
// start their TPM: PCR 0 then starts as 31 zero bytes followed by l instead of all zeros (firmware records
// this with a StartupLocality event).
func StartupLocality(l uint8) Option {
	return func(o *options) { o.startupLocality = l }
}

// Start runs swtpm with its state in dir (created if missing). The TPM keeps its state in dir across
// restarts: starting again on the same dir gives the same endorsement seed, hence the same keys.
// The TPM is started up (TPM2_Startup(CLEAR)) before Start returns, so it is usable right away.
func Start(ctx context.Context, dir string, opts ...Option) (*Process, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, ErrNotInstalled
	}
	stateDir := filepath.Join(dir, stateSubdir)
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating swtpm state directory: %w", err)
	}
	sock, ctrl := filepath.Join(dir, socketName), filepath.Join(dir, ctrlName)
	for _, stale := range []string{sock, ctrl} {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	p := &Process{dir: dir, done: make(chan struct{}), stderr: &lockedBuffer{}}
	flags := "not-need-init,startup-clear"
	if o.startupLocality != 0 {
		flags = "not-need-init" // started up below, from the locality asked for
	}
	// Not exec.CommandContext: the process must outlive the start context; Stop ends it.
	p.cmd = exec.Command(bin, args(stateDir, sock, ctrl, flags)...)
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	// Its own process group, so a Ctrl-C in a terminal reaches the CLI, which then stops it in order.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()

	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		// The socket file appears when swtpm binds, before it listens: only a connection proves it is ready.
		if conn, err := net.Dial("unix", sock); err == nil {
			_ = conn.Close()
			if o.startupLocality != 0 {
				if err := p.startupAt(o.startupLocality); err != nil {
					_ = p.Stop()
					return nil, err
				}
			}
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("swtpm exited during start-up: %s", p.stderr.String())
		case <-ctx.Done():
			_ = p.Stop()
			return nil, fmt.Errorf("starting swtpm: %w", ctx.Err())
		case <-deadline.C:
			_ = p.Stop()
			return nil, fmt.Errorf("swtpm did not create %s within %s: %s", sock, startTimeout, p.stderr.String())
		case <-tick.C:
		}
	}
}

// Args are swtpm's arguments for a TPM 2.0 with its state in stateDir, its command socket at sock and its
// control socket at ctrl, started up by itself (startup-clear) and usable as soon as sock accepts
// connections. Callers that manage the process themselves (the local provider's nodes) use these, so that
// every vTPM the project starts is the same.
func Args(stateDir, sock, ctrl string) []string {
	return args(stateDir, sock, ctrl, "not-need-init,startup-clear")
}

// QEMUArgs are swtpm's arguments for a TPM 2.0 with its state in stateDir that a QEMU VM drives as its TPM
// (QEMU's tpm-emulator backend, libvirt's external TPM backend): only a control socket at ctrl, owned by
// uid:gid with mode 0600, through which QEMU powers the TPM on and passes it the data channel. Whoever can
// connect to ctrl can reset the TPM's PCRs, so only the VM's QEMU may.
func QEMUArgs(stateDir, ctrl string, uid, gid int) []string {
	return []string{"socket", "--tpm2",
		"--tpmstate", "dir=" + stateDir,
		"--ctrl", fmt.Sprintf("type=unixio,path=%s,mode=0600,uid=%d,gid=%d", ctrl, uid, gid),
	}
}

func args(stateDir, sock, ctrl, flags string) []string {
	return []string{"socket", "--tpm2",
		"--tpmstate", "dir=" + stateDir,
		"--server", "type=unixio,path=" + sock,
		"--ctrl", "type=unixio,path=" + ctrl,
		"--flags", flags,
	}
}

// SocketPath is the TPM command socket, for tpm.OpenSocket.
func (p *Process) SocketPath() string {
	return filepath.Join(p.dir, socketName)
}

// Address is the TPM address for tpm.Open.
func (p *Process) Address() string {
	return "swtpm:" + p.SocketPath()
}

// Stop terminates swtpm (SIGTERM, then SIGKILL after a grace period) and waits for it. It is safe to call
// more than once.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		// The control channel's shutdown saves the TPM state and exits; some swtpm versions do not react
		// to SIGTERM while idle. Signals are the fallback.
		if err := p.shutdown(); err != nil {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			p.stopErr = fmt.Errorf("swtpm did not stop within %s and was killed", stopTimeout)
		}
		for _, sock := range []string{p.SocketPath(), filepath.Join(p.dir, ctrlName)} {
			_ = os.Remove(sock)
		}
	})
	return p.stopErr
}

// Commands of swtpm's control protocol (big-endian command code, then a 4-byte result).
const (
	cmdShutdown    = 0x00000003
	cmdSetLocality = 0x00000005
)

func (p *Process) shutdown() error {
	return Shutdown(filepath.Join(p.dir, ctrlName))
}

// Shutdown asks the swtpm whose control socket is ctrl to save its state and exit (CMD_SHUTDOWN).
func Shutdown(ctrl string) error {
	return control(ctrl, cmdShutdown, nil)
}

func (p *Process) control(code uint32, payload []byte) error {
	return control(filepath.Join(p.dir, ctrlName), code, payload)
}

// control sends one command on the control channel ctrl.
func control(ctrl string, code uint32, payload []byte) error {
	conn, err := net.DialTimeout("unix", ctrl, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	cmd := binary.BigEndian.AppendUint32(nil, code)
	if _, err := conn.Write(append(cmd, payload...)); err != nil {
		return err
	}
	var result [4]byte
	if _, err := io.ReadFull(conn, result[:]); err != nil {
		return err
	}
	if rc := binary.BigEndian.Uint32(result[:]); rc != 0 {
		return fmt.Errorf("swtpm control command %#x returned %#x", code, rc)
	}
	return nil
}

// startupAt issues TPM2_Startup(CLEAR) from locality l, then returns to locality 0 for normal commands.
func (p *Process) startupAt(l uint8) error {
	if err := p.control(cmdSetLocality, []byte{l}); err != nil {
		return fmt.Errorf("setting swtpm locality %d: %w", l, err)
	}
	conn, err := net.DialTimeout("unix", p.SocketPath(), time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(transport.FromReadWriter(conn)); err != nil {
		return fmt.Errorf("TPM2_Startup at locality %d: %w", l, err)
	}
	if err := p.control(cmdSetLocality, []byte{0}); err != nil {
		return fmt.Errorf("resetting swtpm locality: %w", err)
	}
	return nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} {
	return p.done
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// swtpm is quiet; cap what a misbehaving one can make us hold.
	if b.buf.Len() > 64<<10 {
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
