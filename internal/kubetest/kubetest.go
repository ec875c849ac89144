// Package kubetest starts a real etcd and kube-apiserver on the loopback interface for integration tests,
// in the spirit of controller-runtime's envtest.
//
// The binaries are built from source by bazel/kubernetes/build.sh (Kubernetes v1.33.13, etcd v3.5.24) into a
// cache directory that BinDir returns. Start runs both processes for one test with a fresh PKI (cluster CA,
// serving certificate, admin client certificate, service account key pair) and stops them, and deletes their
// data, when the test ends:
//
//	c := kubetest.Start(t)
//	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
//
// The cluster has no controller-manager, scheduler or kubelet: it is an API server with storage. Bootstrap
// token authentication and the Node and RBAC authorizers are on, as in a kubeadm cluster.
package kubetest

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// KubernetesVersion is the version of kube-apiserver that bazel/kubernetes/build.sh builds.
	KubernetesVersion = "v1.33.13"
	// EtcdVersion is the version of etcd that bazel/kubernetes/build.sh builds.
	EtcdVersion = "v3.5.24"

	// BuildCommand builds the binaries Start needs, run from the repository root.
	BuildCommand = "bazel/kubernetes/build.sh etcd kube-apiserver"

	// ServiceClusterIPRange is the apiserver's --service-cluster-ip-range.
	ServiceClusterIPRange = "10.96.0.0/16"
	// ServiceAccountIssuer is the apiserver's --service-account-issuer.
	ServiceAccountIssuer = "https://kubernetes.default.svc"

	// AdminUser is the user name of the admin client certificate (in group system:masters).
	AdminUser = "kubetest-admin"

	etcdTimeout      = 30 * time.Second
	apiserverTimeout = 60 * time.Second
	stopGrace        = 5 * time.Second
	startAttempts    = 3
)

// BinDir returns the directory with the etcd and kube-apiserver binaries: $CONSTELLATION_KUBE_BIN if set,
// otherwise the output directory of bazel/kubernetes/build.sh,
// ${CONSTELLATION_CACHE:-/var/cache/constellation}/kubernetes/<KubernetesVersion>/bin.
func BinDir() string {
	if dir := os.Getenv("CONSTELLATION_KUBE_BIN"); dir != "" {
		return dir
	}
	cache := os.Getenv("CONSTELLATION_CACHE")
	if cache == "" {
		cache = "/var/cache/constellation"
	}
	return filepath.Join(cache, "kubernetes", KubernetesVersion, "bin")
}

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	// Config is an admin client configuration (client certificate in group system:masters). Client-side
	// rate limiting is off.
	Config *rest.Config
	// Client is a clientset for Config.
	Client kubernetes.Interface
	// CACert is the cluster CA: it signs the apiserver's serving certificate and the client certificates
	// the apiserver accepts.
	CACert *x509.Certificate
	// CAKey is the cluster CA's private key.
	CAKey crypto.Signer
	// CACertPEM is CACert, PEM-encoded.
	CACertPEM []byte
	// Endpoint is the apiserver's URL, https://127.0.0.1:<port>.
	Endpoint string
	// Kubeconfig is an admin kubeconfig (the credentials of Config).
	Kubeconfig []byte

	dir       string // temporary directory holding the PKI and etcd's data
	etcdURL   string
	started   bool // Start returned; failures after this get the processes' output logged
	etcd      *process
	apiserver *process
	// controllerManager runs only when a test asks for it (StartControllerManager).
	controllerManager *process
}

