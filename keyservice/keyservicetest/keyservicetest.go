// Package keyservicetest lets other components' tests run the real KeyService (its server and backends are
// internal to keyservice/) in constellation-managed mode.
package keyservicetest

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/keyservice/internal/kms"
	"github.com/constellation-go/constellation/keyservice/internal/server"
)

// Register adds a KeyService that derives keys from master (kms://cluster-kms) to g.
func Register(g *grpc.Server, master *crypto.MasterSecret) error {
	backend, err := kms.New(context.Background(), kmsuri.Default, master)
	if err != nil {
		return fmt.Errorf("opening the cluster KMS: %w", err)
	}
	server.New(backend, slog.New(slog.DiscardHandler), prometheus.NewRegistry()).Register(g)
	return nil
}

// RegisterUserManaged adds a user-managed KeyService to g: the cluster's identity from master, the disks'
// keys from data (e.g. an awskms.Backend on a local-kms).
func RegisterUserManaged(g *grpc.Server, master *crypto.MasterSecret, data kms.KMS) error {
	identity, err := kms.New(context.Background(), kmsuri.Default, master)
	if err != nil {
		return fmt.Errorf("opening the cluster KMS: %w", err)
	}
	server.New(kms.UserManaged(identity, data), slog.New(slog.DiscardHandler), prometheus.NewRegistry()).Register(g)
	return nil
}
