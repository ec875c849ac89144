// Command bootstrapper is the first Constellation process on a node. It makes the node a Kubernetes node:
// if PCR 15 is already set (the bootstrapper was restarted after the node took its node lock in this
// boot), it only starts and supervises the kubelet; otherwise it serves the Init API over aTLS and, at the
// same time, tries to join the cluster through the JoinService, and whichever takes the node lock first
// wins; a restarted node also serves the Recovery API. The flow is package bootstrap's; this command only
// wires flags to it.
//
// # Flags
//
// Every flag can also be set by an environment variable BOOTSTRAPPER_<FLAG> (upper case, '-' as '_'), e.g.
// BOOTSTRAPPER_METADATA_URL; a flag given on the command line wins.
//
//	--tpm                 TPM address: device:/dev/tpmrm0 (default) or swtpm:<socket>
//	--event-log           the TCG2 event log attached to attestations (default: the kernel's, under securityfs)
//	--variant             attestation variant (default qemu-vtpm)
//	--cloud-provider      the provider the node runs on, which picks the metadata client (default local; the
//	                      only one with a client today)
//	--metadata-url        base URL of the provider's metadata API (required for local), e.g. http://10.42.0.1:9080
//	--node-name           this node's name; default: the metadata API's /v1/self
//	--node-ip             this node's address; default: from metadata
//	--pod-cidr            this node's pod prefix (written into the CNI configuration); default: from metadata
//	--state-dir           mount point of the encrypted state disk (default /var/lib/constellation/state)
//	--containerd-socket   containerd's socket (default /run/containerd/containerd.sock)
//	--sandbox-image       containerd's pod sandbox image; every pause image installed is tagged with it
//	                      (default registry.k8s.io/pause:3.10)
//	--bin-dir             where components are installed: kubeadm, kubelet (default /var/lib/constellation/bin)
//	--init-addr           address of the Init API (default :9000)
//	--recover-addr        address of the Recovery API, served on a restarted node only (default :9999)
//	--kubelet-log         the kubelet's log file (default /var/log/kubelet.log)
//	--cni-conf-dir        containerd's CNI configuration directory (default /etc/cni/net.d)
//	--pod-subnet          the cluster's pod prefix (default 10.244.0.0/16)
//	--service-subnet      the cluster's service prefix (default 10.96.0.0/12)
//	--control-plane-endpoint  stable API endpoint host[:port] (default: the first control plane's IP)
//	--image-repository    repository of the control-plane images (default kubeadm's, registry.k8s.io)
//	--disable-kube-proxy, --disable-coredns   skip those add-ons
//	--cgroup-root         the kubelet's --cgroup-root (default none: the node's cgroup namespace root)
//	--joinservice-image, --keyservice-image, --verificationservice-image, --operator-image   service images (as imported)
//	--log-level, --log-format   debug|info|warn|error, json|text
//
// The node runtime must provide: containerd at --containerd-socket with its CRI, the state disk mounted at
// --state-dir (ext4 with the encrypt feature), the vTPM at --tpm, the event log at --event-log, the
// metadata API, and IPv4 forwarding in the node's network namespace. The VerificationService mounts the
// directories of --tpm's socket and of --event-log from the node, so every node must use the same paths.
//
// SIGTERM or SIGINT stop the bootstrapper: an Init in progress gets 30 s to finish, then the kubelet is
// stopped.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/bootstrapper/internal/bootstrap"
	"github.com/constellation-go/constellation/bootstrapper/internal/clusterinit"
	"github.com/constellation-go/constellation/bootstrapper/internal/cni"
	"github.com/constellation-go/constellation/bootstrapper/internal/initserver"
	"github.com/constellation-go/constellation/bootstrapper/internal/joinclient"
	"github.com/constellation-go/constellation/bootstrapper/internal/kubeadm"
	"github.com/constellation-go/constellation/bootstrapper/internal/kubeadmconfig"
	"github.com/constellation-go/constellation/bootstrapper/internal/kubelet"
	"github.com/constellation-go/constellation/bootstrapper/internal/metadata"
	"github.com/constellation-go/constellation/bootstrapper/internal/nodeagent"
	"github.com/constellation-go/constellation/bootstrapper/internal/nodelock"
	"github.com/constellation-go/constellation/bootstrapper/internal/nodelog"
	"github.com/constellation-go/constellation/bootstrapper/internal/nodestate"
	"github.com/constellation-go/constellation/bootstrapper/internal/recoverserver"
	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/choose"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/buildinfo"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/components/install"
	"github.com/constellation-go/constellation/internal/constellation/services"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/service"
	"github.com/constellation-go/constellation/internal/statedisk"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

const (
	// nodeLogSize is how much of the bootstrapper's own log a failed init sends back.
	nodeLogSize = 1 << 20
	// kubeletLogTail is how much of the kubelet's log a failed init sends back.
	kubeletLogTail = 256 << 10
	// upgradeLogTail is how much of kubeadm's upgrade output the agent keeps for a failure's report.
	upgradeLogTail = 64 << 10
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bootstrapper:", err)
		os.Exit(1)
	}
}

// flags are the command line; see the package documentation.
type flags struct {
	tpm, eventLog, variant, metadataURL string
	cloudProvider                       cloudprovider.Provider
	nodeName, nodeIP, podCIDR           string
	stateDir, containerdSocket, binDir  string
	sandboxImage                        string
	initAddr, recoverAddr, kubeletLog   string
	cniConfDir                          string
	podSubnet, serviceSubnet            string
	controlPlaneEndpoint                string
	imageRepository, cgroupRoot         string
	disableKubeProxy, disableCoreDNS    bool
	images                              services.Images
	logLevel, logFormat                 *string
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("bootstrapper", flag.ContinueOnError)
	fs.StringVar(&f.tpm, "tpm", "device:"+tpm.DefaultDevice, "TPM address (device:<path> or swtpm:<socket>)")
	fs.StringVar(&f.eventLog, "event-log", vtpm.DefaultEventLogPath, "TCG2 event log to attach to attestations")
	fs.StringVar(&f.variant, "variant", variant.QEMUVTPM.String(), "attestation variant")
	provider := fs.String("cloud-provider", string(cloudprovider.Local), "the provider the node runs on; picks its metadata client")
	fs.StringVar(&f.metadataURL, "metadata-url", "", "base URL of the provider's metadata API (required for local)")
	fs.StringVar(&f.nodeName, "node-name", "", "this node's name (default: from metadata)")
	fs.StringVar(&f.nodeIP, "node-ip", "", "this node's address (default: from metadata)")
	fs.StringVar(&f.podCIDR, "pod-cidr", "", "this node's pod prefix (default: from metadata)")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/constellation/state", "mount point of the encrypted state disk")
	fs.StringVar(&f.containerdSocket, "containerd-socket", "/run/containerd/containerd.sock", "containerd's socket")
	fs.StringVar(&f.sandboxImage, "sandbox-image", "registry.k8s.io/pause:3.10", "containerd's pod sandbox image (sandbox_image of its configuration)")
	fs.StringVar(&f.binDir, "bin-dir", versions.NodeBinDir, "where kubeadm and the kubelet are installed")
	fs.StringVar(&f.initAddr, "init-addr", ":"+strconv.Itoa(initproto.Port), "address of the Init API")
	fs.StringVar(&f.recoverAddr, "recover-addr", ":"+strconv.Itoa(recoverproto.Port), "address of the Recovery API (served on a restarted node only)")
	fs.StringVar(&f.kubeletLog, "kubelet-log", "/var/log/kubelet.log", "the kubelet's log file")
	fs.StringVar(&f.cniConfDir, "cni-conf-dir", cni.DefaultConfDir, "containerd's CNI configuration directory")
	fs.StringVar(&f.podSubnet, "pod-subnet", kubeadmconfig.DefaultPodSubnet, "the cluster's pod prefix")
	fs.StringVar(&f.serviceSubnet, "service-subnet", kubeadmconfig.DefaultServiceSubnet, "the cluster's service prefix")
	fs.StringVar(&f.controlPlaneEndpoint, "control-plane-endpoint", "", "stable Kubernetes API endpoint host[:port] (default: the first control plane's IP)")
	fs.StringVar(&f.imageRepository, "image-repository", "", "repository of the control-plane images (default: kubeadm's)")
	fs.StringVar(&f.cgroupRoot, "cgroup-root", "", "the kubelet's --cgroup-root")
	fs.BoolVar(&f.disableKubeProxy, "disable-kube-proxy", false, "do not deploy kube-proxy")
	fs.BoolVar(&f.disableCoreDNS, "disable-coredns", false, "do not deploy CoreDNS")
	fs.StringVar(&f.images.JoinService, "joinservice-image", "", "JoinService image (default: the services chart's, docker.io/constellation/<name>:<services version>)")
	fs.StringVar(&f.images.KeyService, "keyservice-image", "", "KeyService image (default: the services chart's, docker.io/constellation/<name>:<services version>)")
	fs.StringVar(&f.images.VerificationService, "verificationservice-image", "", "VerificationService image (default: the services chart's, docker.io/constellation/<name>:<services version>)")
	fs.StringVar(&f.images.Operator, "operator-image", "", "upgrade controller image (default: the services chart's, docker.io/constellation/<name>:<services version>)")
	f.logLevel, f.logFormat = service.LogFlags(fs)
	if err := service.ParseFlags(fs, "BOOTSTRAPPER", args); err != nil {
		return nil, err
	}
	p, err := cloudprovider.Parse(*provider)
	if err != nil {
		return nil, fmt.Errorf("--cloud-provider: %w", err)
	}
	f.cloudProvider = p
	if p == cloudprovider.Local && f.metadataURL == "" {
		return nil, errors.New("--metadata-url (BOOTSTRAPPER_METADATA_URL) is required")
	}
	return f, nil
}

