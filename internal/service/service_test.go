package service

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return lis
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func TestRunServesAndStops(t *testing.T) {
	reg := NewRegistry()
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_requests_total", Help: "test"})
	reg.MustRegister(counter)
	counter.Inc()

	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, health.NewServer())
	grpcLis, httpLis := listen(t), listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Servers{
			GRPC: g, GRPCListener: grpcLis, HTTPListener: httpLis, Registry: reg,
			Handlers: map[string]http.Handler{"/hello": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("hi")) })},
			Log:      slog.New(slog.DiscardHandler),
		})
	}()

	base := "http://" + httpLis.Addr().String()
	code, body := get(t, base+"/healthz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok\n", body)
	_, body = get(t, base+"/metrics")
	assert.Contains(t, body, "test_requests_total 1")
	assert.Contains(t, body, "go_goroutines")
	_, body = get(t, base+"/hello")
	assert.Equal(t, "hi", body)

	conn, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	_, err = healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.NoError(t, conn.Close())

	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(ShutdownTimeout + time.Second):
		t.Fatal("Run did not return after cancel")
	}
	_, err = http.Get(base + "/healthz")
	assert.Error(t, err, "HTTP server is stopped")
}

func TestRunReportsServerFailure(t *testing.T) {
	httpLis := listen(t)
	require.NoError(t, httpLis.Close()) // Serve fails at once on a closed listener.
	err := Run(context.Background(), Servers{HTTPListener: httpLis, Registry: NewRegistry(), Log: slog.New(slog.DiscardHandler)})
	require.Error(t, err)
	assert.True(t, strings.Contains(err.Error(), "HTTP server"), err.Error())
}

func TestListenAndRunReportsListenErrors(t *testing.T) {
	taken := listen(t)
	defer taken.Close()
	err := ListenAndRun(context.Background(), "127.0.0.1:0", taken.Addr().String(), Servers{
		GRPC: grpc.NewServer(), Registry: NewRegistry(), Log: slog.New(slog.DiscardHandler),
	})
	assert.ErrorContains(t, err, "listening for HTTP")
	err = ListenAndRun(context.Background(), taken.Addr().String(), "127.0.0.1:0", Servers{
		GRPC: grpc.NewServer(), Registry: NewRegistry(), Log: slog.New(slog.DiscardHandler),
	})
	assert.ErrorContains(t, err, "listening for gRPC")
}
