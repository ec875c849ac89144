package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/localprovider/network"
)

// Paths inside a node.
const (
	// VTPMSocket is the node's vTPM command socket; its TPM address is "swtpm:" + VTPMSocket.
	VTPMSocket = "/run/constellation/vtpm/sock"
	// EventLogDir holds the node's TCG2 event log, read-only.
	EventLogDir = "/run/constellation/eventlog"
	// EventLogPath is the node's TCG2 event log, the launcher's record of every extend.
	EventLogPath = EventLogDir + "/binary_bios_measurements"
	// StateDiskPath is where the state disk is mounted: an empty ext4 file system with the encrypt
	// feature on a fresh node, whose secrets the bootstrapper keeps in directories it encrypts with
	// statedisk.EncryptDir.
	StateDiskPath = "/var/lib/constellation/state"
	// ContainerdSocket is containerd's gRPC socket (CRI included).
	ContainerdSocket = "/run/containerd/containerd.sock"
	// ContainerdConfigPath is the containerd configuration the node writes.
	ContainerdConfigPath = "/etc/containerd/config.toml"
	// ContainerdRoot is containerd's root directory, a tmpfs.
	ContainerdRoot = "/var/lib/containerd"
	// CNIBinDir holds the CNI plugins (Debian's containernetworking-plugins).
	CNIBinDir = "/usr/lib/cni"
	// CNIConfDir is where CNI configurations go (empty at start).
	CNIConfDir = "/etc/cni/net.d"
	// BootstrapperPath is the bootstrapper in the image.
	BootstrapperPath = "/usr/bin/bootstrapper"
	// ContainerdPath is containerd in the image.
	ContainerdPath = "/usr/bin/containerd"
)

// The bootstrapper's flags that a node sets, through BOOTSTRAPPER_<FLAG> environment variables (upper
// case, '-' as '_'), which internal/service.ParseFlags reads for flags not given on the command line.
const (
	// FlagTPM is the TPM address: "swtpm:" + VTPMSocket.
	FlagTPM = "tpm"
	// FlagEventLog is the TCG2 event log to attach to attestations: EventLogPath.
	FlagEventLog = "event-log"
	// FlagMetadataURL is the base URL of the provider's metadata API (package metadata), e.g.
	// http://10.42.0.1:9080.
	FlagMetadataURL = "metadata-url"
	// FlagNodeName is the node's name (its hostname, and its Kubernetes node name).
	FlagNodeName = "node-name"
	// FlagNodeIP is the node's address on the bridge (the kubelet's --node-ip).
	FlagNodeIP = "node-ip"
	// FlagPodCIDR is the node's pod prefix (the kubelet's podCIDR; also in the metadata API).
	FlagPodCIDR = "pod-cidr"
	// FlagStateDir is the state disk's mount point: StateDiskPath.
	FlagStateDir = "state-dir"
	// FlagContainerdSocket is containerd's socket: ContainerdSocket.
	FlagContainerdSocket = "containerd-socket"
	// FlagSandboxImage is containerd's sandbox image: Config.SandboxImage.
	FlagSandboxImage = "sandbox-image"
)

// Defaults of Config.
const (
	// DefaultStateRoot holds the state directories of nodes: <root>/<cluster>/<node>.
	DefaultStateRoot = "/var/lib/constellation/local"
	// DefaultSandboxImage is containerd's pod sandbox image, the one kubeadm v1.33 expects. The bootstrapper
	// tags the pause image of whatever version it installs with it (--sandbox-image).
	DefaultSandboxImage = "registry.k8s.io/pause:3.10"
	// DefaultStateDiskSize is the size of a new state disk (a sparse file: it takes what is written).
	DefaultStateDiskSize = 8 << 30
	// DefaultStopTimeout bounds how long Stop waits for the init to stop its services.
	DefaultStopTimeout = 30 * time.Second
)

// maxSocketPath is the longest path a Unix socket can have.
const maxSocketPath = 107

