// Package verifytest lets other components' tests run the real VerificationService (its server package is
// internal to verify/), so they check their side against the production code rather than a copy.
package verifytest

import (
	"context"
	"log/slog"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
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

// ServeNode runs the real VerificationService of a node named name on loopback, attesting (qemu-vtpm) with a
// fresh swtpm the test platform CA certified and booted with events; it returns the address and the node,
// whose vTPM a test may extend behind the service's back.
func ServeNode(t testing.TB, name string, events []vtpmtest.Event) (string, *vtpmtest.Node) {
	t.Helper()
	n := vtpmtest.NewNode(t, events)
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, n.TPM, vtpm.WithEventLog(func() ([]byte, error) { return n.EventLog, nil }))
	t.Cleanup(issuer.Close)
	g := grpc.NewServer()
	verifyproto.RegisterAPIServer(g, New(issuer, name))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening on loopback: %v", err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String(), n
}
