// Package clusterinit sets up the first control plane once the Init API has authenticated the caller and
// taken the node lock: it unlocks the node's state disk with a key derived from the master secret,
// installs the Kubernetes components, runs `kubeadm init`, waits for the API server, removes the bootstrap
// token kubeadm insists on creating, and deploys the Constellation services with the attestation config
// derived from this node's own measurements. It returns the admin kubeconfig.
//
// The state disk records the completed init (nodestate's MarkMember). An init on a disk that records one is
// refused (the node holds a cluster: `constellation recover` brings it back); an init on a disk set up
// without the record was cut off (power loss, a crash) and is redone: `kubeadm reset` removes what it left,
// then the init runs as on a new disk, which the same master secret unlocks again.
package clusterinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/constellation-go/constellation/bootstrapper/internal/deploy"
	"github.com/constellation-go/constellation/bootstrapper/internal/initserver"
	"github.com/constellation-go/constellation/bootstrapper/internal/kubeadmconfig"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// AdminKubeconfig is where kubeadm writes the admin kubeconfig.
const AdminKubeconfig = "/etc/kubernetes/admin.conf"

// StateDisk is the node's encrypted state disk.
type StateDisk interface {
	// UUID identifies the disk; its key is derived from it.
	UUID() (string, error)
	// Unlock encrypts or unlocks the node's state with key and puts it in place.
	Unlock(key []byte) error
	// Initialized tells whether the disk was set up in an earlier boot.
	Initialized() bool
	// Member tells whether the unlocked disk records a completed init or join; MarkMember records it.
	Member() bool
	MarkMember() error
}

// Installer downloads, verifies (sha256) and installs components.
type Installer interface {
	Install(ctx context.Context, comps []*components.Component) error
}

// Kubeadm runs `kubeadm init`, and `kubeadm reset` before an init that redoes a cut-off one.
type Kubeadm interface {
	Init(ctx context.Context, config []byte) error
	Reset(ctx context.Context) error
}

// ErrMember refuses an init on a node whose state disk holds an initialized cluster.
var ErrMember = errors.New("this node's state disk holds a cluster that was initialized before")

// Config is what the initializer knows about the node and the cluster's shape (from flags and metadata).
type Config struct {
	Node kubeadmconfig.Node
	// ControlPlaneEndpoint is the stable API endpoint (host or host:port); empty means the node's IP.
	ControlPlaneEndpoint string
	PodSubnet            string
	ServiceSubnet        string
	ImageRepository      string
	DisableKubeProxy     bool
	DisableCoreDNS       bool
	// Variant, TPMAddress and EventLogPath describe the node's attestation, for the VerificationService and
	// the attestation config.
	Variant      string
	TPMAddress   string
	EventLogPath string
	Images       deploy.Images
	// AdminKubeconfig is where kubeadm writes the admin kubeconfig; empty means AdminKubeconfig.
	AdminKubeconfig string
	// APITimeout bounds the wait for the API server after kubeadm; zero means 2 minutes.
	APITimeout time.Duration
}

// Dependencies are the initializer's collaborators.
type Dependencies struct {
	Disk      StateDisk
	Installer Installer
	Kubeadm   Kubeadm
	// PCRs returns the node's current PCR values (at least measurements.DefaultEnforced).
	PCRs func() (map[uint32][]byte, error)
	// NewClient returns a Kubernetes client for a kubeconfig; nil means client-go's.
	NewClient func(kubeconfig []byte) (kubernetes.Interface, error)
	// Deploy deploys the services; nil means deploy.Deploy.
	Deploy func(ctx context.Context, client kubernetes.Interface, cfg deploy.Config) error
}

// Initializer implements initserver.Initializer.
type Initializer struct {
	cfg  Config
	deps Dependencies
	log  *slog.Logger
}

// New returns an initializer.
func New(cfg Config, deps Dependencies, log *slog.Logger) *Initializer {
	if cfg.AdminKubeconfig == "" {
		cfg.AdminKubeconfig = AdminKubeconfig
	}
	if cfg.APITimeout == 0 {
		cfg.APITimeout = 2 * time.Minute
	}
	if deps.NewClient == nil {
		deps.NewClient = newClient
	}
	if deps.Deploy == nil {
		deps.Deploy = deploy.Deploy
	}
	return &Initializer{cfg: cfg, deps: deps, log: log}
}

func (i *Initializer) kubeadmInput(req initserver.Request, token string) kubeadmconfig.Init {
	return kubeadmconfig.Init{
		Node:                 i.cfg.Node,
		KubernetesVersion:    req.KubernetesVersion,
		ClusterName:          req.ClusterName,
		ControlPlaneEndpoint: i.cfg.ControlPlaneEndpoint,
		CertSANs:             req.APIServerCertSANs,
		PodSubnet:            i.cfg.PodSubnet,
		ServiceSubnet:        i.cfg.ServiceSubnet,
		ImageRepository:      i.cfg.ImageRepository,
		BootstrapToken:       token,
		DisableKubeProxy:     i.cfg.DisableKubeProxy,
		DisableCoreDNS:       i.cfg.DisableCoreDNS,
	}
}

// Validate builds the kubeadm configuration from the request without using it, so that a request it
// cannot use is refused before the node lock is taken.
func (i *Initializer) Validate(req initserver.Request) error {
	if _, err := kubeadmconfig.GenerateInit(i.kubeadmInput(req, "abcdef.0123456789abcdef")); err != nil {
		return err
	}
	_, err := i.attestationConfig(req)
	return err
}

// attestationConfig is the JoinService's attestation config: the admin's, checked against this node.
func (i *Initializer) attestationConfig(req initserver.Request) ([]byte, error) {
	pcrs, err := i.deps.PCRs()
	if err != nil {
		return nil, fmt.Errorf("reading this node's measurements: %w", err)
	}
	return deploy.AttestationConfig(req.AttestationConfig, i.cfg.Variant, pcrs)
}

// Init sets up the node and the cluster.
func (i *Initializer) Init(ctx context.Context, req initserver.Request, progress initserver.Progress) ([]byte, error) {
	attestationConfig, err := i.attestationConfig(req)
	if err != nil {
		return nil, err
	}

	progress("state-disk", "unlocking the encrypted state disk")
	uuid, err := i.deps.Disk.UUID()
	if err != nil {
		return nil, fmt.Errorf("state disk: %w", err)
	}
	diskKey, err := crypto.DeriveKey(req.MasterSecret.Key, req.MasterSecret.Salt, uuid, joinproto.StateDiskKeyLength)
	if err != nil {
		return nil, err
	}
	setUpBefore := i.deps.Disk.Initialized()
	if err := i.deps.Disk.Unlock(diskKey); err != nil {
		return nil, err
	}
	if setUpBefore && i.deps.Disk.Member() {
		return nil, fmt.Errorf("%w: run 'constellation recover' to bring it back instead", ErrMember)
	}

	progress("install", fmt.Sprintf("installing %d Kubernetes components (%s)", len(req.Components), req.KubernetesVersion))
	if err := i.deps.Installer.Install(ctx, req.Components); err != nil {
		return nil, fmt.Errorf("installing components: %w", err)
	}
	if setUpBefore {
		// kubeadm is installed again only now: the node's /var did not survive the restart.
		progress("reset", "the state disk holds an init that was cut off: undoing it (kubeadm reset)")
		if err := i.deps.Kubeadm.Reset(ctx); err != nil {
			return nil, fmt.Errorf("undoing the cut-off init: %w", err)
		}
	}

	token, err := kubeadmconfig.GenerateToken()
	if err != nil {
		return nil, err
	}
	in := i.kubeadmInput(req, token)
	config, err := kubeadmconfig.GenerateInit(in)
	if err != nil {
		return nil, err
	}
	endpoint, err := in.Endpoint()
	if err != nil {
		return nil, err
	}
	progress("kubeadm-init", "running kubeadm init")
	if err := i.deps.Kubeadm.Init(ctx, config); err != nil {
		return nil, err
	}

	kubeconfig, err := os.ReadFile(i.cfg.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("reading the admin kubeconfig kubeadm wrote: %w", err)
	}
	client, err := i.deps.NewClient(kubeconfig)
	if err != nil {
		return nil, err
	}
	progress("wait-api", "waiting for the Kubernetes API server")
	if err := waitForAPI(ctx, client, i.cfg.APITimeout); err != nil {
		return nil, err
	}
	if err := deleteToken(ctx, client, token); err != nil {
		return nil, err
	}

	progress("deploy", "deploying the JoinService, KeyService and VerificationService")
	if err := i.deps.Deploy(ctx, client, deploy.Config{
		APIServerEndpoint: endpoint,
		KubernetesVersion: req.KubernetesVersion,
		Components:        req.Components,
		MasterSecret:      req.MasterSecret,
		KMSURI:            req.KMSURI,
		AttestationConfig: attestationConfig,
		Variant:           i.cfg.Variant,
		TPMAddress:        i.cfg.TPMAddress,
		EventLogPath:      i.cfg.EventLogPath,
		Images:            i.cfg.Images,
	}); err != nil {
		return nil, err
	}
	if err := i.deps.Disk.MarkMember(); err != nil {
		return nil, err
	}
	progress("done", "the cluster is initialised")
	return kubeconfig, nil
}

// waitForAPI polls the API server's /readyz.
func waitForAPI(ctx context.Context, client kubernetes.Interface, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("/readyz: %q", body)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the API server: %w (last error: %v)", ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// deleteToken removes the bootstrap token kubeadm init created: joining nodes get their own short-lived
// tokens from the JoinService, after attestation.
func deleteToken(ctx context.Context, client kubernetes.Interface, token string) error {
	id, _, ok := strings.Cut(token, ".")
	if !ok {
		return errors.New("deleting the init bootstrap token: malformed token")
	}
	err := client.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the init bootstrap token: %w", err)
	}
	return nil
}

func newClient(kubeconfig []byte) (kubernetes.Interface, error) {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}
