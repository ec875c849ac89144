package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/constellation-go/constellation/keyservice/keyservicetest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/audit"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/constellation-go/constellation/joinservice/internal/kubeadm"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(localkms.Drainer))
}

// serve runs a gRPC server on bufconn and returns a dialer to it.
func serve(t *testing.T, g *grpc.Server) func(context.Context, string) (net.Conn, error) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }
}

// keyService runs a real KeyService with the test-vector master secret.
func keyService(t *testing.T) KeyGetter {
	t.Helper()
	g := grpc.NewServer()
	require.NoError(t, keyservicetest.Register(g, cryptotest.MasterSecret()))
	return keyServiceClient(t, g)
}

func keyServiceClient(t *testing.T, g *grpc.Server) KeyGetter {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///keyservice", grpc.WithContextDialer(serve(t, g)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return NewKeyServiceClient(keyserviceproto.NewAPIClient(conn))
}

type fixture struct {
	server    *Server
	auditPath string
	client    *fake.Clientset
	ca        *x509.Certificate
	dial      func(context.Context, string) (net.Conn, error)
	pkiDir    string
	metrics   *metrics
}

func newFixture(t *testing.T, keys KeyGetter) *fixture {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(der)
	require.NoError(t, err)

	pki := t.TempDir()
	for _, name := range joinproto.ControlPlaneFiles {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(pki, name)), 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(pki, name), []byte("content of "+name), 0o600))
	}
	client := fake.NewClientset()
	s := New(Config{
		APIServerEndpoint: "10.42.0.2:6443", DiscoveryHash: kubeadm.DiscoveryHash(ca),
		MeasurementSalt: []byte("salt"), KubernetesVersion: "v1.33.13", PKIDir: pki,
	}, keys, kubeadm.NewTokenIssuer(client), kubeadm.NewCSRSigner(ca, caKey), slog.New(slog.DiscardHandler), prometheus.NewRegistry())

	auditPath := filepath.Join(t.TempDir(), "audit.log")
	auditLog, err := audit.Open(auditPath)
	require.NoError(t, err)
	t.Cleanup(func() { _ = auditLog.Close() })
	s.RecordTo(auditLog)
	return &fixture{server: s, auditPath: auditPath, client: client, ca: ca, dial: serve(t, atlsServer(t, s)), pkiDir: pki, metrics: s.metrics}
}

// audited returns the audit log's entries "kind node result reason", after checking its chain.
func (f *fixture) audited(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(f.auditPath)
	require.NoError(t, err)
	sum, err := audit.Verify(bytes.NewReader(data), nil)
	require.NoError(t, err)
	var out []string
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var e audit.Entry
		require.NoError(t, json.Unmarshal(line, &e))
		out = append(out, strings.Join(strings.Fields(strings.Join([]string{e.Kind, e.Node, e.Result, e.Reason}, " ")), " "))
	}
	require.Len(t, out, sum.Entries)
	return out
}

// atlsServer serves s over aTLS, accepting nodes that booted vtpmtest.Boot and have not joined yet.
func atlsServer(t testing.TB, s *Server) *grpc.Server {
	t.Helper()
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{
		Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot).WithFreshNode(), AKRoots: vtpmtest.AKRoots(t),
	})
	require.NoError(t, err)
	creds, err := atls.NewCredentials(nil, []attestation.Validator{s.CountingValidator(validator)})
	require.NoError(t, err)
	g := grpc.NewServer(grpc.Creds(creds))
	s.Register(g)
	return g
}

// nodeCredentials returns the aTLS credentials of a node booted with events, attesting with its own swtpm,
// which the platform certified for the node's name.
func nodeCredentials(t testing.TB, name string, events []vtpmtest.Event) *atls.Credentials {
	t.Helper()
	n := vtpmtest.NewNamedNode(t, name, events)
	log := n.EventLog
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, n.TPM, vtpm.WithEventLog(func() ([]byte, error) { return log, nil }))
	t.Cleanup(issuer.Close)
	creds, err := atls.NewCredentials(issuer, nil)
	require.NoError(t, err)
	return creds
}

// dialJoinService connects to the JoinService through dial with a node's credentials.
func dialJoinService(dial func(context.Context, string) (net.Conn, error), creds *atls.Credentials) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///joinservice", grpc.WithContextDialer(dial), grpc.WithTransportCredentials(creds))
}

