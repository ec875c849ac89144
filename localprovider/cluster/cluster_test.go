package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/constellation-go/constellation/bazel/oci/ociimage"
	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/localprovider/localtest"
	"github.com/constellation-go/constellation/localprovider/network"
	"github.com/constellation-go/constellation/localprovider/node"
)

func TestMain(m *testing.M) {
	node.InitMain()
	os.Exit(m.Run())
}

// TestTwoNodeCluster is the node issue's integration test: a control plane and a worker from the node
// image, initialized over aTLS like the CLI does; the worker joins through the real JoinService; both get
// Ready, the services run where they should, a pod on the worker reaches a pod on the control plane, and a
// worker booted from a tampered image is refused by the JoinService and never becomes a node.
func TestTwoNodeCluster(t *testing.T) {
	testenv.NeedRoot(t)
	img := testenv.ImageDir(t)
	repo, err := filepath.Abs("../..")
	require.NoError(t, err)
	extra, err := versions.ServiceSet(filepath.Join(repo, "out", "services"))
	require.NoError(t, err, "install the service images first: make services")
	tampered := tamperedImage(t, img)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))

	secret := randomBytes(t, 32)
	name := localtest.ClusterName(t)
	ca, err := manufacturer.NewCA(name + " platform CA")
	require.NoError(t, err)
	cfg := Config{
		Name: name, BridgeCIDR: localtest.BridgeCIDR(t), ImageDir: img, KubernetesVersion: versions.DefaultKubernetes,
		InitSecret: secret, Extra: []versions.ExtraSet{extra}, Log: log, PlatformCA: ca,
		Nodes: []NodeSpec{
			{Name: "cp-0", Role: role.ControlPlane},
			{Name: "worker-0", Role: role.Worker},
			{Name: "tampered-0", Role: role.Worker, ImageDir: tampered},
		},
	}
	// An interrupted test still runs its clean-up: a signal cancels ctx, the waits fail, t.Cleanup destroys.
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(sigCtx, 20*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := Create(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range cfg.Nodes {
				dumpLogs(t, n.Name, name)
			}
		}
		require.NoError(t, c.Destroy(context.Background()))
		remains, err := network.Remains(name)
		assert.NoError(t, err)
		assert.Empty(t, remains, "network left behind")
		for _, n := range cfg.Nodes {
			assert.Empty(t, node.Remains(node.StateDirFor(name, n.Name)), "node %s left something behind", n.Name)
		}
	})
	nodesStarted := time.Since(start)

	cpIP, err := c.NodeIP("cp-0")
	require.NoError(t, err)
	comps, err := c.Components()
	require.NoError(t, err)

	// Init, as the CLI does: the node must show the image's predicted PCRs and PCR 15 zero.
	refs := predicted(t, img)
	client := initClient(t, cpIP, refs, ca)
	// The admin's attestation config, which the JoinService then enforces: the image's PCRs and this
	// platform's CA.
	attestationConfig, err := yaml.Marshal(config.AttestationConfig{
		Variant: variant.QEMUVTPM.String(), Measurements: refs, PlatformCA: string(ca.CertificatePEM()),
	})
	require.NoError(t, err)
	initStart := time.Now()
	stream, err := client.Init(ctx, &initproto.InitRequest{
		InitSecret: secret, MasterSecret: randomBytes(t, 32), Salt: randomBytes(t, 32),
		KubernetesVersion: versions.DefaultKubernetes, KubernetesComponents: comps, ClusterName: name,
		ApiserverCertSans: []string{cpIP.String()}, AttestationConfig: attestationConfig,
	})
	require.NoError(t, err)
	kubeconfig := receiveKubeconfig(t, stream)
	initTook := time.Since(initStart)

	restCfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	require.NoError(t, err)
	k8s, err := kubernetes.NewForConfig(restCfg)
	require.NoError(t, err)

	readyAt := map[string]time.Duration{}
	waitFor(t, ctx, 10*time.Minute, "both nodes Ready", func() error {
		var errs []error
		for _, n := range []string{"cp-0", "worker-0"} {
			if _, done := readyAt[n]; done {
				continue
			}
			if err := nodesReady(ctx, k8s, n); err != nil {
				errs = append(errs, err)
				continue
			}
			readyAt[n] = time.Since(start)
		}
		return errors.Join(errs...)
	})
	readyTook := time.Since(start)
	waitFor(t, ctx, 5*time.Minute, "the services' pods Running", func() error { return servicesRunning(ctx, k8s) })

	podNetwork(t, ctx, k8s, c, repo)

	// The tampered worker has been asking the JoinService all along; it must never have become a node.
	nodes, err := k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, n := range nodes.Items {
		assert.NotEqual(t, "tampered-0", n.Name, "a node from a tampered image joined")
	}
	// With mutual aTLS the tampered node checks the JoinService first (TLS: the server's certificate comes
	// first) and finds another image than its own: PCR 11 (the UKI's sections) differs. So it never even
	// presents its own attestation, and gets no ticket.
	joinLog := joinServiceLog(t, ctx, k8s)
	assert.Contains(t, joinLog, `"node":"worker-0"`, "the genuine worker got its ticket")
	assert.NotContains(t, joinLog, "tampered-0", "the tampered node got nothing")
	bsLog, err := os.ReadFile(node.LogFile(node.StateDirFor(name, "tampered-0"), "bootstrapper"))
	require.NoError(t, err)
	assert.Contains(t, string(bsLog), "PCR 11", "the tampered node says why: the JoinService's UKI measurement is not its own")

	rss := nodeRSS(t, name, "cp-0") + nodeRSS(t, name, "worker-0")
	// The figures bench/cluster.sh prints.
	t.Logf("FIGURES nodes started in %s; init RPC took %s; control plane Ready %s and worker (joined) Ready %s after "+
		"node start; both Ready after %s; RSS of the two nodes %d MiB", nodesStarted.Round(time.Millisecond),
		initTook.Round(time.Millisecond), readyAt["cp-0"].Round(time.Millisecond), readyAt["worker-0"].Round(time.Millisecond),
		readyTook.Round(time.Millisecond), rss>>20)
}

