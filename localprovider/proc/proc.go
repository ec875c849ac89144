// Package proc identifies host processes across programs (PID plus start time, so a reused PID is told
// apart) and stops them: the local provider's node runtime and its daemon record theirs in state files.
package proc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process identifies a process across processes of the host: its PID and its start time (field 22 of
// /proc/<pid>/stat, in clock ticks since boot), which tells a reused PID apart.
type Process struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// New records the running process pid.
func New(pid int) (Process, error) {
	start, _, err := procStat(pid)
	if err != nil {
		return Process{}, err
	}
	return Process{PID: pid, Start: start}, nil
}

// procStat returns a process's start time and state letter.
func procStat(pid int) (uint64, byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command (field 2) is in parentheses and may contain anything: parse after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); the start time is field 22.
	if len(fields) < 20 {
		return 0, 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
	}
	return start, fields[0][0], nil
}

// Alive tells whether the process runs: it exists, is not a zombie, and has the recorded start time.
func (p Process) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, state, err := procStat(p.PID)
	return err == nil && start == p.Start && state != 'Z' && state != 'X'
}

// Signal sends sig if the process is still the recorded one.
func (p Process) Signal(sig syscall.Signal) error {
	if !p.Alive() {
		return nil
	}
	if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling process %d: %w", p.PID, err)
	}
	return nil
}

// children are the processes this process started and reaps (with exec.Cmd.Wait): waiting for their end
// must wait for the reaping, or the zombie would look alive to others and hold its PID.
var children struct {
	mu   sync.Mutex
	done map[int]chan struct{}
}

// Adopt records that this process reaps pid; the returned function must be called once it has.
func Adopt(pid int) func() {
	children.mu.Lock()
	defer children.mu.Unlock()
	if children.done == nil {
		children.done = map[int]chan struct{}{}
	}
	ch := make(chan struct{})
	children.done[pid] = ch
	return func() {
		children.mu.Lock()
		defer children.mu.Unlock()
		delete(children.done, pid)
		close(ch)
	}
}

// Wait waits until the process has ended (and, if it is this process's child, was reaped), or until ctx
// ends.
func (p Process) Wait(ctx context.Context) error {
	children.mu.Lock()
	ch := children.done[p.PID]
	children.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for p.Alive() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Terminate sends SIGTERM, waits up to grace, then sends SIGKILL and waits up to 10 s more. It returns an
// error only if the process survives that.
func (p Process) Terminate(ctx context.Context, grace time.Duration) (killed bool, err error) {
	if !p.Alive() {
		return false, p.Wait(ctx)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return false, err
	}
	wctx, cancel := context.WithTimeout(ctx, grace)
	err = p.Wait(wctx)
	cancel()
	if err == nil {
		return false, nil
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return true, err
	}
	wctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := p.Wait(wctx); err != nil {
		return true, fmt.Errorf("process %d survived SIGKILL: %w", p.PID, err)
	}
	return true, nil
}

// StartDetached starts cmd in its own session, writing to the file logPath (appended), so that it outlives
// the process that started it, and waits until it accepts connections on the Unix socket readySocket (the
// socket file appears when a server binds, before it listens: only a connection proves it is ready). It
// gives up after timeout or when ctx ends, terminating the process. name says what it is, in errors.
func StartDetached(ctx context.Context, name string, cmd *exec.Cmd, logPath, readySocket string, timeout time.Duration) (Process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return Process{}, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("starting %s: %w", name, err)
	}
	reaped := Adopt(cmd.Process.Pid)
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
		reaped()
	}()
	p, err := New(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return Process{}, fmt.Errorf("%s exited during start-up; see %s", name, logPath)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.Dial("unix", readySocket); err == nil {
			_ = conn.Close()
			return p, nil
		}
		select {
		case <-exited:
			return Process{}, fmt.Errorf("%s exited during start-up; see %s", name, logPath)
		case <-ctx.Done():
			_, _ = p.Terminate(context.Background(), time.Second)
			return Process{}, fmt.Errorf("starting %s: %w", name, ctx.Err())
		case <-deadline.C:
			_, _ = p.Terminate(context.Background(), time.Second)
			return Process{}, fmt.Errorf("%s did not listen on %s within %s; see %s", name, readySocket, timeout, logPath)
		case <-tick.C:
		}
	}
}