// Start runs etcd and kube-apiserver for the test and stops them, and removes their data, in t.Cleanup. It
// returns once the apiserver's /readyz is OK and the kube-system namespace exists.
//
// If the binaries are missing from BinDir, the test is skipped with the command that builds them, unless
// the CI environment variable is set: then it fails.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bin := BinDir()
	etcdPath := filepath.Join(bin, "etcd")
	apiserverPath := filepath.Join(bin, "kube-apiserver")
	requireBinaries(t, BuildCommand, etcdPath, apiserverPath)

	dir, err := os.MkdirTemp("", "kt")
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	c := &Cluster{dir: dir}
	t.Cleanup(func() {
		if c.started && t.Failed() {
			c.logOutput(t)
		}
		c.stop()
		if err := os.RemoveAll(c.dir); err != nil {
			t.Errorf("kubetest: removing %s: %v", c.dir, err)
		}
	})

	if err := c.writePKI(); err != nil {
		t.Fatalf("kubetest: creating PKI: %v", err)
	}

	for attempt := 1; ; attempt++ {
		err := c.start(etcdPath, apiserverPath, t)
		if err == nil {
			break
		}
		if errors.Is(err, errAddrInUse) && attempt < startAttempts {
			t.Logf("kubetest: %v; retrying with other ports", err)
			c.stop()
			if err := os.RemoveAll(filepath.Join(c.dir, "etcd")); err != nil {
				t.Fatalf("kubetest: %v", err)
			}
			continue
		}
		t.Fatalf("kubetest: %v", err)
	}
	c.started = true
	return c
}

