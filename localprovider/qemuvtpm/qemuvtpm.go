// Package qemuvtpm gives the qemu provider's VMs certified vTPMs. libvirt would start an swtpm of its own
// and "manufacture" it with swtpm_setup, whose certificates chain to nothing the admin configured. Instead,
// as the local provider does for its nodes, the platform is the vTPM's manufacturer: Ensure creates the
// vTPM's state, certifies it with the cluster's platform CA (an EK certificate, an AK certificate naming the
// node, and the CA's certificate, in write-locked NV), and runs swtpm with only a control socket, which the
// VM's QEMU connects to through libvirt's external TPM backend. The files, in the vTPM's directory (0700):
//
//	state/       swtpm's state: the endorsement seed (so the AK) and the NV certificates
//	swtpm.json   the running swtpm (PID and start time)
//	swtpm.log    its log (appended)
//
// The control socket (VTPM.Socket, 0600, owned by the user QEMU runs as) lives apart from them, in a
// directory every parent of which QEMU's user may traverse but not list (0711), typically below /run.
//
// The swtpm outlives the process that started it (the Terraform provider); a VM that stops and starts
// again finds it listening. After a reboot of the host, Ensure starts it again with the same state.
package qemuvtpm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm"
	"github.com/constellation-go/constellation/localprovider/proc"
	"github.com/spf13/afero"
)

// DefaultOwner is the user Debian's libvirt runs QEMU as.
const DefaultOwner = "libvirt-qemu"

const startTimeout = 10 * time.Second

// VTPM is a vTPM: its directory and the path of its control socket, both absolute.
type VTPM struct {
	Dir, Socket string
}

func (v VTPM) stateDir() string { return filepath.Join(v.Dir, "state") }
func (v VTPM) pidFile() string  { return filepath.Join(v.Dir, "swtpm.json") }
func (v VTPM) logFile() string  { return filepath.Join(v.Dir, "swtpm.log") }
func (v VTPM) setupDir() string { return filepath.Join(v.Dir, "setup") }

// Ensure makes the vTPM named name certified by ca and running for QEMU, whose control socket belongs to
// the user owner; it does what is missing and is idempotent. A vTPM certified by another CA is refused
// (manufacturer.ErrOtherManufacturer).
func Ensure(ctx context.Context, v VTPM, ca *manufacturer.CA, name, owner string) error {
	uid, gid, err := lookupOwner(owner)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(v.Dir) || !filepath.IsAbs(v.Socket) {
		return fmt.Errorf("the vTPM's directory %q and socket %q must be absolute", v.Dir, v.Socket)
	}
	if err := os.MkdirAll(v.Dir, 0o700); err != nil {
		return err
	}
	if err := traversable(filepath.Dir(v.Socket), owner); err != nil {
		return err
	}
	// The QEMU-facing swtpm only ever starts after certify succeeded, so a running one is certified.
	if _, ok := v.running(); ok {
		return nil
	}
	if err := certify(ctx, v, ca, name); err != nil {
		return fmt.Errorf("certifying the vTPM of %s: %w", name, err)
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return swtpm.ErrNotInstalled
	}
	if err := os.Remove(v.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	cmd := exec.Command(bin, swtpm.QEMUArgs(v.stateDir(), v.Socket, uid, gid)...)
	p, err := proc.StartDetached(ctx, "swtpm", cmd, v.logFile(), v.Socket, startTimeout)
	if err != nil {
		return err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return file.NewHandler(afero.NewOsFs()).Write(v.pidFile(), data, file.OptOverwrite)
}

// certify runs the vTPM once with a command socket of its own and has ca certify it (idempotent: a vTPM
// this CA certified is left alone). Its state is saved when that swtpm stops.
func certify(ctx context.Context, v VTPM, ca *manufacturer.CA, name string) error {
	// swtpm.Start keeps its state in <dir>/state: the setup directory's state is a link to the vTPM's, so that
	// the sockets of this run stay apart from QEMU's.
	if err := os.MkdirAll(v.stateDir(), 0o700); err != nil {
		return err
	}
	if err := os.RemoveAll(v.setupDir()); err != nil {
		return err
	}
	if err := os.MkdirAll(v.setupDir(), 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(v.setupDir())
	if err := os.Symlink(v.stateDir(), filepath.Join(v.setupDir(), "state")); err != nil {
		return err
	}
	p, err := swtpm.Start(ctx, v.setupDir())
	if err != nil {
		return err
	}
	t, err := tpm.Open(p.Address())
	if err != nil {
		_ = p.Stop()
		return err
	}
	err = ca.Manufacture(t, name)
	_ = t.Close()
	if stopErr := p.Stop(); err == nil && stopErr != nil {
		err = fmt.Errorf("saving the vTPM's state: %w", stopErr)
	}
	return err
}

// Running tells whether the vTPM's swtpm runs.
func Running(v VTPM) bool {
	_, ok := v.running()
	return ok
}

func (v VTPM) running() (proc.Process, bool) {
	data, err := os.ReadFile(v.pidFile())
	if err != nil {
		return proc.Process{}, false
	}
	var p proc.Process
	if json.Unmarshal(data, &p) != nil || !p.Alive() {
		return proc.Process{}, false
	}
	return p, true
}

// Stop stops the vTPM's swtpm, keeping its state (as a reboot of the host does).
func Stop(ctx context.Context, v VTPM) error {
	if p, ok := v.running(); ok {
		return stop(ctx, p, v)
	}
	return nil
}

// Remove stops the vTPM's swtpm and deletes its directory: the vTPM and its keys are gone.
func Remove(ctx context.Context, v VTPM) error {
	if p, ok := v.running(); ok {
		if err := stop(ctx, p, v); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(v.Dir); err != nil {
		return fmt.Errorf("removing the vTPM: %w", err)
	}
	// The socket's directory too, if this was its last vTPM.
	_ = os.Remove(filepath.Dir(v.Socket))
	return nil
}

// stop ends a running swtpm. QEMU holds its control channel while the VM runs, so the control protocol's
// shutdown is not an option; SIGTERM makes swtpm save its state and exit.
func stop(ctx context.Context, p proc.Process, v VTPM) error {
	if _, err := p.Terminate(ctx, 5*time.Second); err != nil {
		return fmt.Errorf("stopping the vTPM's swtpm: %w", err)
	}
	_ = os.Remove(v.Socket)
	_ = os.Remove(v.pidFile())
	return nil
}

// traversable creates dir (and its missing parents) with mode 0711, so that QEMU's user can reach a socket
// in it without listing it, and checks that QEMU's user may traverse every existing parent: directories
// that exist are the admin's, and are not changed.
func traversable(dir, owner string) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if errors.Is(err, os.ErrNotExist) {
			missing = append(missing, d)
			continue
		}
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("QEMU (user %s) cannot reach the vTPM socket's directory %s: %s is not traversable by others (chmod o+x %s, or choose another socket directory)",
				owner, dir, d, d)
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o711); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		// Mkdir's mode is subject to the umask.
		if err := os.Chmod(missing[i], 0o711); err != nil {
			return err
		}
	}
	return nil
}

// lookupOwner returns the user's and its primary group's IDs.
func lookupOwner(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("the vTPM socket's owner %q (the user QEMU runs as; see user in libvirt's qemu.conf): %w", name, err)
	}
	if uid, err = strconv.Atoi(u.Uid); err != nil {
		return 0, 0, err
	}
	if gid, err = strconv.Atoi(u.Gid); err != nil {
		return 0, 0, err
	}
	return uid, gid, nil
}
