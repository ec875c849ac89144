// Package service runs a component's servers: the gRPC API and an HTTP endpoint with /healthz and
// /metrics (Prometheus). Run returns when the context ends, after stopping both gracefully.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/constellation-go/constellation/internal/ratelimit"
)

// ShutdownTimeout bounds how long in-flight requests may take to finish after a stop signal.
const ShutdownTimeout = 10 * time.Second

// Servers is what Run serves.
type Servers struct {
	// GRPC and GRPCListener are the API; both may be nil for an HTTP-only service.
	GRPC         *grpc.Server
	GRPCListener net.Listener
	// HTTPListener serves /healthz, /metrics and Handlers.
	HTTPListener net.Listener
	// Handlers are further HTTP routes, e.g. an HTTP form of the API.
	Handlers map[string]http.Handler
	// ConnLimit, if set, closes gRPC connections of sources over their limit as soon as they are accepted,
	// before any handshake work (see internal/ratelimit).
	ConnLimit *ratelimit.PerSource
	// Registry holds the service's metrics; Run adds Go and process collectors.
	Registry *prometheus.Registry
	Log      *slog.Logger
}

// NewRegistry returns a metrics registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Run serves until ctx ends or a server fails, then stops everything gracefully.
func Run(ctx context.Context, s Servers) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{Registry: s.Registry}))
	for pattern, h := range s.Handlers {
		mux.Handle(pattern, h)
	}
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 2)
	running := 1
	go func() {
		if err := httpSrv.Serve(s.HTTPListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("HTTP server: %w", err)
			return
		}
		errc <- nil
	}()
	if s.GRPC != nil {
		running++
		grpcListener := s.GRPCListener
		if s.ConnLimit != nil {
			grpcListener = s.ConnLimit.Listener(grpcListener)
		}
		go func() {
			if err := s.GRPC.Serve(grpcListener); err != nil {
				errc <- fmt.Errorf("gRPC server: %w", err)
				return
			}
			errc <- nil
		}()
		s.Log.Info("serving", "grpc", s.GRPCListener.Addr().String(), "http", s.HTTPListener.Addr().String())
	} else {
		s.Log.Info("serving", "http", s.HTTPListener.Addr().String())
	}

	var firstErr error
	select {
	case <-ctx.Done():
		s.Log.Info("stopping")
	case firstErr = <-errc:
		running--
		s.Log.Error("server failed; stopping", "error", firstErr)
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if s.GRPC != nil {
		stopped := make(chan struct{})
		go func() {
			s.GRPC.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-shutdownCtx.Done():
			s.GRPC.Stop()
			<-stopped
		}
	}
	if err := httpSrv.Shutdown(shutdownCtx); err != nil {
		_ = httpSrv.Close()
	}
	for ; running > 0; running-- {
		if err := <-errc; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// ListenAndRun listens on grpcAddr (unless s.GRPC is nil) and httpAddr, then runs s until ctx ends.
func ListenAndRun(ctx context.Context, grpcAddr, httpAddr string, s Servers) error {
	if s.GRPC != nil {
		lis, err := Listen(grpcAddr)
		if err != nil {
			return fmt.Errorf("listening for gRPC: %w", err)
		}
		s.GRPCListener = lis
	}
	lis, err := net.Listen("tcp", httpAddr)
	if err != nil {
		if s.GRPCListener != nil {
			_ = s.GRPCListener.Close()
		}
		return fmt.Errorf("listening for HTTP: %w", err)
	}
	s.HTTPListener = lis
	return Run(ctx, s)
}

// UnixPrefix marks a listen address as a unix socket path, as gRPC's own target syntax does
// (unix:///run/x.sock).
const UnixPrefix = "unix://"

// Listen listens on addr: a TCP host:port, or UnixPrefix followed by an absolute socket path. A unix socket
// is made reachable by its owner only: its directory is created (or tightened) to 0700 and the socket is
// 0600, so on a node only root processes that were given the directory can connect, unlike a loopback
// port, which every process in the network namespace (any hostNetwork pod) can reach.
func Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, UnixPrefix)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("unix socket address %q: the path must be absolute", addr)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the socket's directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restricting the socket's directory: %w", err)
	}
	// A socket file left by an earlier run (after a crash) would make Listen fail.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing a stale socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Until this chmod the directory (0700) already keeps others out.
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("restricting the socket: %w", err)
	}
	return lis, nil
}
