package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net"
	"strings"
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

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/keyservice/internal/kms"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startServer runs a KeyService on bufconn and returns a client and the service's log.
func startServer(t *testing.T) (keyserviceproto.APIClient, *bytes.Buffer) {
	t.Helper()
	k, err := kms.New(context.Background(), "kms://cluster-kms", cryptotest.MasterSecret())
	require.NoError(t, err)
	logs := &bytes.Buffer{}
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	New(k, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), prometheus.NewRegistry()).Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = conn.Close()
		g.Stop()
	})
	return keyserviceproto.NewAPIClient(conn), logs
}

func TestGetDataKey(t *testing.T) {
	client, logs := startServer(t)
	testCases := map[string]struct {
		id       string
		length   uint32
		wantKey  string
		wantCode codes.Code
	}{
		"disk key vector":    {id: "00000000-0000-0000-0000-000000000001", length: 32, wantKey: "52b5a48496958261b02efae7c81515ce773b479c56d6e5cb625bf7f7710d2684"},
		"measurement secret": {id: crypto.MeasurementSecretID, length: 32, wantKey: "ea7fedd14f5a29b1b8545592fc20bfdae06918e4ff447b1a0b8e4f3356005bda"},
		"16 bytes":           {id: "disk-a", length: 16, wantKey: "f61cf163e9532d6bff3ec053c6074334"},
		"too short":          {id: "disk-a", length: 15, wantCode: codes.InvalidArgument},
		"too long":           {id: "disk-a", length: 65, wantCode: codes.InvalidArgument},
		"zero length":        {id: "disk-a", length: 0, wantCode: codes.InvalidArgument},
		"empty id":           {id: "", length: 32, wantCode: codes.InvalidArgument},
		"id with newline":    {id: "a\nb", length: 32, wantCode: codes.InvalidArgument},
		"id far too long":    {id: strings.Repeat("a", 200), length: 32, wantCode: codes.InvalidArgument},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			resp, err := client.GetDataKey(context.Background(), &keyserviceproto.GetDataKeyRequest{DataKeyId: tc.id, Length: tc.length})
			if tc.wantCode != codes.OK {
				assert.Equal(t, tc.wantCode, status.Code(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantKey, hex.EncodeToString(resp.GetDataKey()))
			// No key, in any encoding, may reach the log.
			assert.NotContains(t, logs.String(), tc.wantKey)
			assert.NotContains(t, logs.String(), base64.StdEncoding.EncodeToString(resp.GetDataKey()))
		})
	}
	assert.Contains(t, logs.String(), "issued data key", "requests are logged (without keys)")
}

func TestMetrics(t *testing.T) {
	k, err := kms.New(context.Background(), "kms://cluster-kms", cryptotest.MasterSecret())
	require.NoError(t, err)
	s := New(k, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	_, err = s.GetDataKey(context.Background(), &keyserviceproto.GetDataKeyRequest{DataKeyId: "a", Length: 32})
	require.NoError(t, err)
	_, err = s.GetDataKey(context.Background(), &keyserviceproto.GetDataKeyRequest{DataKeyId: "a", Length: 1})
	require.Error(t, err)
	assert.Equal(t, 1.0, testutil.ToFloat64(s.requests.WithLabelValues("ok")))
	assert.Equal(t, 1.0, testutil.ToFloat64(s.requests.WithLabelValues("invalid")))
}

// A restarted KeyService (new process, same master secret) derives identical keys.
func TestRestartGivesIdenticalKeys(t *testing.T) {
	first, _ := startServer(t)
	second, _ := startServer(t)
	req := &keyserviceproto.GetDataKeyRequest{DataKeyId: "disk-uuid", Length: 32}
	a, err := first.GetDataKey(context.Background(), req)
	require.NoError(t, err)
	b, err := second.GetDataKey(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, a.GetDataKey(), b.GetDataKey())
}
