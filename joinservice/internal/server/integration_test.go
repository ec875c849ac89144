package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/constellation-go/constellation/keyservice/keyservicetest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	jws "k8s.io/cluster-bootstrap/token/jws"

	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/kubetest"
	"github.com/constellation-go/constellation/joinservice/internal/kubeadm"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

type vectors struct {
	MeasurementSecret string            `json:"measurementSecret"`
	DiskKeys          map[string]string `json:"diskKeys"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "disk-key-vectors.json"))
	require.NoError(t, err)
	var v vectors
	require.NoError(t, json.Unmarshal(raw, &v))
	require.Len(t, v.DiskKeys, 20)
	return v
}

// keyServiceProcess is a KeyService on a loopback port that can be stopped and started again on the same
// address, as a restarted pod would be; it reads its master secret from a file each time.
type keyServiceProcess struct {
	addr       string
	secretFile string
	g          *grpc.Server
	done       chan struct{}
}

func startKeyService(t testing.TB, addr, secretFile string) *keyServiceProcess {
	t.Helper()
	raw, err := os.ReadFile(secretFile)
	require.NoError(t, err)
	var master crypto.MasterSecret
	require.NoError(t, json.Unmarshal(raw, &master))
	lis, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	p := &keyServiceProcess{addr: lis.Addr().String(), secretFile: secretFile, g: grpc.NewServer(), done: make(chan struct{})}
	require.NoError(t, keyservicetest.Register(p.g, &master))
	go func() {
		_ = p.g.Serve(lis)
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *keyServiceProcess) stop() {
	p.g.Stop()
	<-p.done
}

func writeVectorSecret(t testing.TB) string {
	t.Helper()
	raw, err := json.Marshal(cryptotest.MasterSecret())
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), crypto.MasterSecretFileName)
	require.NoError(t, os.WriteFile(path, raw, 0o600))
	return path
}

// joinEnv is a real API server, a KeyService and a JoinService serving aTLS on bufconn.
type joinEnv struct {
	grpc     *grpc.Server
	addr     string
	cluster  *kubetest.Cluster
	keys     *keyServiceProcess
	server   *Server
	dial     func(context.Context, string) (net.Conn, error)
	registry *prometheus.Registry
}

func newJoinEnv(t testing.TB) *joinEnv {
	t.Helper()
	cluster := kubetest.Start(t)
	ks := startKeyService(t, "127.0.0.1:0", writeVectorSecret(t))
	conn, err := grpc.NewClient(ks.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	reg := prometheus.NewRegistry()
	s := New(Config{
		APIServerEndpoint: cluster.Endpoint, DiscoveryHash: kubeadm.DiscoveryHash(cluster.CACert),
		MeasurementSalt: []byte("salt"), KubernetesVersion: kubetest.KubernetesVersion, PKIDir: t.TempDir(),
	}, NewKeyServiceClient(keyserviceproto.NewAPIClient(conn)), kubeadm.NewTokenIssuer(cluster.Client),
		kubeadm.NewCSRSigner(cluster.CACert, cluster.CAKey), slog.New(slog.DiscardHandler), reg)
	env := &joinEnv{cluster: cluster, keys: ks, server: s, registry: reg}
	env.addr = env.serve(t, "127.0.0.1:0") // fixed from here on: nodes dial it concurrently
	env.dial = func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", env.addr)
	}
	return env
}

// serve runs the JoinService's gRPC server over aTLS on addr and returns the address.
func (e *joinEnv) serve(t testing.TB, addr string) string {
	t.Helper()
	g := atlsServer(t, e.server)
	lis, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	e.grpc = g
	return lis.Addr().String()
}

// crashJoinService stops the JoinService's server at once (open connections break) and starts a new one
// on the same address after down, as a restarted pod would.
func (e *joinEnv) crashJoinService(t testing.TB, down time.Duration) {
	t.Helper()
	e.grpc.Stop()
	time.Sleep(down)
	e.serve(t, e.addr)
}

func (e *joinEnv) nodeClient(t testing.TB, name string, events []vtpmtest.Event) joinproto.APIClient {
	t.Helper()
	conn, err := dialJoinService(e.dial, nodeCredentials(t, name, events))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return joinproto.NewAPIClient(conn)
}

// whoAmI authenticates to the API server with a bootstrap token and returns who it is.
func whoAmI(ctx context.Context, cluster *kubetest.Cluster, token string) (string, []string, error) {
	cfg := rest.AnonymousClientConfig(cluster.Config)
	cfg.BearerToken = token
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", nil, err
	}
	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", nil, err
	}
	return review.Status.UserInfo.Username, review.Status.UserInfo.Groups, nil
}

func TestJoinTwentyNodesAgainstRealAPIServer(t *testing.T) {
	want := loadVectors(t)
	env := newJoinEnv(t)
	ctx := context.Background()
	publishClusterInfo(t, env.cluster)
	env.cluster.StartControllerManager(t, "bootstrapsigner")

	type result struct {
		uuid, node string
		resp       *joinproto.IssueJoinTicketResponse
		err        error
	}
	results := make(chan result, 20)
	var wg sync.WaitGroup
	for i := 1; i <= 20; i++ {
		uuid, node := fmt.Sprintf("00000000-0000-0000-0000-%012d", i), fmt.Sprintf("worker-%d", i)
		client := env.nodeClient(t, node, vtpmtest.Boot)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.IssueJoinTicket(ctx, &joinproto.IssueJoinTicketRequest{
				DiskUuid: uuid, NodeName: node, CertificateRequest: kubeletCSR(t, node),
			})
			results <- result{uuid: uuid, node: node, resp: resp, err: err}
		}()
	}
	wg.Wait()
	close(results)

	tokens := map[string]bool{}
	for r := range results {
		require.NoError(t, r.err, r.node)
		assert.Equal(t, want.DiskKeys[r.uuid], hex.EncodeToString(r.resp.GetStateDiskKey()), "disk key of %s", r.uuid)
		assert.Equal(t, want.MeasurementSecret, hex.EncodeToString(r.resp.GetMeasurementSecret()))
		assert.Equal(t, kubeadm.DiscoveryHash(env.cluster.CACert), r.resp.GetDiscoveryTokenCaCertHash())
		assert.False(t, tokens[r.resp.GetToken()], "tokens are distinct")
		tokens[r.resp.GetToken()] = true

		user, groups, err := whoAmI(ctx, env.cluster, r.resp.GetToken())
		require.NoError(t, err, "the token authenticates at the real API server")
		assert.Equal(t, "system:bootstrap:"+r.resp.GetToken()[:6], user)
		assert.Contains(t, groups, kubeadm.NodeBootstrapGroup)
	}
	// kubeadm join's token discovery works with one of the tickets: the token signs cluster-info and the
	// CA there matches the ticket's hash.
	for r := range tokens {
		checkDiscovery(t, env.cluster, r, kubeadm.DiscoveryHash(env.cluster.CACert))
		break
	}
	assert.Len(t, tokens, 20)
	assert.Equal(t, 20.0, testutil.ToFloat64(env.server.metrics.attempts.WithLabelValues("IssueJoinTicket", resultOK, reasonNone)))

	// A node booted with a changed kernel command line gets nothing, and the refusal is counted.
	tampered := env.nodeClient(t, "evil", vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: eventlog.EvIPL, Data: "console=ttyS0 init=/bin/sh"}))
	_, err := tampered.IssueJoinTicket(ctx, &joinproto.IssueJoinTicketRequest{
		DiskUuid: "00000000-0000-0000-0000-000000000099", NodeName: "evil", CertificateRequest: kubeletCSR(t, "evil"),
	})
	require.Error(t, err)
	secrets, err := env.cluster.Client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	count := 0
	for _, s := range secrets.Items {
		if s.Type == "bootstrap.kubernetes.io/token" {
			count++
		}
	}
	assert.Equal(t, 20, count, "the tampered node got no token")
	assert.Equal(t, 1.0, testutil.ToFloat64(env.server.metrics.attempts.WithLabelValues("handshake", resultRefused, reasonAttestation)))

	// A restarted KeyService derives identical keys.
	client := env.nodeClient(t, "worker-7", vtpmtest.Boot)
	uuid := "00000000-0000-0000-0000-000000000007"
	env.keys.stop()
	env.keys = startKeyService(t, env.keys.addr, env.keys.secretFile)
	require.Eventually(t, func() bool {
		resp, err := client.IssueRejoinTicket(ctx, &joinproto.IssueRejoinTicketRequest{DiskUuid: uuid})
		return err == nil && hex.EncodeToString(resp.GetStateDiskKey()) == want.DiskKeys[uuid]
	}, 10*time.Second, 100*time.Millisecond)
}

// TestJoinsSurviveFaults is the JoinService's part of the fault-injection suite: 8 nodes keep asking for join
// tickets while, one after the other, the KeyService stops, kube-apiserver crashes, etcd crashes and the
// JoinService itself crashes, each coming back after a while. Every ticket issued along the way carries the
// node's right disk key; every refusal is a clear, retryable error that names what failed; once all are
// back, every node gets a ticket again and its token authenticates.
func TestJoinsSurviveFaults(t *testing.T) {
	want := loadVectors(t)
	env := newJoinEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const nodes = 8
	type tally struct {
		ok     atomic.Int64
		mu     sync.Mutex
		failed map[string]int // by faultClass
	}
	tallies := make([]tally, nodes)
	var wrongKeys atomic.Int64
	var wg sync.WaitGroup
	for i := range nodes {
		uuid, name := fmt.Sprintf("00000000-0000-0000-0000-%012d", i+1), fmt.Sprintf("worker-%d", i+1)
		creds := nodeCredentials(t, name, vtpmtest.Boot)
		csr := kubeletCSR(t, name)
		tallies[i].failed = map[string]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				conn, err := dialJoinService(env.dial, creds)
				if err == nil {
					cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
					var resp *joinproto.IssueJoinTicketResponse
					resp, err = joinproto.NewAPIClient(conn).IssueJoinTicket(cctx, &joinproto.IssueJoinTicketRequest{
						DiskUuid: uuid, NodeName: name, CertificateRequest: csr,
					})
					ccancel()
					_ = conn.Close()
					if err == nil && hex.EncodeToString(resp.GetStateDiskKey()) != want.DiskKeys[uuid] {
						wrongKeys.Add(1)
					}
				}
				if err == nil {
					tallies[i].ok.Add(1)
				} else if ctx.Err() == nil {
					tallies[i].mu.Lock()
					tallies[i].failed[faultClass(err)]++
					tallies[i].mu.Unlock()
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}

	time.Sleep(time.Second)
	env.keys.stop()
	time.Sleep(2 * time.Second)
	env.keys = startKeyService(t, env.keys.addr, env.keys.secretFile)
	time.Sleep(time.Second)
	env.cluster.Crash(t, kubetest.APIServer, 2*time.Second)
	time.Sleep(time.Second)
	env.cluster.Crash(t, kubetest.Etcd, 2*time.Second)
	time.Sleep(time.Second)
	env.crashJoinService(t, 2*time.Second)
	time.Sleep(2 * time.Second)

	// All back: each node gets a ticket within a few attempts, and its token works at the API server.
	oks := make([]int64, nodes)
	for i := range tallies {
		oks[i] = tallies[i].ok.Load()
	}
	require.Eventually(t, func() bool {
		for i := range tallies {
			if tallies[i].ok.Load() <= oks[i] {
				return false
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "a node got no ticket after every component came back")
	cancel()
	wg.Wait()
	assert.Zero(t, wrongKeys.Load(), "a ticket carried another disk key")

	failures := map[string]int{}
	for i := range tallies {
		t.Logf("worker-%d: %d tickets, failures %v", i+1, tallies[i].ok.Load(), tallies[i].failed)
		for class, n := range tallies[i].failed {
			failures[class] += n
		}
	}
	for class := range failures {
		assert.Contains(t, []string{"keyservice", "token", "unavailable"}, class, "an unexpected kind of failure")
	}
	assert.NotZero(t, failures["keyservice"], "the KeyService outage was noticed and named")

	// A ticket issued after the faults authenticates: the token is in the restarted etcd.
	tokenOf := func() string {
		resp, err := env.nodeClient(t, "worker-1", vtpmtest.Boot).IssueJoinTicket(context.Background(), &joinproto.IssueJoinTicketRequest{
			DiskUuid: "00000000-0000-0000-0000-000000000001", NodeName: "worker-1", CertificateRequest: kubeletCSR(t, "worker-1"),
		})
		require.NoError(t, err)
		return resp.GetToken()
	}
	user, _, err := whoAmI(context.Background(), env.cluster, tokenOf())
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(user, "system:bootstrap:"))
}

// faultClass sorts a failed join by what the node is told: the KeyService, the API server (the token), or
// the JoinService being unreachable.
func faultClass(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "getting the disk key") || strings.Contains(msg, "getting the measurement secret"):
		return "keyservice"
	case strings.Contains(msg, "token"):
		return "token"
	case status.Code(err) == codes.Unavailable:
		return "unavailable"
	}
	return msg
}

// BenchmarkIssueJoinTicket measures tickets per second end to end without kubeadm, one new connection per
// ticket as a joining node makes it: aTLS with a fresh attestation from a real swtpm, full validation, two
// key derivations through the KeyService, CSR signing and a bootstrap token created in the real API server.
// Clients share 8 vTPMs (8 nodes joining again and again); the sub-benchmark's name is the number of
// concurrent clients.
func BenchmarkIssueJoinTicket(b *testing.B) {
	env := newJoinEnv(b)
	const nodes = 8
	creds := make([]*atls.Credentials, nodes)
	csrs := make([][]byte, nodes)
	for i := range creds {
		creds[i] = nodeCredentials(b, fmt.Sprintf("worker-%d", i), vtpmtest.Boot)
		csrs[i] = kubeletCSR(b, fmt.Sprintf("worker-%d", i))
	}
	for _, concurrency := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("clients=%d", concurrency), func(b *testing.B) {
			var remaining atomic.Int64
			remaining.Store(int64(b.N))
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := range concurrency {
				wg.Add(1)
				go func() {
					defer wg.Done()
					i := w % nodes
					for remaining.Add(-1) >= 0 {
						conn, err := dialJoinService(env.dial, creds[i])
						if err != nil {
							b.Error(err)
							return
						}
						_, err = joinproto.NewAPIClient(conn).IssueJoinTicket(context.Background(), &joinproto.IssueJoinTicketRequest{
							DiskUuid: fmt.Sprintf("00000000-0000-0000-0000-%012d", i+1), NodeName: fmt.Sprintf("worker-%d", i), CertificateRequest: csrs[i],
						})
						_ = conn.Close()
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tickets/s")
		})
	}
}

// BenchmarkHundredJoins is a load test: 100 nodes, each with its own swtpm vTPM certified for its name, join at
// once (one new aTLS connection each, full validation, KeyService, CSR signing, a bootstrap token in the
// real API server). Every join must succeed with its own disk key; it reports the latency percentiles of a
// join and the time until the last one finished. The JoinService runs without its per-source rate limit
// (all nodes dial from loopback here; real nodes have addresses of their own). Run with -benchtime 1x.
func BenchmarkHundredJoins(b *testing.B) {
	const nodes = 100
	env := newJoinEnv(b)
	creds := make([]*atls.Credentials, nodes)
	reqs := make([]*joinproto.IssueJoinTicketRequest, nodes)
	for i := range nodes {
		name := fmt.Sprintf("worker-%03d", i)
		creds[i] = nodeCredentials(b, name, vtpmtest.Boot)
		reqs[i] = &joinproto.IssueJoinTicketRequest{
			DiskUuid: fmt.Sprintf("00000000-0000-0000-0001-%012d", i), NodeName: name, CertificateRequest: kubeletCSR(b, name),
		}
	}
	var all []time.Duration
	var wall time.Duration
	for b.Loop() {
		latencies := make([]time.Duration, nodes)
		keys := make([]string, nodes)
		errs := make([]error, nodes)
		start := time.Now()
		var wg sync.WaitGroup
		for i := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				conn, err := dialJoinService(env.dial, creds[i])
				if err != nil {
					errs[i] = err
					return
				}
				defer conn.Close()
				resp, err := joinproto.NewAPIClient(conn).IssueJoinTicket(context.Background(), reqs[i])
				latencies[i], errs[i] = time.Since(t0), err
				keys[i] = hex.EncodeToString(resp.GetStateDiskKey())
			}()
		}
		wg.Wait()
		wall += time.Since(start)
		distinct := map[string]bool{}
		for i, err := range errs {
			if err != nil {
				b.Fatalf("join of %s failed: %v", reqs[i].GetNodeName(), err)
			}
			distinct[keys[i]] = true
		}
		if len(distinct) != nodes {
			b.Fatalf("%d distinct disk keys for %d disks", len(distinct), nodes)
		}
		all = append(all, latencies...)
	}
	slices.Sort(all)
	pct := func(p float64) float64 { return all[int(p*float64(len(all)-1))].Seconds() * 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(all[len(all)-1].Seconds()*1000, "max-ms")
	b.ReportMetric(wall.Seconds()*1000/float64(b.N), "all-ms")
	b.ReportMetric(0, "ns/op")
}

// publishClusterInfo creates kube-public/cluster-info and lets anonymous clients read it, as kubeadm init does.
func publishClusterInfo(t *testing.T, cluster *kubetest.Cluster) {
	t.Helper()
	ctx := context.Background()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[""] = &clientcmdapi.Cluster{Server: cluster.Endpoint, CertificateAuthorityData: cluster.CACertPEM}
	kubeconfig, err := clientcmd.Write(*cfg)
	require.NoError(t, err)
	_, err = cluster.Client.CoreV1().ConfigMaps(metav1.NamespacePublic).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: bootstrapapi.ConfigMapClusterInfo},
		Data:       map[string]string{bootstrapapi.KubeConfigKey: string(kubeconfig)},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cluster.Client.RbacV1().Roles(metav1.NamespacePublic).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:bootstrap-signer-clusterinfo"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{bootstrapapi.ConfigMapClusterInfo}, Verbs: []string{"get"},
		}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cluster.Client.RbacV1().RoleBindings(metav1.NamespacePublic).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:bootstrap-signer-clusterinfo"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "kubeadm:bootstrap-signer-clusterinfo"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "system:anonymous"}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// checkDiscovery does what kubeadm join's token discovery does: fetch cluster-info anonymously without
// trusting the server yet, check the token's JWS signature over it (added by the controller manager's
// bootstrap signer), and pin the CA in it to the discovery hash.
func checkDiscovery(t *testing.T, cluster *kubetest.Cluster, token, wantHash string) {
	t.Helper()
	id, secret, _ := strings.Cut(token, ".")
	cfg := rest.AnonymousClientConfig(cluster.Config)
	cfg.TLSClientConfig = rest.TLSClientConfig{Insecure: true}
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)

	var info *corev1.ConfigMap
	require.Eventually(t, func() bool {
		info, err = client.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(context.Background(), bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
		return err == nil && info.Data[bootstrapapi.JWSSignatureKeyPrefix+id] != ""
	}, 30*time.Second, 200*time.Millisecond, "the bootstrap signer signs cluster-info with the token (last error: %v)", err)

	content := info.Data[bootstrapapi.KubeConfigKey]
	sig := info.Data[bootstrapapi.JWSSignatureKeyPrefix+id]
	assert.True(t, jws.DetachedTokenIsValid(sig, content, id, secret), "the token's signature verifies")
	assert.False(t, jws.DetachedTokenIsValid(sig, content, id, strings.Repeat("0", 16)), "and only with its secret")

	kubeconfig, err := clientcmd.Load([]byte(content))
	require.NoError(t, err)
	for _, c := range kubeconfig.Clusters {
		block, _ := pem.Decode(c.CertificateAuthorityData)
		require.NotNil(t, block)
		ca, err := x509.ParseCertificate(block.Bytes)
		require.NoError(t, err)
		assert.Equal(t, wantHash, kubeadm.DiscoveryHash(ca), "the ticket's hash pins the cluster CA")
	}
}
