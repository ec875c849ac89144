// Command keyservice serves GetDataKey to the JoinService on the same control plane, over a unix socket.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/afero"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/service"
	"github.com/constellation-go/constellation/keyservice/internal/kms"
	"github.com/constellation-go/constellation/keyservice/internal/server"
	"google.golang.org/grpc"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keyservice:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("keyservice", flag.ContinueOnError)
	grpcAddr := fs.String("grpc-addr", "unix:///run/constellation/keyservice/keyservice.sock", "address of the gRPC API: unix://<absolute socket path> (made 0600 in a 0700 directory: only the JoinService mounts it) or host:port")
	httpAddr := fs.String("http-addr", ":9001", "address of /healthz and /metrics")
	kmsURI := fs.String("kms-uri", kmsuri.Default, "key backend")
	secretPath := fs.String("master-secret", "/var/run/constellation/mastersecret/"+crypto.MasterSecretFileName, "master secret file (every backend: the cluster's identity comes from it)")
	logLevel, logFormat := service.LogFlags(fs)
	if err := service.ParseFlags(fs, "KEYSERVICE", args); err != nil {
		return err
	}
	log, err := service.NewLogger(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Every backend needs it: the cluster's identity (the measurement secret) always comes from it.
	fh := file.NewHandler(afero.NewBasePathFs(afero.NewOsFs(), filepath.Dir(*secretPath)))
	master, err := crypto.ReadMasterSecret(fh, filepath.Base(*secretPath))
	if err != nil {
		return err
	}
	// User-managed: the KMS wraps the data keys, which are kept wrapped in a Secret of this cluster.
	if err := kms.Register(awskms.Name, func(ctx context.Context, u *url.URL) (kms.KMS, error) {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("%s keeps the wrapped data keys in a Secret: %w", awskms.Name, err)
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		b, err := awskms.Open(ctx, u, awskms.NewSecretStore(client, metav1.NamespaceSystem, awskms.DefaultSecret), nil)
		if err != nil {
			return nil, err
		}
		go adoptKeys(ctx, b, log)
		return b, nil
	}); err != nil {
		return err
	}
	backend, err := kms.New(ctx, *kmsURI, &master)
	if err != nil {
		return err
	}

	reg := service.NewRegistry()
	g := grpc.NewServer()
	server.New(backend, log, reg).Register(g)
	return service.ListenAndRun(ctx, *grpcAddr, *httpAddr, service.Servers{
		GRPC: g, Registry: reg, Log: log,
	})
}

// adoptKeys re-wraps the keys another KMS key wrapped (the configuration moved to a new key) until it
// succeeds: a KMS that is down when the KeyService starts delays the move, it does not stop the service,
// which still unwraps with whichever key a blob names.
func adoptKeys(ctx context.Context, b *awskms.Backend, log *slog.Logger) {
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		n, err := b.Adopt(ctx)
		if err == nil {
			if n > 0 {
				log.Info("re-wrapped the data keys of another KMS key with the configured one", "keys", n)
			}
			return
		}
		log.Warn("re-wrapping data keys of another KMS key failed; retrying", "error", err, "retryIn", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