var (
	nameRE     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	imageRefRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@-]*$`)
)

// Config describes a node.
type Config struct {
	// Cluster is the cluster's name (a DNS label).
	Cluster string
	// Name is the node's name (a DNS label): its hostname and Kubernetes node name.
	Name string
	// Index is the node's index in the cluster's network (its address and pod prefix).
	Index int
	// Network is the cluster's network.
	Network *network.Network
	// ImageDir is the node image (constellation.efi, root.erofs, root.verity).
	ImageDir string
	// LaunchOptions selects the boot the launcher imitates; it must match the reference values.
	LaunchOptions precompute.Options
	// PlatformCA certifies the node's vTPM when it is new (package manufacturer): the platform is the
	// vTPM's manufacturer. Start requires it (a node whose attestation key nothing vouches for is refused
	// anyway); Stop and Destroy do not need it.
	PlatformCA *manufacturer.CA
	// StateDir is the node's state directory on the host; empty means DefaultStateRoot/<cluster>/<node>.
	StateDir string
	// MetadataURL is the metadata API's base URL, handed to the bootstrapper.
	MetadataURL string
	// StateDiskSize is the size of a new state disk; zero means DefaultStateDiskSize.
	StateDiskSize int64
	// SandboxImage is containerd's pod sandbox image; empty means DefaultSandboxImage.
	SandboxImage string
	// BootstrapperArgs are the bootstrapper's command-line arguments.
	BootstrapperArgs []string
	// BootstrapperEnv are more environment variables (KEY=VALUE) for the bootstrapper; they override those
	// of BootstrapperEnv.
	BootstrapperEnv []string
	// InitBinary is the executable started as the node's init; it must call InitMain first thing. Empty
	// means /proc/self/exe, the running program.
	InitBinary string
	// StopTimeout bounds how long Stop waits for the init before killing the node; zero means
	// DefaultStopTimeout.
	StopTimeout time.Duration
	// Log receives progress messages; nil discards them.
	Log *slog.Logger
}

// StateDirFor returns the default state directory of a node.
func StateDirFor(cluster, node string) string {
	return filepath.Join(DefaultStateRoot, cluster, node)
}

// complete validates c and fills in defaults.
func (c *Config) complete() error {
	var errs []error
	if !nameRE.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("cluster name %q: must be a DNS label", c.Cluster))
	}
	if !nameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("node name %q: must be a DNS label", c.Name))
	}
	if c.Network == nil {
		errs = append(errs, errors.New("no network"))
	} else if c.Network.Config().Cluster != c.Cluster {
		errs = append(errs, fmt.Errorf("the network is cluster %s's, not %s's", c.Network.Config().Cluster, c.Cluster))
	}
	if c.ImageDir == "" {
		errs = append(errs, errors.New("no image directory"))
	}
	if c.StateDir == "" {
		c.StateDir = StateDirFor(c.Cluster, c.Name)
	}
	if !filepath.IsAbs(c.StateDir) {
		abs, err := filepath.Abs(c.StateDir)
		if err != nil {
			errs = append(errs, err)
		}
		c.StateDir = abs
	}
	// The state directory appears in overlayfs options and socket paths.
	if strings.ContainsAny(c.StateDir, ",:=\n\\") {
		errs = append(errs, fmt.Errorf("state directory %q: must not contain ',', ':', '=', '\\' or a newline", c.StateDir))
	}
	l := layout{c.StateDir}
	for _, sock := range []string{l.vtpmSocket(), l.vtpmCtrl(), l.controlSocket()} {
		if len(sock) > maxSocketPath {
			errs = append(errs, fmt.Errorf("socket path %s is longer than %d bytes: choose a shorter state directory", sock, maxSocketPath))
		}
	}
	if c.StateDiskSize == 0 {
		c.StateDiskSize = DefaultStateDiskSize
	}
	if c.StateDiskSize < 16<<20 {
		errs = append(errs, fmt.Errorf("state disk size %d: at least 16 MiB", c.StateDiskSize))
	}
	if c.SandboxImage == "" {
		c.SandboxImage = DefaultSandboxImage
	}
	if !imageRefRE.MatchString(c.SandboxImage) {
		errs = append(errs, fmt.Errorf("sandbox image %q: not an image reference", c.SandboxImage))
	}
	if c.InitBinary == "" {
		c.InitBinary = "/proc/self/exe"
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// BootstrapperEnv returns the environment variables a node's bootstrapper gets (see the Flag constants):
// BOOTSTRAPPER_<FLAG>=value for the node called name with address ip and pod prefix podCIDR, reaching
// the metadata API at metadataURL, its containerd configured with sandboxImage.
func BootstrapperEnv(name string, ip netip.Addr, podCIDR netip.Prefix, metadataURL, sandboxImage string) []string {
	flags := [][2]string{
		{FlagTPM, "swtpm:" + VTPMSocket},
		{FlagEventLog, EventLogPath},
		{FlagMetadataURL, metadataURL},
		{FlagNodeName, name},
		{FlagNodeIP, ip.String()},
		{FlagPodCIDR, podCIDR.String()},
		{FlagStateDir, StateDiskPath},
		{FlagContainerdSocket, ContainerdSocket},
		{FlagSandboxImage, sandboxImage},
	}
	env := make([]string, 0, len(flags))
	for _, f := range flags {
		env = append(env, EnvName(f[0])+"="+f[1])
	}
	return env
}

// EnvName returns the environment variable of a bootstrapper flag, as internal/service.ParseFlags reads it.
func EnvName(flag string) string {
	return "BOOTSTRAPPER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// layout is a node's state directory on the host.
type layout struct{ dir string }

func (l layout) stateFile() string   { return filepath.Join(l.dir, "node.json") }
func (l layout) vtpmDir() string     { return filepath.Join(l.dir, "vtpm") }
func (l layout) vtpmSocket() string  { return filepath.Join(l.dir, "vtpm", "tpm.sock") }
func (l layout) vtpmCtrl() string    { return filepath.Join(l.dir, "vtpm", "ctrl.sock") }
func (l layout) eventLogDir() string { return filepath.Join(l.dir, "eventlog") }
func (l layout) eventLog() string {
	return filepath.Join(l.dir, "eventlog", filepath.Base(EventLogPath))
}
func (l layout) stateDisk() string     { return filepath.Join(l.dir, "state.img") }
func (l layout) logDir() string        { return filepath.Join(l.dir, "logs") }
func (l layout) rootfs() string        { return filepath.Join(l.dir, "rootfs") }
func (l layout) scratch() string       { return filepath.Join(l.dir, "scratch") }
func (l layout) controlSocket() string { return filepath.Join(l.dir, "init.sock") }

// LogFile returns the path of a node's log on the host: name is "init", "containerd", "bootstrapper" or
// "swtpm".
func LogFile(stateDir, name string) string {
	return filepath.Join(layout{stateDir}.logDir(), name+".log")
}

func (l layout) mkdirs() error {
	for _, d := range []string{l.dir, l.vtpmDir(), l.eventLogDir(), l.logDir(), l.rootfs(), l.scratch()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	return os.Chmod(l.dir, 0o700)
}
