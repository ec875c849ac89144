package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/constellation-go/constellation/internal/remains"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/statedisk"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/localprovider/launcher"
	"github.com/constellation-go/constellation/localprovider/network"
	"github.com/constellation-go/constellation/localprovider/proc"
)

// ErrRunning means the node is already running.
var ErrRunning = errors.New("the node is running")

// ErrNotRunning means the node is not running.
var ErrNotRunning = errors.New("the node is not running")

// containerdTimeout bounds how long the init waits for containerd's socket (tests shorten it).
var containerdTimeout = time.Minute

// initArg0 is the init's argv[0], by which InitMain recognises it.
const initArg0 = "constellation-node-init"

// Node is a started node.
type Node struct {
	// Name is the node's name.
	Name string
	// StateDir is the node's state directory on the host.
	StateDir string
	// Network is the node's network.
	Network network.Node
	// InitPID is the init's PID on the host.
	InitPID int
	// Prediction is the launcher's prediction of the boot: Prediction.PCRs(true) is what the vTPM holds.
	Prediction *precompute.Result
	// Timings are the durations of the start's steps.
	Timings Timings
}

// Timings are the durations of a node start's steps.
type Timings struct {
	// Prepare covers the network, the state directory and the state disk.
	Prepare time.Duration `json:"prepare"`
	// Swtpm is starting swtpm until its socket answers.
	Swtpm time.Duration `json:"swtpm"`
	// Launch is launcher.Launch: measuring and verifying the image.
	Launch time.Duration `json:"launch"`
	// Mount is mounting the verified root and creating the cgroups.
	Mount time.Duration `json:"mount"`
	// Sysinit is from starting the init to its sysinit phase: its mounts and pivot_root.
	Sysinit time.Duration `json:"sysinit"`
	// Containerd is from sysinit until containerd's socket answers (and the ready phase).
	Containerd time.Duration `json:"containerd"`
	// Bootstrapper is from ready until the bootstrapper was started.
	Bootstrapper time.Duration `json:"bootstrapper"`
	// Total is the whole Start.
	Total time.Duration `json:"total"`
}

func (t Timings) String() string {
	return fmt.Sprintf("total %s (prepare %s, swtpm %s, launch %s, mount %s, init %s, containerd %s, bootstrapper %s)",
		t.Total.Round(time.Millisecond), t.Prepare.Round(time.Millisecond), t.Swtpm.Round(time.Millisecond),
		t.Launch.Round(time.Millisecond), t.Mount.Round(time.Millisecond), t.Sysinit.Round(time.Millisecond),
		t.Containerd.Round(time.Millisecond), t.Bootstrapper.Round(time.Millisecond))
}

// runState is node.json: what Stop needs to find the node's parts from any process.
type runState struct {
	Cluster string            `json:"cluster"`
	Name    string            `json:"name"`
	Init    proc.Process      `json:"init"`
	Swtpm   proc.Process      `json:"swtpm"`
	Cgroups map[string]string `json:"cgroups,omitempty"`
	Netns   string            `json:"netns"`
	IP      string            `json:"ip"`
	PodCIDR string            `json:"podCIDR"`
	// Image is the image directory the node booted.
	Image   string    `json:"image,omitempty"`
	Started time.Time `json:"started"`
	Timings Timings   `json:"timings"`
}

func readState(l layout) (*runState, error) {
	b, err := os.ReadFile(l.stateFile())
	if err != nil {
		return nil, err
	}
	var st runState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("reading %s: %w", l.stateFile(), err)
	}
	return &st, nil
}

func (st *runState) save(l layout) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := l.stateFile() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, l.stateFile())
}

// RunningImage returns the image directory the node of stateDir booted last; empty for a node that is not
// running or was started before node.json recorded it.
func RunningImage(stateDir string) string {
	if !Running(stateDir) {
		return ""
	}
	st, err := readState(layout{stateDir})
	if err != nil {
		return ""
	}
	return st.Image
}

// IsStateDir tells whether dir is a node's state directory (it holds a node's files: its state disk, vTPM,
// logs or node.json).
func IsStateDir(dir string) bool {
	l := layout{dir}
	for _, p := range []string{l.stateFile(), l.stateDisk(), l.vtpmDir(), l.logDir()} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// Running tells whether the node whose state directory is stateDir runs.
func Running(stateDir string) bool {
	st, err := readState(layout{stateDir})
	return err == nil && st.Init.Alive()
}

// Start starts a node as the package documentation describes and returns once its bootstrapper has been
// started. On failure nothing of the start remains running.
func Start(ctx context.Context, cfg Config) (_ *Node, retErr error) {
	if err := cfg.complete(); err != nil {
		return nil, fmt.Errorf("starting node: %w", err)
	}
	if cfg.PlatformCA == nil {
		return nil, fmt.Errorf("starting node %s: no platform CA to certify its vTPM", cfg.Name)
	}
	t0 := time.Now()
	log := cfg.Log.With("node", cfg.Name)
	l := layout{cfg.StateDir}
	if old, err := readState(l); err == nil && old.Init.Alive() {
		return nil, fmt.Errorf("starting node %s: %w (init PID %d)", cfg.Name, ErrRunning, old.Init.PID)
	}
	// Whatever a crashed node left (swtpm, cgroups, mounts) goes first.
	if err := stop(ctx, l, cfg.StopTimeout); err != nil {
		return nil, fmt.Errorf("starting node %s: cleaning up after its last run: %w", cfg.Name, err)
	}
	if err := l.mkdirs(); err != nil {
		return nil, fmt.Errorf("starting node %s: creating its state directory: %w", cfg.Name, err)
	}
	rotateLogs(l)
	netNode, err := cfg.Network.AddNode(cfg.Name, cfg.Index)
	if err != nil {
		return nil, fmt.Errorf("starting node %s: %w", cfg.Name, err)
	}
	if _, err := os.Stat(l.stateDisk()); errors.Is(err, os.ErrNotExist) {
		if err := statedisk.Create(ctx, l.stateDisk(), cfg.StateDiskSize); err != nil {
			return nil, fmt.Errorf("starting node %s: %w", cfg.Name, err)
		}
	}
	n := &Node{Name: cfg.Name, StateDir: cfg.StateDir, Network: *netNode}
	st := &runState{
		Cluster: cfg.Cluster, Name: cfg.Name, Netns: netNode.Netns,
		IP: netNode.IP.String(), PodCIDR: netNode.PodCIDR.String(), Image: cfg.ImageDir, Started: t0,
	}
	defer func() {
		if retErr != nil {
			// What this start made (recorded in node.json or not yet), then anything else node.json names.
			cctx := context.WithoutCancel(ctx)
			if err := errors.Join(st.teardown(cctx, l, cfg.StopTimeout), stop(cctx, l, cfg.StopTimeout)); err != nil {
				log.Error("cleaning up after a failed start", "error", err)
			}
			retErr = fmt.Errorf("starting node %s: %w (logs in %s)", cfg.Name, retErr, l.logDir())
		}
	}()
	n.Timings.Prepare = time.Since(t0)

	// Power on: a fresh vTPM, then the firmware's and initrd's part.
	t := time.Now()
	if st.Swtpm, err = startSwtpm(ctx, l); err != nil {
		return nil, err
	}
	if err := st.save(l); err != nil {
		return nil, err
	}
	n.Timings.Swtpm = time.Since(t)
	t = time.Now()
	vtpm, err := tpm.Open("swtpm:" + l.vtpmSocket())
	if err != nil {
		return nil, err
	}
	defer vtpm.Close()
	// The platform certifies a new vTPM (and leaves one it certified before alone) before the node's
	// software can touch it.
	if err := cfg.PlatformCA.Manufacture(vtpm, cfg.Name); err != nil {
		return nil, fmt.Errorf("certifying the vTPM: %w", err)
	}
	boot, err := launcher.Launch(ctx, launcher.Config{ImageDir: cfg.ImageDir, TPM: vtpm, EventLog: l.eventLog(), Options: cfg.LaunchOptions})
	if err != nil {
		return nil, err
	}
	defer boot.Close() // the mount keeps the root file open
	n.Prediction = boot.Prediction()
	n.Timings.Launch = time.Since(t)

	t = time.Now()
	if _, err := launcher.Mount(ctx, boot.Root(), l.rootfs()); err != nil {
		return nil, err
	}
	// The init's copy of this mount must not be a peer of it (the host's / may be shared).
	if err := unix.Mount("", l.rootfs(), "", unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("making %s private: %w", l.rootfs(), err)
	}
	hs, links, err := v1Hierarchies()
	if err != nil {
		return nil, err
	}
	st.Cgroups, err = nodeCgroups(hs, cfg.Cluster, cfg.Name)
	if saveErr := st.save(l); err == nil {
		err = saveErr
	}
	if err != nil {
		return nil, err
	}
	n.Timings.Mount = time.Since(t)

	ic := &initConfig{
		Hostname:      cfg.Name,
		NodeIP:        netNode.IP.String(),
		MachineID:     machineID(cfg.Cluster, cfg.Name),
		Rootfs:        l.rootfs(),
		Scratch:       l.scratch(),
		StateDisk:     l.stateDisk(),
		VTPMSocket:    l.vtpmSocket(),
		EventLogDir:   l.eventLogDir(),
		ControlSocket: l.controlSocket(),
		LogDir:        l.logDir(),
		Cgroups:       hs,
		CgroupLinks:   links,

		ContainerdConfig:  containerdConfig(cfg.SandboxImage),
		ContainerdTimeout: containerdTimeout,
		BootstrapperArgs:  cfg.BootstrapperArgs,
		BootstrapperEnv:   mergeEnv(BootstrapperEnv(cfg.Name, netNode.IP, netNode.PodCIDR, cfg.MetadataURL, cfg.SandboxImage), cfg.BootstrapperEnv),
	}
	conn, initProc, err := spawnInit(cfg.InitBinary, l, netNode.Netns, hs, st.Cgroups)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	st.Init = initProc
	if err := st.save(l); err != nil {
		return nil, err
	}
	n.InitPID = initProc.PID
	// The start's context bounds the protocol: cancelling it closes the socket pair, which ends the init.
	stopWatch := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stopWatch()
	m := newMessenger(conn)
	if err := m.send(message{Type: msgConfig, Config: ic}); err != nil {
		return nil, err
	}
	phaseStart := time.Now()
	for {
		msg, err := m.receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for the init: %w", ctx.Err())
			}
			return nil, fmt.Errorf("the init ended during start-up (%w)", err)
		}
		switch msg.Type {
		case msgError:
			return nil, fmt.Errorf("the init failed: %s", msg.Error)
		case msgPhase:
			var err error
			switch msg.Phase {
			case phaseSysinit:
				n.Timings.Sysinit = time.Since(phaseStart)
				// The init has its own copy of the root: the host's is no longer needed.
				if uerr := unix.Unmount(l.rootfs(), 0); uerr != nil {
					err = fmt.Errorf("unmounting the host's copy of the root: %w", uerr)
				} else {
					err = boot.EnterPhase(msg.Phase)
				}
			case phaseReady:
				n.Timings.Containerd = time.Since(phaseStart) - n.Timings.Sysinit
				if err = boot.EnterPhase(msg.Phase); err == nil {
					err = boot.CompleteBoot()
				}
			default:
				err = fmt.Errorf("unknown phase %q", msg.Phase)
			}
			if err != nil {
				_ = m.send(message{Type: msgError, Error: err.Error()})
				return nil, fmt.Errorf("entering boot phase %s: %w", msg.Phase, err)
			}
			log.Debug("boot phase entered", "phase", msg.Phase)
			if err := m.send(message{Type: msgAck, Phase: msg.Phase}); err != nil {
				return nil, err
			}
		case msgRunning:
			n.Timings.Bootstrapper = time.Since(phaseStart) - n.Timings.Sysinit - n.Timings.Containerd
			n.Timings.Total = time.Since(t0)
			st.Timings = n.Timings
			if err := st.save(l); err != nil {
				return nil, err
			}
			log.Info("node started", "pid", initProc.PID, "ip", netNode.IP, "timings", n.Timings.String())
			return n, nil
		default:
			return nil, fmt.Errorf("unexpected message %q from the init", msg.Type)
		}
	}
}

// maxLogSize is the size above which Start moves a node's log to <name>.log.1 (replacing it).
const maxLogSize = 16 << 20

// rotateLogs keeps the node's logs bounded across starts.
func rotateLogs(l layout) {
	logs, _ := filepath.Glob(filepath.Join(l.logDir(), "*.log"))
	for _, p := range logs {
		if fi, err := os.Stat(p); err == nil && fi.Size() > maxLogSize {
			_ = os.Rename(p, p+".1")
		}
	}
}

// mergeEnv returns base with the variables of extra added, replacing those of the same name.
func mergeEnv(base, extra []string) []string {
	out := slices.Clone(base)
	for _, e := range extra {
		name, _, _ := strings.Cut(e, "=")
		out = slices.DeleteFunc(out, func(b string) bool { return strings.HasPrefix(b, name+"=") })
		out = append(out, e)
	}
	return out
}

// machineID derives a node's /etc/machine-id: stable across restarts, distinct between nodes.
func machineID(cluster, node string) string {
	sum := sha256.Sum256([]byte("constellation local machine-id\x00" + cluster + "\x00" + node))
	return hex.EncodeToString(sum[:16])
}

// spawnInit starts the init in new namespaces, in the node's network namespace and cgroups, and returns
// the parent's end of the socket pair.
func spawnInit(bin string, l layout, netnsPath string, hs []hierarchy, cgroups map[string]string) (net.Conn, proc.Process, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, proc.Process{}, err
	}
	parentFile, child := os.NewFile(uintptr(fds[0]), "init-parent"), os.NewFile(uintptr(fds[1]), "init-child")
	defer child.Close()
	// A net.Conn, so that closing it interrupts a read (an *os.File of a blocking descriptor would not).
	parent, err := net.FileConn(parentFile)
	parentFile.Close()
	if err != nil {
		return nil, proc.Process{}, err
	}
	logf, err := os.OpenFile(LogFile(l.dir, "init"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		parent.Close()
		return nil, proc.Process{}, err
	}
	defer logf.Close()
	cmd := &exec.Cmd{
		Path:       bin,
		Args:       []string{initArg0},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Stdout:     logf,
		Stderr:     logf,
		ExtraFiles: []*os.File{child},
		SysProcAttr: &unix.SysProcAttr{
			Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWCGROUP,
			Setsid:     true,
		},
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		parent.Close()
		return nil, proc.Process{}, fmt.Errorf("opening the node's network namespace: %w", err)
	}
	defer ns.Close()
	// The clone inherits this thread's network namespace and cgroups; the thread leaves both afterwards, or
	// is never used again.
	err = network.OnThreadIn(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("entering the node's network namespace: %w", err)
		}
		return nil
	}, func() (func() error, error) {
		restore, err := enterCgroups(hs, cgroups)
		if err == nil {
			err = cmd.Start()
		}
		return restore, err
	})
	if err != nil {
		parent.Close()
		return nil, proc.Process{}, fmt.Errorf("starting the init: %w", err)
	}
	reaped := proc.Adopt(cmd.Process.Pid)
	go func() {
		_ = cmd.Wait()
		reaped()
	}()
	p, err := proc.New(cmd.Process.Pid)
	if err != nil {
		// It is gone already; the protocol will report that.
		p = proc.Process{PID: cmd.Process.Pid}
	}
	return parent, p, nil
}

// Stop stops the node: SIGTERM to the init, SIGKILL after its stop timeout, then swtpm, cgroups and
// mounts. Stopping a stopped node is not an error.
func (n *Node) Stop(ctx context.Context) error {
	return Stop(ctx, n.StateDir, 0)
}

// Stop stops the node whose state directory is stateDir; timeout bounds the wait for the init (zero means
// DefaultStopTimeout). It works from any process.
func Stop(ctx context.Context, stateDir string, timeout time.Duration) error {
	if timeout == 0 {
		timeout = DefaultStopTimeout
	}
	return stop(ctx, layout{stateDir}, timeout)
}

func stop(ctx context.Context, l layout, timeout time.Duration) error {
	st, err := readState(l)
	if errors.Is(err, os.ErrNotExist) {
		st = &runState{}
	} else if err != nil {
		return err
	}
	if err := st.teardown(ctx, l, timeout); err != nil {
		return err
	}
	_ = os.Remove(l.controlSocket())
	if err := os.Remove(l.stateFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// teardown stops what st names and unmounts what the host has under the state directory. It is idempotent.
func (st *runState) teardown(ctx context.Context, l layout, timeout time.Duration) error {
	var errs []error
	// The init stops its services; killing it kills everything in its PID namespace.
	if _, err := st.Init.Terminate(ctx, timeout); err != nil {
		errs = append(errs, fmt.Errorf("stopping the init: %w", err))
	}
	if err := stopSwtpm(ctx, st.Swtpm, l); err != nil {
		errs = append(errs, err)
	}
	// A start that failed before the init took over leaves the root mounted on the host.
	for _, m := range remains.MountsUnder(l.dir) {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
		}
	}
	if err := removeCgroups(st.Cgroups); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Restart stops the node and starts it again: a new power cycle of its vTPM, a new launch and
// verification of the image; the state disk is kept.
func Restart(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	if err := Stop(ctx, cfg.StateDir, cfg.StopTimeout); err != nil {
		return nil, err
	}
	return Start(ctx, cfg)
}

// PowerCut stops a running node the way a power failure does, for fault tests: its init (and with it every
// process of the node) and its swtpm get SIGKILL at once; nothing is synced, unmounted or shut down. What
// is left (cgroups, node.json, the vTPM's sockets) is cleaned up by the next Start or Stop, as after a
// crash of the machine.
func PowerCut(ctx context.Context, stateDir string) error {
	st, err := readState(layout{stateDir})
	if err == nil {
		err = kill(ctx, st.Init, st.Swtpm)
	}
	if err != nil {
		return fmt.Errorf("power-cutting node %s: %w", filepath.Base(stateDir), err)
	}
	return nil
}

// RestartVTPM kills a running node's swtpm and starts a new one on the same state, for fault tests: the
// node keeps running, but the vTPM it was given at boot is gone (its socket in the node names the old one)
// and the new one holds none of the boot's measurements. Only a restart of the node gives it a vTPM again.
func RestartVTPM(ctx context.Context, stateDir string) error {
	l := layout{stateDir}
	st, err := readState(l)
	if err == nil {
		err = kill(ctx, st.Swtpm)
	}
	if err == nil {
		st.Swtpm, err = startSwtpm(ctx, l)
	}
	if err == nil {
		err = st.save(l)
	}
	if err != nil {
		return fmt.Errorf("restarting the vTPM of node %s: %w", filepath.Base(stateDir), err)
	}
	return nil
}

// kill sends SIGKILL to every process at once, then waits (up to 10 s) until all have ended.
func kill(ctx context.Context, procs ...proc.Process) error {
	for _, p := range procs {
		if err := p.Signal(syscall.SIGKILL); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, p := range procs {
		if err := p.Wait(ctx); err != nil {
			return fmt.Errorf("waiting for process %d to end: %w", p.PID, err)
		}
	}
	return nil
}

// Destroy stops the node and removes its network and state directory (the state disk with it).
func Destroy(ctx context.Context, cfg Config) error {
	if err := cfg.complete(); err != nil {
		return err
	}
	if err := Stop(ctx, cfg.StateDir, cfg.StopTimeout); err != nil {
		return err
	}
	if err := cfg.Network.RemoveNode(cfg.Name); err != nil {
		return err
	}
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		return fmt.Errorf("removing the state directory of node %s: %w", cfg.Name, err)
	}
	// The cluster's directory, if this was its last node.
	_ = os.Remove(filepath.Dir(cfg.StateDir))
	return nil
}

// Remains lists what of a node exists on the host while it is stopped: processes whose executable, root,
// working directory, open files or namespaces point into its state directory or network namespace,
// mounts under the state directory, loop devices backed by files in it, and its cgroups (from node.json,
// if a failed stop left it). After Destroy, also the state directory and the network (see
// network.Remains). It reads every process's /proc entries: a check for tests and `destroy`, not a hot
// path.
func Remains(stateDir string) []string {
	l := layout{stateDir}
	var out []string
	needles := []string{stateDir + "/"}
	if st, err := readState(l); err == nil {
		if st.Init.Alive() {
			out = append(out, fmt.Sprintf("init process %d", st.Init.PID))
		}
		if st.Swtpm.Alive() {
			out = append(out, fmt.Sprintf("swtpm process %d", st.Swtpm.PID))
		}
		for _, p := range cgroupProcs(st.Cgroups) {
			out = append(out, "process in cgroup "+p)
		}
		for _, dir := range st.Cgroups {
			if _, err := os.Stat(dir); err == nil {
				out = append(out, "cgroup "+dir)
			}
		}
		if st.Netns != "" {
			if ino, err := inode(st.Netns); err == nil {
				needles = append(needles, fmt.Sprintf("net:[%d]", ino))
			}
		}
	}
	for _, m := range remains.MountsUnder(stateDir) {
		out = append(out, "mount "+m)
	}
	out = append(out, remains.ProcessesWith(needles...)...)
	out = append(out, remains.LoopsBackedBy(stateDir)...)
	return out
}

func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// dialControl connects to a running node's init.
func dialControl(ctx context.Context, stateDir string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", layout{stateDir}.controlSocket())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (%v)", ErrNotRunning, err)
		}
		return nil, err
	}
	return c.(*net.UnixConn), nil
}