func joinServiceLog(t *testing.T, ctx context.Context, k8s kubernetes.Interface) string {
	t.Helper()
	pods, err := k8s.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=joinservice"})
	require.NoError(t, err)
	var logs strings.Builder
	for _, p := range pods.Items {
		raw, err := k8s.CoreV1().Pods("kube-system").GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		require.NoError(t, err)
		logs.Write(raw)
	}
	return logs.String()
}

// nodeRSS is the resident anonymous memory of everything in a node's memory cgroup (cgroup v1 total_rss):
// containerd, the bootstrapper, the kubelet and the containers. The host-side swtpm is not included.
func nodeRSS(t *testing.T, cluster, nodeName string) int64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(node.StateDirFor(cluster, nodeName), "node.json"))
	require.NoError(t, err)
	var st struct {
		Cgroups map[string]string `json:"cgroups"`
	}
	require.NoError(t, json.Unmarshal(raw, &st))
	dir, ok := st.Cgroups["memory"]
	require.True(t, ok, "node %s has no memory cgroup: %v", nodeName, st.Cgroups)
	stat, err := os.ReadFile(filepath.Join(dir, "memory.stat"))
	require.NoError(t, err)
	for _, line := range strings.Split(string(stat), "\n") {
		if v, ok := strings.CutPrefix(line, "total_rss "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no total_rss in %s/memory.stat", dir)
	return 0
}

// predicted are the reference values the CLI would use: the image's precomputed PCRs and PCR 15 zero.
func predicted(t *testing.T, img string) measurements.M {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(img, "constellation.efi"))
	require.NoError(t, err)
	uki, err := precompute.ParseUKI(data)
	require.NoError(t, err)
	res, err := precompute.Precompute(uki, precompute.Options{})
	require.NoError(t, err)
	m := res.Measurements(true)
	m[measurements.PCRClusterID] = measurements.Measurement{Expected: make(measurements.Digest, measurements.DigestSize)}
	return m
}

func initClient(t *testing.T, ip netip.Addr, refs measurements.M, ca *manufacturer.CA) initproto.APIClient {
	t.Helper()
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{Measurements: refs, AKRoots: []*x509.Certificate{ca.Certificate()}})
	require.NoError(t, err)
	creds, err := atls.NewCredentials(nil, []attestation.Validator{validator})
	require.NoError(t, err)
	conn, err := grpc.NewClient(netip.AddrPortFrom(ip, 9000).String(), grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return initproto.NewAPIClient(conn)
}

func receiveKubeconfig(t *testing.T, stream initproto.API_InitClient) []byte {
	t.Helper()
	var failure string
	var logs bytes.Buffer
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "init stream")
		switch {
		case resp.GetProgress() != nil:
			t.Logf("init: %v", resp.GetProgress())
		case resp.GetInitSuccess() != nil:
			return resp.GetInitSuccess().GetKubeconfig()
		case resp.GetInitFailure() != nil:
			failure = resp.GetInitFailure().String()
		case resp.GetLog() != nil:
			logs.Write(resp.GetLog().GetLog())
		}
	}
	t.Fatalf("init failed: %s\nnode log:\n%s", failure, logs.String())
	return nil
}

func nodesReady(ctx context.Context, k8s kubernetes.Interface, names ...string) error {
	for _, name := range names {
		n, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			return fmt.Errorf("node %s is not Ready", name)
		}
	}
	return nil
}

