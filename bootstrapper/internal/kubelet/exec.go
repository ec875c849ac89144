package kubelet

import (
	"io"
	"os"
	"os/exec"
	"syscall"
)

// ExecStarter starts the kubelet binary at Path with environment Env (nil: the bootstrapper's own).
type ExecStarter struct {
	Path string
	Env  []string
}

// Start runs the kubelet. It gets its own process group and SIGTERM if the bootstrapper dies, so that a
// restarted bootstrapper does not find an orphaned kubelet holding its ports.
func (e ExecStarter) Start(args []string, out io.Writer) (Process, error) {
	cmd := exec.Command(e.Path, args...)
	cmd.Env = e.Env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return execProcess{cmd}, nil
}

type execProcess struct{ cmd *exec.Cmd }

func (p execProcess) Wait() error                { return p.cmd.Wait() }
func (p execProcess) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }
