// Package kubeadmconfig writes the configuration files of `kubeadm init` and `kubeadm join` for a node,
// using kubeadm's own v1beta4 types (k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/v1beta4) and the
// kubelet's v1beta1 KubeletConfiguration, so field names and structure come from upstream rather than from
// a copy. The kube-proxy document is the one exception: its upstream type has no omitempty tags, so it is
// written as a small map and checked against the upstream type with a strict decode.
//
// Settings that follow from the environment nodes run in (docs/architecture.md §8):
//   - cgroupDriver cgroupfs: hosts use cgroup v1 (hybrid), and there is no systemd to delegate to.
//   - the node IP is given explicitly everywhere (kubelet --node-ip, the API server's advertise address, etcd):
//     nodes have no default route, from which kubeadm and the kubelet would otherwise pick an address.
//   - failSwapOn false and hard eviction thresholds of 0% for what a node shares with its host (swap, the
//     image file system, a tmpfs), which it neither controls nor should evict pods over; the node file
//     system (/var/lib/kubelet) is the node's own encrypted state disk, so it keeps a real threshold
//     (nodefs.available 5%): a full state disk shows as DiskPressure, and the kubelet reclaims space; the
//     condition clears a minute after the pressure ended.
//   - kube-proxy's conntrack.maxPerCore 0: nf_conntrack_max is global and read-only outside the host's network
//     namespace; kube-proxy would fail trying to raise it.
//   - the controller manager does not allocate node pod CIDRs: the provider assigns each node's pod range
//     (metadata) and the node runtime configures CNI with it.
//   - preflight errors ignored: see IgnoredPreflightErrors.
package kubeadmconfig

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	bootstraptokenv1 "k8s.io/kubernetes/cmd/kubeadm/app/apis/bootstraptoken/v1"
	kubeadmv1beta4 "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/v1beta4"
	"sigs.k8s.io/yaml"
)

// API versions and kinds of the documents.
const (
	kubeadmAPIVersion   = "kubeadm.k8s.io/v1beta4"
	kubeletAPIVersion   = "kubelet.config.k8s.io/v1beta1"
	kubeProxyAPIVersion = "kubeproxy.config.k8s.io/v1alpha1"
)

// Well-known values.
const (
	// APIServerPort is the Kubernetes API port (docs/architecture.md §7).
	APIServerPort = 6443
	// DefaultCRISocket is containerd's socket in the node's private /run/containerd.
	DefaultCRISocket = "unix:///run/containerd/containerd.sock"
	// DefaultPodSubnet is the cluster's pod address range.
	DefaultPodSubnet = "10.244.0.0/16"
	// DefaultServiceSubnet is the cluster's service address range.
	DefaultServiceSubnet = "10.96.0.0/12"
	// InitTokenTTL bounds the bootstrap token `kubeadm init` insists on creating. Nothing uses it: joining
	// nodes get their own tokens from the JoinService, and the bootstrapper deletes it right after init.
	InitTokenTTL = time.Minute
	// NodeBootstrapGroup is the group kubeadm's RBAC lets join and post CSRs.
	NodeBootstrapGroup = "system:bootstrappers:kubeadm:default-node-token"
)

// Preflight checks ignored on every node, with the reason.
const (
	// PreflightSystemVerification reads the kernel configuration (/proc/config.gz or
	// /boot/config-$(uname -r)): a local node runs the host's kernel under the image's root, where neither
	// exists for that kernel, and the check also reports cgroup v1, which this machine uses.
	PreflightSystemVerification = "SystemVerification"
	// PreflightKubeletConf is ignored on joins only: the bootstrapper writes /etc/kubernetes/kubelet.conf
	// itself, with the kubelet client certificate the JoinService signed for this attested node, so the
	// kubelet never falls back to TLS bootstrapping with the token.
	PreflightKubeletConf = "FileAvailable--etc-kubernetes-kubelet.conf"
)

// IgnoredPreflightErrors are the preflight checks `kubeadm init` ignores. Everything else is enforced,
// including ImagePull: images must have been imported into containerd (there is no registry), and a missing
// one stops init in preflight with its name rather than later with a time-out.
var IgnoredPreflightErrors = []string{PreflightSystemVerification}

// IgnoredJoinPreflightErrors are the preflight checks `kubeadm join` ignores.
var IgnoredJoinPreflightErrors = []string{PreflightSystemVerification, PreflightKubeletConf}

// IgnoredUpgradePreflightErrors are the preflight checks `kubeadm upgrade apply` and `kubeadm upgrade node`
// ignore: the same kernel check as init's.
var IgnoredUpgradePreflightErrors = []string{PreflightSystemVerification}

// Node is what both init and join need to know about the node itself.
type Node struct {
	// Name is the Kubernetes node name (from metadata).
	Name string
	// IP is the node's address on the cluster network.
	IP netip.Addr
	// CRISocket is containerd's endpoint; empty means DefaultCRISocket.
	CRISocket string
	// CgroupRoot, if set, is the kubelet's --cgroup-root: the cgroup under which it creates pod cgroups, so
	// that several nodes sharing the host's cgroup hierarchy do not manage the same /kubepods. The node
	// runtime must create it.
	CgroupRoot string
}

// Init is the input of the `kubeadm init` configuration.
type Init struct {
	Node Node
	// KubernetesVersion is the full version, e.g. v1.33.13.
	KubernetesVersion string
	// ClusterName is the cluster's name (kubeconfig cluster entry, certificates' organisation).
	ClusterName string
	// ControlPlaneEndpoint is host or host:port of the stable API endpoint; empty means the node's IP. kubeadm
	// refuses further control planes unless it is set at init.
	ControlPlaneEndpoint string
	// CertSANs are extra names and addresses for the API server's certificate. The node's IP, the control
	// plane endpoint, localhost and 127.0.0.1 are always included.
	CertSANs []string
	// PodSubnet and ServiceSubnet are the cluster's ranges; empty means the defaults.
	PodSubnet     string
	ServiceSubnet string
	// ImageRepository is where kubeadm takes control-plane images from; empty means kubeadm's default
	// (registry.k8s.io). Images are never pulled: they must be imported under these names.
	ImageRepository string
	// BootstrapToken is the token kubeadm creates at init ("<id>.<secret>"); see InitTokenTTL.
	BootstrapToken string
	// DisableKubeProxy and DisableCoreDNS skip those add-ons.
	DisableKubeProxy bool
	DisableCoreDNS   bool
}

// Join is the input of the `kubeadm join` configuration.
type Join struct {
	Node Node
	// APIServerEndpoint is host:port of the API server (from the join ticket).
	APIServerEndpoint string
	// Token is the bootstrap token (from the join ticket).
	Token string
	// CACertHash is "sha256:<hex>" of the cluster CA's public key (from the join ticket).
	CACertHash string
	// ControlPlane joins as a control plane; the PKI files must already be in place.
	ControlPlane bool
}

var (
	caCertHashRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	versionRe    = regexp.MustCompile(`^v1\.\d+\.\d+$`)
)

// GenerateToken returns a random bootstrap token for Init.BootstrapToken.
func GenerateToken() (string, error) {
	return bootstraputil.GenerateBootstrapToken()
}

func (n Node) validate() []error {
	var errs []error
	if msgs := validation.IsDNS1123Subdomain(n.Name); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("node name %q: %v", n.Name, msgs))
	}
	if !n.IP.IsValid() || n.IP.IsUnspecified() {
		errs = append(errs, fmt.Errorf("node IP %q is not a usable address", n.IP))
	}
	return errs
}

func (n Node) criSocket() string {
	if n.CRISocket == "" {
		return DefaultCRISocket
	}
	return n.CRISocket
}

func (n Node) registration(ignored []string) kubeadmv1beta4.NodeRegistrationOptions {
	args := []kubeadmv1beta4.Arg{{Name: "node-ip", Value: n.IP.String()}}
	if n.CgroupRoot != "" {
		args = append(args, kubeadmv1beta4.Arg{Name: "cgroup-root", Value: n.CgroupRoot})
	}
	return kubeadmv1beta4.NodeRegistrationOptions{
		Name:                  n.Name,
		CRISocket:             n.criSocket(),
		KubeletExtraArgs:      args,
		IgnorePreflightErrors: append([]string(nil), ignored...),
	}
}

func (n Node) apiEndpoint() kubeadmv1beta4.APIEndpoint {
	return kubeadmv1beta4.APIEndpoint{AdvertiseAddress: n.IP.String(), BindPort: APIServerPort}
}

// Endpoint returns the control plane endpoint as host:port: ControlPlaneEndpoint with the API server port
// added if it has none, or the node's IP.
func (c Init) Endpoint() (string, error) {
	ep := c.ControlPlaneEndpoint
	if ep == "" {
		return net.JoinHostPort(c.Node.IP.String(), strconv.Itoa(APIServerPort)), nil
	}
	if _, _, err := net.SplitHostPort(ep); err != nil {
		ep = net.JoinHostPort(ep, strconv.Itoa(APIServerPort))
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return "", fmt.Errorf("control plane endpoint %q: %w", c.ControlPlaneEndpoint, err)
	}
	if err := validateHost(host); err != nil {
		return "", fmt.Errorf("control plane endpoint %q: %w", c.ControlPlaneEndpoint, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("control plane endpoint %q: bad port", c.ControlPlaneEndpoint)
	}
	return ep, nil
}

// validateHost accepts an IP address or a DNS name, the only things that can go into a certificate SAN.
func validateHost(h string) error {
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	if msgs := validation.IsDNS1123Subdomain(h); len(msgs) > 0 {
		return fmt.Errorf("%q is neither an IP address nor a DNS name", h)
	}
	return nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func validatePrefix(field, s string) error {
	if _, err := netip.ParsePrefix(s); err != nil {
		return fmt.Errorf("%s %q is not a CIDR like 10.96.0.0/12", field, s)
	}
	return nil
}

// GenerateInit returns the `kubeadm init --config` file: InitConfiguration, ClusterConfiguration,
// KubeletConfiguration and, unless disabled, KubeProxyConfiguration. Every invalid input is reported.
func GenerateInit(c Init) ([]byte, error) {
	errs := c.Node.validate()
	if !versionRe.MatchString(c.KubernetesVersion) {
		errs = append(errs, fmt.Errorf("kubernetes version %q is not a full version like v1.33.13", c.KubernetesVersion))
	}
	if msgs := validation.IsDNS1123Subdomain(c.ClusterName); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("cluster name %q: %v", c.ClusterName, msgs))
	}
	endpoint, err := c.Endpoint()
	if err != nil {
		errs = append(errs, err)
	}
	for _, san := range c.CertSANs {
		if err := validateHost(san); err != nil {
			errs = append(errs, fmt.Errorf("API server certificate SAN: %w", err))
		}
	}
	podSubnet, serviceSubnet := orDefault(c.PodSubnet, DefaultPodSubnet), orDefault(c.ServiceSubnet, DefaultServiceSubnet)
	for field, v := range map[string]string{"pod subnet": podSubnet, "service subnet": serviceSubnet} {
		if err := validatePrefix(field, v); err != nil {
			errs = append(errs, err)
		}
	}
	token, err := bootstraptokenv1.NewBootstrapTokenString(c.BootstrapToken)
	if err != nil {
		errs = append(errs, errors.New("bootstrap token is not of the form <6 chars>.<16 chars>"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	endpointHost, _, _ := net.SplitHostPort(endpoint)

	initCfg := kubeadmv1beta4.InitConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: kubeadmAPIVersion, Kind: "InitConfiguration"},
		BootstrapTokens: []bootstraptokenv1.BootstrapToken{{
			Token:       token,
			Description: "created by kubeadm init; deleted by the bootstrapper once init is done",
			TTL:         &metav1.Duration{Duration: InitTokenTTL},
			Usages:      []string{"signing", "authentication"},
			Groups:      []string{NodeBootstrapGroup},
		}},
		NodeRegistration: c.Node.registration(IgnoredPreflightErrors),
		LocalAPIEndpoint: c.Node.apiEndpoint(),
	}
	sans := uniq(append([]string{c.Node.IP.String(), endpointHost, "127.0.0.1", "localhost"}, c.CertSANs...))
	clusterCfg := kubeadmv1beta4.ClusterConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: kubeadmAPIVersion, Kind: "ClusterConfiguration"},
		Etcd: kubeadmv1beta4.Etcd{Local: &kubeadmv1beta4.LocalEtcd{
			DataDir:        "/var/lib/etcd",
			ServerCertSANs: uniq([]string{c.Node.IP.String(), c.Node.Name}),
			PeerCertSANs:   uniq([]string{c.Node.IP.String(), c.Node.Name}),
		}},
		Networking: kubeadmv1beta4.Networking{
			PodSubnet:     podSubnet,
			ServiceSubnet: serviceSubnet,
		},
		KubernetesVersion:    c.KubernetesVersion,
		ControlPlaneEndpoint: endpoint,
		APIServer: kubeadmv1beta4.APIServer{
			ControlPlaneComponent: kubeadmv1beta4.ControlPlaneComponent{
				ExtraArgs: []kubeadmv1beta4.Arg{
					// On SIGTERM, drain the requests in flight and stop within 2 s. Without it, the server waits
					// up to its request timeout (60 s) for open watches and is killed after the pod's 30 s grace
					// period: every restart kubeadm makes (upgrades, certificate renewals) would keep the one
					// control plane's API away 30 s longer than its start takes.
					{Name: "shutdown-send-retry-after", Value: "true"},
				},
			},
			CertSANs: sans,
		},
		ControllerManager: kubeadmv1beta4.ControlPlaneComponent{
			ExtraArgs: []kubeadmv1beta4.Arg{
				{Name: "allocate-node-cidrs", Value: "false"},
				// kubeadm mounts this directory into the static pod and creates it if missing; its default under
				// /usr is on the node's read-only root, so the pod would never start.
				{Name: "flex-volume-plugin-dir", Value: FlexVolumeDir},
			},
		},
		DNS:             kubeadmv1beta4.DNS{Disabled: c.DisableCoreDNS},
		Proxy:           kubeadmv1beta4.Proxy{Disabled: c.DisableKubeProxy},
		ImageRepository: c.ImageRepository,
		ClusterName:     c.ClusterName,
	}
	docs := []any{initCfg, clusterCfg, kubeletConfiguration()}
	if !c.DisableKubeProxy {
		proxy, err := kubeProxyConfiguration()
		if err != nil {
			return nil, err
		}
		docs = append(docs, proxy)
	}
	return marshalDocs(docs...)
}

// GenerateJoin returns the `kubeadm join --config` file.
func GenerateJoin(c Join) ([]byte, error) {
	errs := c.Node.validate()
	host, port, err := net.SplitHostPort(c.APIServerEndpoint)
	if err != nil {
		errs = append(errs, fmt.Errorf("API server endpoint %q is not host:port", c.APIServerEndpoint))
	} else if err := validateHost(host); err != nil || port == "" {
		errs = append(errs, fmt.Errorf("API server endpoint %q is not host:port", c.APIServerEndpoint))
	}
	if !bootstraputil.IsValidBootstrapToken(c.Token) {
		errs = append(errs, errors.New("bootstrap token is not of the form <6 chars>.<16 chars>"))
	}
	if !caCertHashRe.MatchString(c.CACertHash) {
		errs = append(errs, fmt.Errorf("CA certificate hash %q is not sha256:<64 hex digits>", c.CACertHash))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	joinCfg := kubeadmv1beta4.JoinConfiguration{
		TypeMeta:         metav1.TypeMeta{APIVersion: kubeadmAPIVersion, Kind: "JoinConfiguration"},
		NodeRegistration: c.Node.registration(IgnoredJoinPreflightErrors),
		Discovery: kubeadmv1beta4.Discovery{
			BootstrapToken: &kubeadmv1beta4.BootstrapTokenDiscovery{
				Token:             c.Token,
				APIServerEndpoint: c.APIServerEndpoint,
				CACertHashes:      []string{c.CACertHash},
			},
			TLSBootstrapToken: c.Token,
		},
	}
	if c.ControlPlane {
		joinCfg.ControlPlane = &kubeadmv1beta4.JoinControlPlane{LocalAPIEndpoint: c.Node.apiEndpoint()}
	}
	return marshalDocs(joinCfg)
}

// kubeletConfiguration is the cluster-wide kubelet configuration (kubeadm stores it in the kubelet-config
// ConfigMap, so joining nodes get the same). Node-specific flags go into kubeletExtraArgs.
func kubeletConfiguration() kubeletv1beta1.KubeletConfiguration {
	eviction := map[string]string{"nodefs.available": "5%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"}
	return kubeletv1beta1.KubeletConfiguration{
		TypeMeta:     metav1.TypeMeta{APIVersion: kubeletAPIVersion, Kind: "KubeletConfiguration"},
		CgroupDriver: "cgroupfs",
		FailSwapOn:   ptr(false),
		EvictionHard: eviction,
		// How long a pressure condition stays after the pressure ended: a minute instead of five, so a node
		// whose state disk was cleaned up admits pods again soon; still enough to damp oscillation.
		EvictionPressureTransitionPeriod: metav1.Duration{Duration: time.Minute},
		ImageGCHighThresholdPercent:      ptr(int32(100)),
		VolumePluginDir:                  FlexVolumeDir,
	}
}

// FlexVolumeDir is where the kubelet and the controller manager look for FlexVolume plugins: writable
// (the default, under /usr, is on the node's read-only root).
const FlexVolumeDir = "/var/lib/kubelet/volumeplugins"

// kubeProxyConfiguration sets only what differs from kube-proxy's defaults here.
func kubeProxyConfiguration() (map[string]any, error) {
	doc := map[string]any{
		"apiVersion": kubeProxyAPIVersion,
		"kind":       "KubeProxyConfiguration",
		"conntrack":  map[string]any{"maxPerCore": 0},
	}
	raw, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	var typed kubeproxyv1alpha1.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(raw, &typed); err != nil {
		return nil, fmt.Errorf("kube-proxy configuration does not match its upstream type: %w", err)
	}
	return doc, nil
}

func marshalDocs(docs ...any) ([]byte, error) {
	var out bytes.Buffer
	for i, d := range docs {
		raw, err := yaml.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("encoding kubeadm configuration: %w", err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(raw)
	}
	return out.Bytes(), nil
}

func uniq(in []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(in))
	for _, s := range in {
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		out = append(out, s)
	}
	return out
}

func ptr[T any](v T) *T { return &v }
