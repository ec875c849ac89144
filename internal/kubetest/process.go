package kubetest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// logLimit bounds the output kept of each process: only the tail matters for a failure message.
const logLimit = 256 << 10

// tailBuffer is an io.Writer keeping the last limit bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	limit   int
	buf     []byte
	dropped int64
}

func newTailBuffer(limit int) *tailBuffer {
	return &tailBuffer{limit: limit}
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if len(p) > b.limit {
		b.dropped += int64(len(p) - b.limit)
		p = p[len(p)-b.limit:]
	}
	if over := len(b.buf) + len(p) - b.limit; over > 0 {
		b.dropped += int64(over)
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

// Tail returns at most the last maxLines lines written.
func (b *tailBuffer) Tail(maxLines int) string {
	b.mu.Lock()
	s := string(b.buf)
	dropped := b.dropped
	b.mu.Unlock()
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	cut := dropped > 0
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
		cut = true
	}
	out := strings.Join(lines, "\n")
	if cut {
		out = "[...]\n" + out
	}
	return out
}

// process is a child process running in its own process group, with its output captured.
type process struct {
	name string
	path string
	args []string
	dir  string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{} // closed when the process has exited and its output is drained
	err  error         // Wait's result; read only after done is closed
}

func startProcess(name, path string, args []string, dir string) (*process, error) {
	p := &process{name: name, path: path, args: args, dir: dir, out: newTailBuffer(logLimit), done: make(chan struct{})}
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "TMPDIR=" + dir}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// Dies with the test binary even if the test is killed before its cleanups run.
		Pdeathsig: syscall.SIGKILL,
	}
	// Do not wait for output forever once the process has exited.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// kill ends the process group at once (SIGKILL), as a crash would, and waits for it.
func (p *process) kill() {
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL if it has not exited after grace. It returns once the
// process has been waited for.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Anything else left in the group (there should be nothing) goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// describe returns the exit status (if exited) and the output tail, for failure messages.
func (p *process) describe() string {
	status := "still running"
	if p.exited() {
		status = "exited"
		if p.err != nil {
			status = "exited: " + p.err.Error()
		}
	}
	return fmt.Sprintf("--- %s (%s), last output:\n%s\n--- end of %s output", p.name, status, p.out.Tail(60), p.name)
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. The listeners are held until all ports are
// chosen, so the same port is never returned twice; another process may still take one before it is used,
// which the caller handles by retrying.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		addr, ok := l.Addr().(*net.TCPAddr)
		if !ok {
			return nil, errors.New("listener has no TCP address")
		}
		ports = append(ports, addr.Port)
	}
	return ports, nil
}

// isAddrInUse reports whether the process output suggests it could not bind its port.
func isAddrInUse(p *process) bool {
	return strings.Contains(p.out.Tail(200), "address already in use")
}

var _ io.Writer = (*tailBuffer)(nil)
