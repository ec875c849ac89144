package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// IsInit tells whether this process was started by Start as a node's init.
func IsInit() bool {
	return len(os.Args) > 0 && os.Args[0] == initArg0
}

// InitMain runs the node's init and exits if this process is one (IsInit); otherwise it returns at once.
// A program that starts nodes with the default Config.InitBinary (itself) must call it first thing in
// main, and a test binary in TestMain, before anything else runs:
//
//	func main() {
//		node.InitMain()
//		...
//	}
func InitMain() {
	if !IsInit() {
		return
	}
	os.Exit(runInit())
}

// serviceStopTimeout bounds how long the init waits for a service after SIGTERM.
const serviceStopTimeout = 10 * time.Second

// kubeletTunables are the kernel tunables the kubelet sets unless they have these values (its
// setupKernelTunables). They are global to the machine, so each node gets its own copy.
var kubeletTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// hostDevices are the host's device nodes a node gets.
var hostDevices = []string{"null", "zero", "full", "random", "urandom", "tty", "kmsg", "loop-control"}

// defaultPath is the PATH of the node's processes.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type initProcess struct {
	cfg  *initConfig
	log  *slog.Logger
	r    *reaper
	logs map[string]*os.File
	ln   *net.UnixListener
	// pivoted is set once the node's root is the root.
	pivoted bool
}

func runInit() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// Signals first: a SIGTERM during start-up must not be lost, and PID 1 ignores what it does not handle.
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGCHLD)
	r := &reaper{waiting: map[int]chan unix.WaitStatus{}}
	stopCtx, requestStop := context.WithCancel(context.Background())
	go func() {
		tick := time.NewTicker(time.Second) // a safety net for coalesced SIGCHLDs
		defer tick.Stop()
		for {
			select {
			case s := <-sigs:
				if s == unix.SIGCHLD {
					r.reap()
				} else {
					log.Info("stop requested", "signal", s.String())
					requestStop()
				}
			case <-tick.C:
				r.reap()
			}
		}
	}()

	ctl := os.NewFile(3, "parent")
	fc, err := net.FileConn(ctl)
	ctl.Close()
	if err != nil {
		log.Error("no connection to the parent", "error", err)
		return 1
	}
	defer fc.Close()
	m := newMessenger(fc)
	msg, err := m.receive()
	if err != nil || msg.Type != msgConfig || msg.Config == nil {
		log.Error("no configuration from the parent", "error", err, "message", msg.Type)
		return 1
	}
	in := &initProcess{cfg: msg.Config, log: log.With("node", msg.Config.Hostname), r: r, logs: map[string]*os.File{}}
	in.log.Info("init starting", "pid", os.Getpid())

	// Until the start is complete, a stop request or the parent going away ends the start.
	startCtx, cancelStart := context.WithCancel(stopCtx)
	defer cancelStart()
	unblock := context.AfterFunc(startCtx, func() { _ = fc.SetDeadline(time.Now()) })
	services, err := in.start(startCtx, m)
	unblock()
	if err != nil {
		in.log.Error("start failed", "error", err)
		_ = fc.SetDeadline(time.Time{})
		_ = m.send(message{Type: msgError, Error: err.Error()})
		in.shutdown(services)
		return 1
	}
	// The parent closes its end after "running"; the node lives on without it.
	go func() { _, _ = fc.Read(make([]byte, 1)); fc.Close() }()
	go in.serveExec()

	<-stopCtx.Done()
	t := time.Now()
	in.shutdown(services)
	in.log.Info("init stopped", "took", time.Since(t).Round(time.Millisecond))
	return 0
}

