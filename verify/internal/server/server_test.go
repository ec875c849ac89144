package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

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

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node returns a VerificationService on a real swtpm and a validator that expects its boot.
func node(t *testing.T) (*Server, *vtpm.Validator) {
	t.Helper()
	n := vtpmtest.NewNode(t, vtpmtest.Boot)
	log := n.EventLog
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, n.TPM, vtpm.WithEventLog(func() ([]byte, error) { return log, nil }))
	t.Cleanup(issuer.Close)
	v, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot), AKRoots: vtpmtest.AKRoots(t)})
	require.NoError(t, err)
	return New(issuer, "worker-0", slog.New(slog.DiscardHandler), prometheus.NewRegistry()), v
}

func TestGRPC(t *testing.T) {
	s, v := node(t)
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := verifyproto.NewAPIClient(conn)

	nonce := bytes.Repeat([]byte{9}, 32)
	resp, err := client.GetAttestation(context.Background(), &verifyproto.GetAttestationRequest{Nonce: nonce, UserData: []byte("cli")})
	require.NoError(t, err)
	userData, err := v.Validate(context.Background(), resp.GetAttestation(), nonce)
	require.NoError(t, err, "the returned document validates for the caller's nonce")
	assert.Equal(t, verifyproto.Binding("worker-0", []byte("cli")), userData, "bound to the node and the caller's data")
	assert.Equal(t, "worker-0", resp.GetNodeName())

	_, err = v.Validate(context.Background(), resp.GetAttestation(), bytes.Repeat([]byte{8}, 32))
	assert.ErrorIs(t, err, vtpm.ErrNonceMismatch, "and only for it")

	for name, req := range map[string]*verifyproto.GetAttestationRequest{
		"short nonce":     {Nonce: nonce[:31]},
		"no nonce":        {},
		"large user data": {Nonce: nonce, UserData: make([]byte, maxUserData+1)},
	} {
		_, err := client.GetAttestation(context.Background(), req)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), name)
	}
	assert.Equal(t, 1.0, testutil.ToFloat64(s.requests.WithLabelValues("grpc", "ok")))
	assert.Equal(t, 3.0, testutil.ToFloat64(s.requests.WithLabelValues("grpc", "invalid")))
}

func TestHTTP(t *testing.T) {
	s, v := node(t)
	srv := httptest.NewServer(s)
	defer srv.Close()
	nonce := bytes.Repeat([]byte{7}, 32)

	resp, err := http.Get(srv.URL + "/?nonce=" + hex.EncodeToString(nonce) + "&userData=" + hex.EncodeToString([]byte("u")))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var body HTTPResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	userData, err := v.Validate(context.Background(), body.Attestation, nonce)
	require.NoError(t, err)
	assert.Equal(t, verifyproto.Binding("worker-0", []byte("u")), userData)
	assert.Equal(t, "worker-0", body.NodeName)

	testCases := map[string]struct {
		method, query string
		want          int
	}{
		"short nonce":   {method: http.MethodGet, query: "?nonce=" + hex.EncodeToString(nonce[:16]), want: http.StatusBadRequest},
		"no nonce":      {method: http.MethodGet, query: "", want: http.StatusBadRequest},
		"nonce not hex": {method: http.MethodGet, query: "?nonce=zz", want: http.StatusBadRequest},
		"bad user data": {method: http.MethodGet, query: "?nonce=" + hex.EncodeToString(nonce) + "&userData=q", want: http.StatusBadRequest},
		"POST":          {method: http.MethodPost, query: "?nonce=" + hex.EncodeToString(nonce), want: http.StatusMethodNotAllowed},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+"/"+tc.query, nil)
			require.NoError(t, err)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			_ = resp.Body.Close()
			assert.Equal(t, tc.want, resp.StatusCode)
		})
	}
}

func TestBindingSeparatesNodesAndData(t *testing.T) {
	seen := map[string]string{}
	for _, c := range []struct {
		node string
		data []byte
	}{{"a", nil}, {"a", []byte("b")}, {"ab", nil}, {"", []byte("ab")}, {"b", nil}} {
		b := string(verifyproto.Binding(c.node, c.data))
		_, dup := seen[b]
		assert.False(t, dup, "%q/%q shares a binding with %s", c.node, c.data, seen[b])
		seen[b] = c.node + "/" + string(c.data)
	}
}