// requireBinaries skips the test (fails it where testenv is strict) when a binary is missing, saying how to
// build it.
func requireBinaries(t testing.TB, buildCommand string, paths ...string) {
	t.Helper()
	var missing []string
	for _, p := range paths {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("kubetest: missing %s; build them from the repository root with %q "+
		"(or set CONSTELLATION_KUBE_BIN to a directory holding them)", strings.Join(missing, ", "), buildCommand)
	testenv.SkipOrFail(t, msg)
}

// StartControllerManager runs kube-controller-manager with only the named controllers (e.g.
// "bootstrapsigner", which signs the cluster-info ConfigMap with each bootstrap token, as kubeadm's token
// discovery requires) until the cluster stops.
func (c *Cluster) StartControllerManager(t testing.TB, controllers ...string) {
	t.Helper()
	path := filepath.Join(BinDir(), "kube-controller-manager")
	requireBinaries(t, "bazel/kubernetes/build.sh kube-controller-manager", path)
	// Upstream RBAC grants the controllers' rights to their service accounts, which need the token and
	// service account controllers; in this minimal environment the controller manager runs as an admin.
	kubeconfig, err := c.kubeconfigFor("system:kube-controller-manager", []string{"system:masters"})
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	kubeconfigPath := filepath.Join(c.dir, "controller-manager.conf")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	c.controllerManager, err = startProcess("kube-controller-manager", path, []string{
		"--kubeconfig=" + kubeconfigPath,
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--profiling=false",
	}, c.dir)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
}

var errAddrInUse = errors.New("port already in use")

// pickPorts chooses the ports for etcd (client, peer) and kube-apiserver; tests replace it.
var pickPorts = freePorts

// writePKI creates the CA, the serving and admin certificates and the service account key pair, writes the
// files the apiserver needs to c.dir/pki and fills in the CA fields.
func (c *Cluster) writePKI() error {
	caCert, caKey, err := newCA()
	if err != nil {
		return err
	}
	c.CACert, c.CAKey = caCert, caKey
	c.CACertPEM = encodeCertPEM(caCert.Raw)

	_, serviceNet, err := net.ParseCIDR(ServiceClusterIPRange)
	if err != nil {
		return err
	}
	kubernetesServiceIP := make(net.IP, len(serviceNet.IP))
	copy(kubernetesServiceIP, serviceNet.IP)
	kubernetesServiceIP[len(kubernetesServiceIP)-1]++

	servingCert, servingKey, err := signLeaf(caCert, caKey, leafSpec{
		commonName:  "kube-apiserver",
		extKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		dnsNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		ips: []net.IP{net.IPv4(127, 0, 0, 1), kubernetesServiceIP},
	})
	if err != nil {
		return err
	}
	saKey, err := newKey()
	if err != nil {
		return err
	}
	saKeyPEM, err := privateKeyPEM(saKey)
	if err != nil {
		return err
	}
	saPubPEM, err := publicKeyPEM(saKey.Public())
	if err != nil {
		return err
	}

	pki := filepath.Join(c.dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	for name, data := range map[string][]byte{
		"ca.crt":        c.CACertPEM,
		"apiserver.crt": servingCert,
		"apiserver.key": servingKey,
		"sa.key":        saKeyPEM,
		"sa.pub":        saPubPEM,
	} {
		if err := os.WriteFile(filepath.Join(pki, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// start picks ports, starts etcd and then kube-apiserver and waits until both are ready.
func (c *Cluster) start(etcdPath, apiserverPath string, t testing.TB) error {
	ports, err := pickPorts(3)
	if err != nil {
		return fmt.Errorf("picking ports: %w", err)
	}
	clientPort, peerPort, securePort := ports[0], ports[1], ports[2]
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	c.etcdURL = etcdURL
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	c.Endpoint = "https://127.0.0.1:" + strconv.Itoa(securePort)

	began := time.Now()
	c.etcd, err = startProcess("etcd", etcdPath, []string{
		"--name=kubetest",
		"--data-dir=" + filepath.Join(c.dir, "etcd"),
		"--listen-client-urls=" + etcdURL,
		"--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubetest=" + peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}, c.dir)
	if err != nil {
		return err
	}
	if err := waitEtcd(c.etcd, etcdURL); err != nil {
		return err
	}
	etcdReady := time.Since(began)

	if err := c.makeAdmin(); err != nil {
		return err
	}
	pki := filepath.Join(c.dir, "pki")
	began = time.Now()
	c.apiserver, err = startProcess("kube-apiserver", apiserverPath, []string{
		"--etcd-servers=" + etcdURL,
		"--secure-port=" + strconv.Itoa(securePort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The "kubernetes" Endpoints object cannot hold a loopback address: without this the reconciler
		// logs a validation error every few seconds.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(c.dir, "apiserver"),
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--client-ca-file=" + filepath.Join(pki, "ca.crt"),
		"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--authorization-mode=Node,RBAC",
		"--enable-bootstrap-token-auth=true",
		"--enable-admission-plugins=NodeRestriction",
		// There is no controller-manager to create the "default" service accounts that the ServiceAccount
		// admission plugin requires of every pod.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
	}, c.dir)
	if err != nil {
		return err
	}
	if err := c.waitAPIServer(began.Add(apiserverTimeout)); err != nil {
		return err
	}
	t.Logf("kubetest: etcd ready in %v, kube-apiserver ready in %v at %s",
		etcdReady.Round(time.Millisecond), time.Since(began).Round(time.Millisecond), c.Endpoint)
	return nil
}

// makeAdmin fills in Kubeconfig, Config and Client for the admin user.
func (c *Cluster) makeAdmin() error {
	kubeconfig, err := c.kubeconfigFor(AdminUser, []string{"system:masters"})
	if err != nil {
		return err
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS = -1 // no client-side rate limiting
	cfg.UserAgent = "kubetest"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	c.Kubeconfig, c.Config, c.Client = kubeconfig, cfg, client
	return nil
}

// waitEtcd waits until etcd reports itself healthy.
func waitEtcd(p *process, url string) error {
	client := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	deadline := time.Now().Add(etcdTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if p.exited() {
			return exitedError(p)
		}
		resp, err := client.Get(url + "/health")
		if err == nil {
			body := make([]byte, 256)
			n, _ := resp.Body.Read(body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body[:n]), `"health":"true"`) {
				return nil
			}
			err = fmt.Errorf("GET /health: %s: %s", resp.Status, body[:n])
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("etcd not healthy after %v (last error: %v)\n%s", etcdTimeout, lastErr, p.describe())
}

// waitAPIServer waits until /readyz is OK and the kube-system namespace exists.
func (c *Cluster) waitAPIServer(deadline time.Time) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var lastErr error
	ready := false
	for {
		if c.apiserver.exited() {
			return exitedError(c.apiserver)
		}
		if c.etcd.exited() {
			return exitedError(c.etcd)
		}
		reqCtx, reqCancel := context.WithTimeout(ctx, 2*time.Second)
		if !ready {
			var body []byte
			body, lastErr = c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(reqCtx)
			if lastErr == nil {
				ready = true
			} else if len(body) > 0 {
				lastErr = fmt.Errorf("%w: %s", lastErr, body)
			}
		}
		if ready {
			_, lastErr = c.Client.CoreV1().Namespaces().Get(reqCtx, metav1.NamespaceSystem, metav1.GetOptions{})
			if lastErr == nil {
				reqCancel()
				return nil
			}
			if apierrors.IsNotFound(lastErr) {
				lastErr = errors.New("namespace kube-system does not exist yet")
			}
		}
		reqCancel()
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %v (last error: %v)\n%s\n%s",
				apiserverTimeout, lastErr, c.apiserver.describe(), c.etcd.describe())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// exitedError describes a process that exited during startup; errAddrInUse if it could not bind its port.
func exitedError(p *process) error {
	err := fmt.Errorf("%s exited during startup\n%s", p.name, p.describe())
	if isAddrInUse(p) {
		return fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return err
}

// Components Crash can crash.
const (
	Etcd      = "etcd"
	APIServer = "kube-apiserver"
)

// Crash kills etcd or kube-apiserver at once, as a crash would, keeps it down for down, and starts it again
// with the same ports, certificates and data; it returns once the component serves again.
func (c *Cluster) Crash(t testing.TB, component string, down time.Duration) {
	t.Helper()
	p := &c.etcd
	if component == APIServer {
		p = &c.apiserver
	}
	old := *p
	old.kill()
	time.Sleep(down)
	next, err := startProcess(old.name, old.path, old.args, old.dir)
	if err != nil {
		t.Fatalf("kubetest: restarting %s: %v", component, err)
	}
	*p = next
	switch component {
	case Etcd:
		err = waitEtcd(next, c.etcdURL)
	default:
		err = c.waitAPIServer(time.Now().Add(apiserverTimeout))
	}
	if err != nil {
		t.Fatalf("kubetest: %s did not come back: %v", component, err)
	}
}

// stop stops the controller manager, kube-apiserver, then etcd. All are waited for.
func (c *Cluster) stop() {
	if c.controllerManager != nil {
		c.controllerManager.stop(stopGrace)
	}
	if c.apiserver != nil {
		c.apiserver.stop(stopGrace)
	}
	if c.etcd != nil {
		c.etcd.stop(stopGrace)
	}
}

func (c *Cluster) logOutput(t testing.TB) {
	for _, p := range []*process{c.controllerManager, c.apiserver, c.etcd} {
		if p != nil {
			t.Logf("kubetest: %s", p.describe())
		}
	}
}

// KubeconfigFor returns a kubeconfig for the cluster whose client certificate, signed by the cluster CA,
// authenticates as user in groups.
func (c *Cluster) KubeconfigFor(t testing.TB, user string, groups []string) []byte {
	t.Helper()
	kubeconfig, err := c.kubeconfigFor(user, groups)
	if err != nil {
		t.Fatalf("kubetest: kubeconfig for %q: %v", user, err)
	}
	return kubeconfig
}

func (c *Cluster) kubeconfigFor(user string, groups []string) ([]byte, error) {
	certPEM, keyPEM, err := signLeaf(c.CACert, c.CAKey, leafSpec{
		commonName:   user,
		organization: groups,
		extKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{
		Server:                   c.Endpoint,
		CertificateAuthorityData: c.CACertPEM,
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: certPEM,
		ClientKeyData:         keyPEM,
	}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: user}
	cfg.CurrentContext = "kubetest"
	return clientcmd.Write(*cfg)
}
