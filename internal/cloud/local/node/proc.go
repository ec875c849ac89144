package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process identifies a process across processes of the host: its PID and its start time (field 22 of
// /proc/<pid>/stat, in clock ticks since boot), which tells a reused PID apart.
type process struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

func newProcess(pid int) (process, error) {
	start, _, err := procStat(pid)
	if err != nil {
		return process{}, err
	}
	return process{PID: pid, Start: start}, nil
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

// alive tells whether the process runs: it exists, is not a zombie, and has the recorded start time.
func (p process) alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, state, err := procStat(p.PID)
	return err == nil && start == p.Start && state != 'Z' && state != 'X'
}

// signal sends sig if the process is still the recorded one.
func (p process) signal(sig syscall.Signal) error {
	if !p.alive() {
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

// adopt records that this process reaps pid; the returned function must be called once it has.
func adopt(pid int) func() {
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

// wait waits until the process has ended (and, if it is this process's child, was reaped), or until ctx
// ends.
func (p process) wait(ctx context.Context) error {
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
	for p.alive() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// terminate sends SIGTERM, waits up to grace, then sends SIGKILL and waits up to 10 s more. It returns an
// error only if the process survives that.
func (p process) terminate(ctx context.Context, grace time.Duration) (killed bool, err error) {
	if !p.alive() {
		return false, p.wait(ctx)
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		return false, err
	}
	wctx, cancel := context.WithTimeout(ctx, grace)
	err = p.wait(wctx)
	cancel()
	if err == nil {
		return false, nil
	}
	if err := p.signal(syscall.SIGKILL); err != nil {
		return true, err
	}
	wctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := p.wait(wctx); err != nil {
		return true, fmt.Errorf("process %d survived SIGKILL: %w", p.PID, err)
	}
	return true, nil
}