// start sets up the node and starts its services, following the protocol with the parent.
func (in *initProcess) start(ctx context.Context, m *messenger) ([]*service, error) {
	if err := in.prepareRoot(); err != nil {
		return nil, err
	}
	if err := in.enterRoot(); err != nil {
		return nil, err
	}
	if err := in.phase(m, phaseSysinit); err != nil {
		return nil, err
	}
	containerd := in.newService("containerd", []string{ContainerdPath, "--config", ContainerdConfigPath}, nil)
	services := []*service{containerd}
	containerd.start(in)
	if err := waitForSocket(ctx, ContainerdSocket, in.cfg.ContainerdTimeout); err != nil {
		return services, fmt.Errorf("containerd did not come up: %w (see containerd.log)", err)
	}
	if err := in.phase(m, phaseReady); err != nil {
		return services, err
	}
	bootstrapper := in.newService("bootstrapper", append([]string{BootstrapperPath}, in.cfg.BootstrapperArgs...), in.cfg.BootstrapperEnv)
	// Stopped first: the list is stopped from the end.
	services = append(services, bootstrapper)
	bootstrapper.start(in)
	if err := m.send(message{Type: msgRunning}); err != nil {
		return services, err
	}
	return services, nil
}

// phase asks the parent to enter a launcher phase and waits for its answer.
func (in *initProcess) phase(m *messenger, phase string) error {
	if err := m.send(message{Type: msgPhase, Phase: phase}); err != nil {
		return err
	}
	msg, err := m.receive()
	switch {
	case err != nil:
		return fmt.Errorf("waiting for the parent to enter phase %s: %w", phase, err)
	case msg.Type == msgError:
		return fmt.Errorf("the parent refused phase %s: %s", phase, msg.Error)
	case msg.Type != msgAck || msg.Phase != phase:
		return fmt.Errorf("unexpected answer %q (phase %q) to phase %s", msg.Type, msg.Phase, phase)
	}
	return nil
}

// mount wraps mount(2) with the arguments in the error.
func mount(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (type %q, data %q): %w", source, target, fstype, data, err)
	}
	return nil
}

// prepareRoot builds the node's file system below the root mount (the mount table, nodeRoot), while the
// host's paths are visible, and opens what must be opened from the host: the services' logs and the
// control socket.
func (in *initProcess) prepareRoot() error {
	c := in.cfg
	devices := hostDeviceNames(func(name string) { in.log.Warn("the host has no such device", "device", name) })
	if err := apply(nodeRoot(c, devices)); err != nil {
		return err
	}
	for _, name := range []string{"containerd", "bootstrapper"} {
		f, err := os.OpenFile(filepath.Join(c.LogDir, name+".log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		in.logs[name] = f
	}
	_ = os.Remove(c.ControlSocket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: c.ControlSocket, Net: "unix"})
	if err != nil {
		return err
	}
	// The path is the host's; after pivot_root, Close must not unlink whatever has that path in the node.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(c.ControlSocket, 0o600); err != nil {
		return err
	}
	in.ln = ln
	return nil
}

// enterRoot makes the prepared root the root, detaches the host's file system, and sets the node's
// hostname and limits.
func (in *initProcess) enterRoot() error {
	if err := unix.Chdir(in.cfg.Rootfs); err != nil {
		return err
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the new one. This needs no
	// directory for the old root in the (read-only) new root.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root to %s: %w", in.cfg.Rootfs, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	in.pivoted = true
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	// Inside the node, mounts propagate (the kubelet's mount propagation needs a shared root).
	if err := mount("", "/", "", unix.MS_REC|unix.MS_SHARED, ""); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(in.cfg.Hostname)); err != nil {
		return fmt.Errorf("setting the hostname: %w", err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
		lim.Cur = min(max(lim.Max, 1<<20), 1<<20)
		lim.Max = max(lim.Max, lim.Cur)
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
			_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
			lim.Cur = lim.Max
			_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		}
	}
	unix.Umask(0o022)
	return os.Setenv("PATH", strings.TrimPrefix(defaultPath, "PATH="))
}