// joiningNode dials the JoinService as the node name booted with events.
func (f *fixture) joiningNode(t *testing.T, name string, events []vtpmtest.Event) joinproto.APIClient {
	t.Helper()
	conn, err := dialJoinService(f.dial, nodeCredentials(t, name, events))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return joinproto.NewAPIClient(conn)
}

func kubeletCSR(t testing.TB, node string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
	}, key)
	require.NoError(t, err)
	return der
}

const diskUUID = "00000000-0000-0000-0000-000000000002"

func TestIssueJoinTicket(t *testing.T) {
	f := newFixture(t, keyService(t))
	node := f.joiningNode(t, "worker-1", vtpmtest.Boot)
	var resp0 *joinproto.IssueJoinTicketResponse
	for _, controlPlane := range []bool{false, true} {
		resp, err := node.IssueJoinTicket(context.Background(), &joinproto.IssueJoinTicketRequest{
			DiskUuid: diskUUID, NodeName: "worker-1", IsControlPlane: controlPlane, CertificateRequest: kubeletCSR(t, "worker-1"),
		})
		require.NoError(t, err)
		resp0 = resp
		// The HKDF test vector of internal/crypto for this UUID, 64 bytes, computed independently.
		assert.Equal(t, "e76b3dcbdbe5d6851cdac0d7b89f3c93f3949582b39d2621538af8352b04e452ce64ab7ce9b8be93e5657c845b105c6e38649f3ee7d691fdf57a13583b5e9c6f", hex.EncodeToString(resp.GetStateDiskKey()))
		assert.Equal(t, "ea7fedd14f5a29b1b8545592fc20bfdae06918e4ff447b1a0b8e4f3356005bda", hex.EncodeToString(resp.GetMeasurementSecret()))
		assert.Equal(t, kubeadm.DiscoveryHash(f.ca), resp.GetDiscoveryTokenCaCertHash())
		assert.Equal(t, "10.42.0.2:6443", resp.GetApiServerEndpoint())
		cert, err := x509.ParseCertificate(resp.GetKubeletCert())
		require.NoError(t, err)
		require.NoError(t, cert.CheckSignatureFrom(f.ca))
		_, err = f.client.CoreV1().Secrets(metav1.NamespaceSystem).Get(context.Background(), "bootstrap-token-"+resp.GetToken()[:6], metav1.GetOptions{})
		require.NoError(t, err, "the token exists in the cluster")
		if controlPlane {
			require.Len(t, resp.GetControlPlaneFiles(), len(joinproto.ControlPlaneFiles))
			assert.Equal(t, "ca.key", resp.GetControlPlaneFiles()[1].GetName())
		} else {
			assert.Empty(t, resp.GetControlPlaneFiles(), "workers get no CA keys")
		}
	}
	assert.Equal(t, 2.0, testutil.ToFloat64(f.metrics.attempts.WithLabelValues("IssueJoinTicket", resultOK, reasonNone)))

	rejoin, err := node.IssueRejoinTicket(context.Background(), &joinproto.IssueRejoinTicketRequest{DiskUuid: diskUUID})
	require.NoError(t, err)
	assert.Equal(t, []string{"join worker-1 ok", "join worker-1 ok", "rejoin ok"}, f.audited(t), "every decision is in the audit log")
	assert.Equal(t, "e76b3dcbdbe5d6851cdac0d7b89f3c93f3949582b39d2621538af8352b04e452ce64ab7ce9b8be93e5657c845b105c6e38649f3ee7d691fdf57a13583b5e9c6f", hex.EncodeToString(rejoin.GetStateDiskKey()))
	// The same cluster ID as a join: a rejoined node locks itself to the same cluster.
	joined, err := crypto.ClusterID(resp0.GetMeasurementSecret(), resp0.GetMeasurementSalt())
	require.NoError(t, err)
	rejoined, err := crypto.ClusterID(rejoin.GetMeasurementSecret(), rejoin.GetMeasurementSalt())
	require.NoError(t, err)
	assert.Equal(t, joined, rejoined)
}

