package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/constellation-go/constellation/internal/tpm/swtpm"
	"github.com/constellation-go/constellation/localprovider/proc"
)

// startSwtpm starts the node's swtpm with internal/tpm/swtpm's arguments (state in vtpm/state, TPM and
// control sockets, started up), but writing to the node's swtpm.log instead of a pipe and in its own
// session, so that it outlives the process that started the node. Powering it on resets the PCRs; the
// state directory keeps the endorsement seed and so the keys.
func startSwtpm(ctx context.Context, l layout) (proc.Process, error) {
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return proc.Process{}, swtpm.ErrNotInstalled
	}
	stateDir := filepath.Join(l.vtpmDir(), "state")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return proc.Process{}, err
	}
	for _, stale := range []string{l.vtpmSocket(), l.vtpmCtrl()} {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return proc.Process{}, err
		}
	}
	logf, err := os.OpenFile(LogFile(l.dir, "swtpm"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return proc.Process{}, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, swtpm.Args(stateDir, l.vtpmSocket(), l.vtpmCtrl())...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return proc.Process{}, fmt.Errorf("starting swtpm: %w", err)
	}
	reaped := proc.Adopt(cmd.Process.Pid)
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
		reaped()
	}()
	p, err := proc.New(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return proc.Process{}, fmt.Errorf("swtpm exited during start-up; see %s", LogFile(l.dir, "swtpm"))
	}
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		// The socket appears when swtpm binds, before it listens: only a connection proves it is ready.
		if conn, err := net.Dial("unix", l.vtpmSocket()); err == nil {
			_ = conn.Close()
			return p, nil
		}
		select {
		case <-exited:
			return proc.Process{}, fmt.Errorf("swtpm exited during start-up; see %s", LogFile(l.dir, "swtpm"))
		case <-ctx.Done():
			_, _ = p.Terminate(context.Background(), time.Second)
			return proc.Process{}, fmt.Errorf("starting swtpm: %w", ctx.Err())
		case <-deadline.C:
			_, _ = p.Terminate(context.Background(), time.Second)
			return proc.Process{}, fmt.Errorf("swtpm did not create %s within 10 s; see %s", l.vtpmSocket(), LogFile(l.dir, "swtpm"))
		case <-tick.C:
		}
	}
}

// stopSwtpm shuts swtpm down through its control socket (which saves its state), falling back to signals.
func stopSwtpm(ctx context.Context, p proc.Process, l layout) error {
	if p.Alive() {
		// Then wait briefly; terminate below does what is left.
		if swtpm.Shutdown(l.vtpmCtrl()) == nil {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_ = p.Wait(wctx)
			cancel()
		}
		if _, err := p.Terminate(ctx, 5*time.Second); err != nil {
			return fmt.Errorf("stopping swtpm: %w", err)
		}
	}
	for _, sock := range []string{l.vtpmSocket(), l.vtpmCtrl()} {
		_ = os.Remove(sock)
	}
	return nil
}
