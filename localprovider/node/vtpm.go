package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	cmd := exec.Command(bin, swtpm.Args(stateDir, l.vtpmSocket(), l.vtpmCtrl())...)
	return proc.StartDetached(ctx, "swtpm", cmd, LogFile(l.dir, "swtpm"), l.vtpmSocket(), 10*time.Second)
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