func TestTamperedNodeGetsNothing(t *testing.T) {
	f := newFixture(t, keyService(t))
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: eventlog.EvIPL, Data: "console=ttyS0 init=/bin/sh"})
	node := f.joiningNode(t, "evil", tampered)
	resp, err := node.IssueJoinTicket(context.Background(), &joinproto.IssueJoinTicketRequest{
		DiskUuid: diskUUID, NodeName: "evil", CertificateRequest: kubeletCSR(t, "evil"),
	})
	require.Error(t, err)
	assert.Nil(t, resp)
	secrets, err := f.client.CoreV1().Secrets(metav1.NamespaceSystem).List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	assert.Empty(t, secrets.Items, "no token was created")
	assert.Equal(t, 1.0, testutil.ToFloat64(f.metrics.attempts.WithLabelValues("handshake", resultRefused, reasonAttestation)))
	assert.Equal(t, []string{"handshake refused attestation"}, f.audited(t))
}

type failingKeys struct{}

func (failingKeys) GetDataKey(context.Context, string, int) ([]byte, []byte, error) {
	return nil, nil, status.Error(codes.Unavailable, "keyservice down")
}

// TestUserManagedKeysAndKMSOutage: with user-managed keys (a real KeyService on a real local-kms) a ticket
// carries the disk key and its wrapped form; while the KMS is down, joins and rejoins fail with the KMS
// and its reason named and leave nothing behind; once it is back, the same disk gets the same key.
func TestUserManagedKeysAndKMSOutage(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	kmsSrv, err := localkms.Start("127.0.0.1:0", dataDir, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	addr := strings.TrimPrefix(kmsSrv.Endpoint(), "http://")
	t.Cleanup(func() { _ = kmsSrv.Close() })
	keyID, err := localkms.EnsureKey(ctx, kmsSrv.Endpoint(), localkms.DefaultAlias)
	require.NoError(t, err)
	backend, err := awskms.New(localkms.Client(kmsSrv.Endpoint()), keyID, awskms.NewMemStore())
	require.NoError(t, err)
	g := grpc.NewServer()
	require.NoError(t, keyservicetest.RegisterUserManaged(g, cryptotest.MasterSecret(), backend))
	f := newFixture(t, keyServiceClient(t, g))
	node := f.joiningNode(t, "worker-1", vtpmtest.Boot)
	join := func() (*joinproto.IssueJoinTicketResponse, error) {
		return node.IssueJoinTicket(ctx, &joinproto.IssueJoinTicketRequest{DiskUuid: diskUUID, NodeName: "worker-1", CertificateRequest: kubeletCSR(t, "worker-1")})
	}

	first, err := join()
	require.NoError(t, err)
	require.Len(t, first.GetStateDiskKey(), 64)
	require.NotEmpty(t, first.GetWrappedStateDiskKey())
	unwrapped, err := awskms.Unwrap(ctx, localkms.Client(kmsSrv.Endpoint()), keyID, diskUUID, 64, first.GetWrappedStateDiskKey())
	require.NoError(t, err)
	assert.Equal(t, first.GetStateDiskKey(), unwrapped, "the wrapped key a node keeps is its disk key")
	// The measurement secret (the cluster's identity) still comes from the master secret.
	assert.Equal(t, "ea7fedd14f5a29b1b8545592fc20bfdae06918e4ff447b1a0b8e4f3356005bda", hex.EncodeToString(first.GetMeasurementSecret()))

	require.NoError(t, kmsSrv.Close())
	_, err = join()
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "aws-kms: the KMS (key "+keyID+") did not unwrap data key "+diskUUID)
	assert.Contains(t, status.Convert(err).Message(), "connection refused", "and why")
	_, err = node.IssueRejoinTicket(ctx, &joinproto.IssueRejoinTicketRequest{DiskUuid: diskUUID})
	assert.Contains(t, status.Convert(err).Message(), "aws-kms: the KMS")
	secrets, err := f.client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	assert.Len(t, secrets.Items, 1, "only the first join's token: a failed join leaves none")

	kmsSrv, err = localkms.Start(addr, dataDir, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	again, err := join()
	require.NoError(t, err)
	assert.Equal(t, first.GetStateDiskKey(), again.GetStateDiskKey(), "the same key once the KMS is back")
	rejoin, err := node.IssueRejoinTicket(ctx, &joinproto.IssueRejoinTicketRequest{DiskUuid: diskUUID})
	require.NoError(t, err)
	assert.Equal(t, first.GetStateDiskKey(), rejoin.GetStateDiskKey())
	assert.Equal(t, first.GetWrappedStateDiskKey(), rejoin.GetWrappedStateDiskKey())

	// Refusals: the key disabled. The error names the reason.
	_, err = localkms.Client(kmsSrv.Endpoint()).DisableKey(ctx, &kms.DisableKeyInput{KeyId: &keyID})
	require.NoError(t, err)
	_, err = join()
	assert.Contains(t, status.Convert(err).Message(), "disabled")
}

func TestRefusalsAndFailures(t *testing.T) {
	testCases := map[string]struct {
		keys       KeyGetter
		req        *joinproto.IssueJoinTicketRequest
		wantCode   codes.Code
		wantReason string
		wantErr    string
	}{
		"bad disk UUID": {
			req:      &joinproto.IssueJoinTicketRequest{DiskUuid: "not-a-uuid", NodeName: "w", CertificateRequest: []byte{1}},
			wantCode: codes.InvalidArgument, wantReason: reasonRequest,
		},
		"bad node name": {
			req:      &joinproto.IssueJoinTicketRequest{DiskUuid: diskUUID, NodeName: "Worker_1", CertificateRequest: []byte{1}},
			wantCode: codes.InvalidArgument, wantReason: reasonRequest,
		},
		"CSR for another node": {
			req:      &joinproto.IssueJoinTicketRequest{DiskUuid: diskUUID, NodeName: "worker-1", CertificateRequest: nil},
			wantCode: codes.InvalidArgument, wantReason: reasonCSR,
		},
		"keyservice down": {
			keys:     failingKeys{},
			req:      &joinproto.IssueJoinTicketRequest{DiskUuid: diskUUID, NodeName: "worker-1"},
			wantCode: codes.Unavailable, wantReason: reasonKeyService,
		},
		// A genuine node asking for another node's kubelet certificate and token.
		"another node's name": {
			req:      &joinproto.IssueJoinTicketRequest{DiskUuid: diskUUID, NodeName: "control-plane-0", IsControlPlane: true},
			wantCode: codes.PermissionDenied, wantReason: reasonNodeName, wantErr: ErrNodeNameNotCertified.Error(),
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			keys := tc.keys
			if keys == nil {
				keys = keyService(t)
			}
			f := newFixture(t, keys)
			switch {
			case tc.req.CertificateRequest == nil && tc.wantReason == reasonCSR:
				tc.req.CertificateRequest = kubeletCSR(t, "worker-2")
			case tc.req.CertificateRequest == nil:
				tc.req.CertificateRequest = kubeletCSR(t, tc.req.GetNodeName())
			}
			_, err := f.joiningNode(t, "worker-1", vtpmtest.Boot).IssueJoinTicket(context.Background(), tc.req)
			assert.Equal(t, tc.wantCode, status.Code(err), "%v", err)
			assert.Contains(t, status.Convert(err).Message(), tc.wantErr)
			result := resultFailed
			if tc.wantCode == codes.InvalidArgument || tc.wantCode == codes.PermissionDenied {
				result = resultRefused
			}
			assert.Equal(t, 1.0, testutil.ToFloat64(f.metrics.attempts.WithLabelValues("IssueJoinTicket", result, tc.wantReason)))
			assert.Equal(t, []string{strings.Join(strings.Fields("join "+tc.req.GetNodeName()+" "+result+" "+tc.wantReason), " ")}, f.audited(t))
			secrets, err := f.client.CoreV1().Secrets(metav1.NamespaceSystem).List(context.Background(), metav1.ListOptions{})
			require.NoError(t, err)
			assert.Empty(t, secrets.Items, "a failed join leaves no token behind")
		})
	}
}

func TestControlPlaneFilesMissing(t *testing.T) {
	f := newFixture(t, keyService(t))
	require.NoError(t, os.Remove(filepath.Join(f.pkiDir, "etcd/ca.key")))
	_, err := f.joiningNode(t, "cp-2", vtpmtest.Boot).IssueJoinTicket(context.Background(), &joinproto.IssueJoinTicketRequest{
		DiskUuid: diskUUID, NodeName: "cp-2", IsControlPlane: true, CertificateRequest: kubeletCSR(t, "cp-2"),
	})
	assert.Equal(t, codes.Internal, status.Code(err))
	assert.Equal(t, 1.0, testutil.ToFloat64(f.metrics.attempts.WithLabelValues("IssueJoinTicket", resultFailed, reasonPKI)))
}