// waitForSocket waits until a Unix socket accepts connections.
func waitForSocket(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// shutdown stops the services in reverse order, kills what is left in the node, and unmounts the state
// disk.
func (in *initProcess) shutdown(services []*service) {
	if in.ln != nil {
		in.ln.Close()
	}
	for i := len(services) - 1; i >= 0; i-- {
		services[i].stop()
	}
	// Everything else in the PID namespace (containerd's shims, containers, exec'd commands).
	_ = unix.Kill(-1, unix.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			break
		}
		if pid <= 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !in.pivoted {
		return // the mount namespace, and every mount in it, ends with the init
	}
	if f, err := os.Open(StateDiskPath); err == nil {
		_ = unix.Syncfs(int(f.Fd()))
		f.Close()
		if err := unix.Unmount(StateDiskPath, 0); err != nil {
			in.log.Warn("unmounting the state disk", "error", err)
		}
	}
	for _, f := range in.logs {
		f.Close()
	}
}

// reaper is PID 1's child reaping: every exit is collected with wait4(-1), and handed to whoever started
// the process. Nothing in the init may wait for a child otherwise.
type reaper struct {
	mu      sync.Mutex
	waiting map[int]chan unix.WaitStatus
}

// start starts a process whose exit the returned channel reports. files are its descriptors 0, 1, 2, ...
func (r *reaper) start(argv, env []string, dir string, files []uintptr) (int, <-chan unix.WaitStatus, error) {
	path := argv[0]
	if !strings.Contains(path, "/") {
		found, err := lookPath(path)
		if err != nil {
			return 0, nil, err
		}
		path = found
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Dir: dir, Env: env, Files: files,
		// Its own process group, so that everything it starts can be signalled together.
		Sys: &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return 0, nil, fmt.Errorf("starting %s: %w", path, err)
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiting[pid] = ch
	return pid, ch, nil
}

// reap collects every exited child.
func (r *reaper) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		r.mu.Lock()
		ch := r.waiting[pid]
		delete(r.waiting, pid)
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
		}
	}
}

// lookPath finds an executable in the node's PATH.
func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(strings.TrimPrefix(defaultPath, "PATH=")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s", name, defaultPath)
}

// describe turns a wait status into words.
func describe(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// service is a supervised process of the node.
type service struct {
	name string
	argv []string
	env  []string
	log  *os.File
	in   *initProcess

	ctx     context.Context
	cancel  context.CancelFunc
	stopped chan struct{}
}

func (in *initProcess) newService(name string, argv, env []string) *service {
	ctx, cancel := context.WithCancel(context.Background())
	return &service{
		name: name, argv: argv, env: append([]string{defaultPath, "HOME=/root"}, env...),
		log: in.logs[name], in: in, ctx: ctx, cancel: cancel, stopped: make(chan struct{}),
	}
}

// start supervises the service: it restarts it when it exits, with a backoff from 1 s doubling to 30 s,
// reset after a minute of running.
func (s *service) start(in *initProcess) {
	go func() {
		defer close(s.stopped)
		backoff := time.Second
		for {
			started := time.Now()
			fmt.Fprintf(s.log, "=== %s node init: starting %s\n", started.Format(time.RFC3339Nano), strings.Join(s.argv, " "))
			devnull, err := os.Open(os.DevNull)
			if err != nil {
				in.log.Error("opening /dev/null", "error", err)
				return
			}
			pid, done, err := in.r.start(s.argv, s.env, "/", []uintptr{devnull.Fd(), s.log.Fd(), s.log.Fd()})
			devnull.Close()
			if err != nil {
				in.log.Error("starting a service", "service", s.name, "error", err)
				fmt.Fprintf(s.log, "=== node init: %v\n", err)
			} else {
				in.log.Info("service started", "service", s.name, "pid", pid)
				select {
				case ws := <-done:
					in.log.Warn("service exited", "service", s.name, "pid", pid, "status", describe(ws), "ran", time.Since(started).Round(time.Millisecond))
					fmt.Fprintf(s.log, "=== %s node init: %s %s\n", time.Now().Format(time.RFC3339Nano), s.name, describe(ws))
				case <-s.ctx.Done():
					t := time.Now()
					status := terminate(pid, done, serviceStopTimeout)
					in.log.Info("service stopped", "service", s.name, "status", status, "took", time.Since(t).Round(time.Millisecond))
					return
				}
			}
			if time.Since(started) > time.Minute {
				backoff = time.Second
			}
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}()
}

// stop stops the service and waits until it has.
func (s *service) stop() {
	s.cancel()
	<-s.stopped
}

// terminate sends SIGTERM to a process, SIGKILL after grace, and waits for it.
func terminate(pid int, done <-chan unix.WaitStatus, grace time.Duration) string {
	_ = unix.Kill(pid, unix.SIGTERM)
	select {
	case ws := <-done:
		return describe(ws)
	case <-time.After(grace):
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	return describe(<-done) + " after SIGKILL"
}