// servicesRunning checks the DaemonSets' pods: JoinService and KeyService on the control plane, the
// VerificationService on both nodes.
func servicesRunning(ctx context.Context, k8s kubernetes.Interface) error {
	want := map[string][]string{
		"joinservice":         {"cp-0"},
		"keyservice":          {"cp-0"},
		"verificationservice": {"cp-0", "worker-0"},
	}
	for app, nodes := range want {
		pods, err := k8s.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + app})
		if err != nil {
			return err
		}
		running := map[string]bool{}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				running[p.Spec.NodeName] = true
			}
		}
		for _, n := range nodes {
			if !running[n] {
				return fmt.Errorf("%s is not running on %s (%d pods)", app, n, len(pods.Items))
			}
		}
	}
	return nil
}

// podNetwork runs a server pod on the control plane and a client pod on the worker that must reach it.
func podNetwork(t *testing.T, ctx context.Context, k8s kubernetes.Interface, c *Cluster, repo string) {
	t.Helper()
	archive := podcheckImage(t)
	for _, n := range []string{"cp-0", "worker-0"} {
		f, err := os.Open(archive)
		require.NoError(t, err)
		err = c.Node(n).Exec(ctx, node.Cmd{Args: []string{"ctr", "-n", "k8s.io", "images", "import", "-"}, Stdin: f})
		f.Close()
		require.NoError(t, err, "importing the probe image on %s", n)
	}
	pod := func(name, nodeName string, args ...string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{
				NodeName: nodeName, RestartPolicy: corev1.RestartPolicyNever,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers: []corev1.Container{{
					Name: "probe", Image: podcheckRef, ImagePullPolicy: corev1.PullNever, Args: args,
				}},
			},
		}
	}
	pods := k8s.CoreV1().Pods("default")
	_, err := pods.Create(ctx, pod("server", "cp-0", "serve"), metav1.CreateOptions{})
	require.NoError(t, err)
	var serverIP string
	waitFor(t, ctx, 3*time.Minute, "the server pod running", func() error {
		p, err := pods.Get(ctx, "server", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return fmt.Errorf("server pod is %s", p.Status.Phase)
		}
		serverIP = p.Status.PodIP
		return nil
	})
	_, err = pods.Create(ctx, pod("client", "worker-0", "get", "http://"+net.JoinHostPort(serverIP, "8080")+"/"), metav1.CreateOptions{})
	require.NoError(t, err)
	waitFor(t, ctx, 3*time.Minute, "the client pod on the worker reaching the server pod", func() error {
		p, err := pods.Get(ctx, "client", metav1.GetOptions{})
		if err != nil {
			return err
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return nil
		case corev1.PodFailed:
			t.Fatalf("the client pod failed: it could not reach %s", serverIP)
		}
		return fmt.Errorf("client pod is %s", p.Status.Phase)
	})
}

const podcheckRef = "docker.io/constellation/podcheck:test"

// podcheckImage builds the probe (testdata/podcheck) into an image archive.
func podcheckImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "podcheck")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/podcheck")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	data, err := os.ReadFile(bin)
	require.NoError(t, err)
	img, err := ociimage.Build(ociimage.Spec{Binary: data, BinaryPath: "/podcheck", Tag: podcheckRef})
	require.NoError(t, err)
	archive := filepath.Join(dir, "podcheck.tar")
	f, err := os.Create(archive)
	require.NoError(t, err)
	require.NoError(t, ociimage.WriteArchive(f, podcheckRef, img))
	require.NoError(t, f.Close())
	return archive
}

// tamperedImage copies the image with one byte of the UKI's .osrel changed: it still boots and verifies
// its root, but PCR 11 differs from the published value.
func tamperedImage(t *testing.T, img string) string {
	t.Helper()
	dir := filepath.Join(testenv.TempDir(t), "tampered")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for _, f := range []string{"constellation.efi", "root.erofs", "root.verity"} {
		out, err := exec.Command("cp", "--reflink=auto", filepath.Join(img, f), filepath.Join(dir, f)).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	uki := filepath.Join(dir, "constellation.efi")
	data, err := os.ReadFile(uki)
	require.NoError(t, err)
	u, err := precompute.ParseUKI(data)
	require.NoError(t, err)
	for _, s := range u.Sections {
		if s.Name == precompute.SectionOSRel {
			i := int(s.PointerToRawData) + bytes.Index(s.Raw, []byte("Debian"))
			data[i] = 'd'
		}
	}
	require.NoError(t, os.WriteFile(uki, data, 0o644))
	return dir
}

func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(2 * time.Second)
	}
	t.Fatalf("waiting for %s: %v", what, err)
}

func dumpLogs(t *testing.T, nodeName, cluster string) {
	for _, l := range []string{"bootstrapper", "init", "containerd"} {
		data, err := os.ReadFile(node.LogFile(node.StateDirFor(cluster, nodeName), l))
		if err != nil {
			continue
		}
		s := string(data)
		if len(s) > 6000 {
			s = s[len(s)-6000:]
		}
		t.Logf("=== %s %s log (tail)\n%s", nodeName, l, s)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
