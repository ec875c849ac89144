// Package verifytest lets other components' tests run the real VerificationService (its server package is
// internal to verify/), so they check their side against the production code rather than a copy.
package verifytest

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/constellation-go/constellation/verify/internal/server"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// Issuer makes the attestations the service hands out (an attestation.Issuer).
type Issuer interface {
	Issue(ctx context.Context, userData, nonce []byte) ([]byte, error)
}

// New returns the VerificationService of node, attesting with i; register it on a gRPC server with
// verifyproto.RegisterAPIServer or call it directly.
func New(i Issuer, node string) verifyproto.APIServer {
	return server.New(i, node, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
}