// run runs the bootstrapper until ctx ends; it logs to stderr.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	f, err := parseFlags(args)
	if err != nil {
		return err
	}
	logBuf := nodelog.NewBuffer(nodeLogSize)
	log, err := service.NewLogger(io.MultiWriter(stderr, logBuf), *f.logLevel, *f.logFormat)
	if err != nil {
		return err
	}
	bi := buildinfo.Get()
	log.Info("bootstrapper starting", "version", bi.Version, "commit", bi.Commit)

	own, err := choose.OpenNode(f.variant, f.tpm, f.eventLog)
	if err != nil {
		return err
	}
	defer own.Close()
	v, t, issuer := own.Variant, own.TPM, own.Issuer
	// What this node booted, before anything else: an admin comparing a node with the published
	// measurements finds the values in its first log lines, even if it never gets further.
	if pcrs, err := tpm.ReadPCRs(t, measurements.DefaultEnforced); err == nil {
		for _, idx := range measurements.DefaultEnforced {
			log.Info("booted with", "pcr", idx, "sha256", hex.EncodeToString(pcrs[idx]))
		}
	} else {
		log.Warn("reading the booted PCRs", "error", err)
	}
	md, err := metadata.New(metadata.Config{
		Provider: f.cloudProvider, URL: f.metadataURL, Name: f.nodeName, IP: f.nodeIP, PodCIDR: f.podCIDR,
	})
	if err != nil {
		return err
	}
	self, err := metadata.WaitForSelf(ctx, md, 2*time.Second, log)
	if err != nil {
		return err
	}
	log.Info("this node", "name", self.Name, "role", self.Role, "ip", self.IP, "podCIDR", self.PodCIDR)

	env := append(os.Environ(), "PATH="+f.binDir+":"+pathEnv())
	kubeletLog, err := os.OpenFile(f.kubeletLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("opening the kubelet's log: %w", err)
	}
	defer kubeletLog.Close()

	lock := nodelock.New(t)
	disk := &nodestate.Disk{Dir: f.stateDir, Encrypt: func(dir string, key []byte) error {
		_, err := statedisk.EncryptDir(dir, key)
		return err
	}}
	installer := protoInstaller{in: &install.Installer{
		ContainerdAddress: f.containerdSocket, SandboxImage: f.sandboxImage, Log: log.With("component", "installer"),
	}, disk: disk, controlPlane: self.Role == role.ControlPlane}
	kubeadmOut := &nodelog.LineLogger{Log: log.With("component", "kubeadm"), Msg: "kubeadm"}
	supervisor := kubelet.NewSupervisor(kubelet.ExecStarter{Path: filepath.Join(f.binDir, "kubelet"), Env: env},
		kubelet.Paths{}, nil, kubeletLog, log.With("component", "kubelet"))
	runner := &kubeadm.Runner{Kubeadm: filepath.Join(f.binDir, "kubeadm"), Env: env, Out: kubeadmOut, Kubelet: supervisor}
	node := kubeadmconfig.Node{Name: self.Name, IP: self.IP, CRISocket: "unix://" + f.containerdSocket, CgroupRoot: f.cgroupRoot}

	initializer := clusterinit.New(clusterinit.Config{
		Node: node, ControlPlaneEndpoint: f.controlPlaneEndpoint, PodSubnet: f.podSubnet, ServiceSubnet: f.serviceSubnet,
		ImageRepository: f.imageRepository, DisableKubeProxy: f.disableKubeProxy, DisableCoreDNS: f.disableCoreDNS,
		Variant: v.String(), TPMAddress: f.tpm, EventLogPath: f.eventLog, Images: f.images,
	}, clusterinit.Dependencies{
		Disk: disk, Installer: installer, Kubeadm: runner,
		// Every PCR: the admin's configuration may enforce more than the default set.
		PCRs: func() (map[uint32][]byte, error) { return tpm.ReadPCRs(t, measurements.AllPCRs()) },
	}, log.With("component", "init"))
	nodeLogs := func() []byte {
		kubeadmOut.Flush()
		out := logBuf.Bytes()
		out = append(out, "\n--- kubelet log (last lines) ---\n"...)
		return append(out, nodelog.Tail(f.kubeletLog, kubeletLogTail)...)
	}
	initCreds, err := atls.NewCredentials(issuer, nil)
	if err != nil {
		return err
	}
	initGRPC := grpc.NewServer(grpc.Creds(initCreds))
	initSrv := initserver.New(ctx, md, lock, initializer, nodeLogs, log.With("component", "initserver"))
	initSrv.Register(initGRPC)
	initLis, err := net.Listen("tcp", f.initAddr)
	if err != nil {
		return fmt.Errorf("listening for Init: %w", err)
	}

	recoverCreds, err := atls.NewCredentials(issuer, nil)
	if err != nil {
		return err
	}
	recoverGRPC := grpc.NewServer(grpc.Creds(recoverCreds))
	recoverserver.New(ctx, disk, lock, installer, log.With("component", "recovery")).Register(recoverGRPC)

	// Mutual aTLS: the node takes nothing from a JoinService that is not a control plane of its own image
	// in a cluster.
	serviceValidator, err := joinclient.NewServiceValidator(v, t)
	if err != nil {
		return err
	}
	joinCreds, err := atls.NewCredentials(issuer, []attestation.Validator{serviceValidator})
	if err != nil {
		return err
	}
	join := joinclient.New(md, lock, disk, &joinclient.NodeJoiner{
		Disk: disk, Installer: installer, Kubeadm: runner, Node: node,
	}, installer, joinCreds, log.With("component", "join"))

	// The agent's kubeadm runs with its own copy of the output, so that a failed upgrade reports its end.
	upgradeOut := nodelog.NewBuffer(upgradeLogTail)
	upgradeRunner := *runner
	upgradeRunner.Out = io.MultiWriter(kubeadmOut, upgradeOut)
	agent := &nodeagent.Agent{
		NodeName: self.Name, Client: kubeletClient, Installer: installer, Recorder: disk, Kubeadm: &upgradeRunner,
		Kubelet: supervisor, KubeadmTail: func() string { return lastLines(upgradeOut.Bytes(), 15) },
		Log: log.With("component", "nodeagent"),
	}

	b := &bootstrap.Bootstrapper{
		Lock: lock, InitServer: initGRPC, InitListener: initLis, Join: join, Kubelet: supervisor,
		PrepareNode: func() error { return cni.Write(f.cniConfDir, self.PodCIDR) },
		Log:         log, StopGrace: 30 * time.Second, KeepServing: initSrv.KeepServing,
		Recovery: &bootstrap.Recovery{
			Server: recoverGRPC, Restarted: disk.Initialized,
			Listen: func() (net.Listener, error) { return net.Listen("tcp", f.recoverAddr) },
		},
		Agent: agent,
	}
	err = b.Run(ctx)
	log.Info("bootstrapper stopped", "error", err)
	return err
}

func pathEnv() string {
	if p := os.Getenv("PATH"); p != "" {
		return p
	}
	return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

// protoInstaller installs components (a worker skips the control planes' images, versions.ForNode) and
// records them on the (unlocked) state disk, from which a recovered node installs them again.
type protoInstaller struct {
	in           *install.Installer
	disk         *nodestate.Disk
	controlPlane bool
}

func (p protoInstaller) Install(ctx context.Context, comps []*components.Component) error {
	if err := p.Stage(ctx, comps); err != nil {
		return err
	}
	data, err := components.MarshalList(comps)
	if err != nil {
		return err
	}
	return p.disk.SaveComponents(data)
}

// Stage installs components without recording them (an upgrade records them once the kubelet moved).
func (p protoInstaller) Stage(ctx context.Context, comps []*components.Component) error {
	cs, err := install.FromProto(versions.ForNode(comps, p.controlPlane))
	if err != nil {
		return err
	}
	return p.in.Install(ctx, cs)
}

// kubeletClient returns a client with the kubelet's credentials (the node's own identity); the file exists
// once the node joined.
func kubeletClient() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubelet.KubeconfigFile)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// lastLines returns the last n lines of out.
func lastLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
