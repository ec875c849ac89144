package atls_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/constellation-go/constellation/verify/verifytest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// corpusDir holds 13 event logs read from real machines (see its README); the largest are over 50 KB.
const corpusDir = "../attestation/eventlog/testdata"

// Every real event log of the corpus is attested by a node whose vTPM it describes, through a real aTLS
// handshake and through the VerificationService, and the validator replays it against the quote.
func TestCorpusEventLogsAttest(t *testing.T) {
	logs, err := filepath.Glob(filepath.Join(corpusDir, "*.bin"))
	require.NoError(t, err)
	require.Len(t, logs, 13, "the corpus of real event logs")

	for _, path := range logs {
		t.Run(filepath.Base(path), func(t *testing.T) {
			raw, err := os.ReadFile(path)
			require.NoError(t, err)
			node, refs := vtpmtest.NewNodeFromLog(t, raw)
			issuer := vtpm.NewIssuer(variant.QEMUVTPM, node.TPM, vtpm.WithEventLog(func() ([]byte, error) { return raw, nil }))
			t.Cleanup(issuer.Close)
			validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)})
			require.NoError(t, err)

			t.Run("aTLS handshake", func(t *testing.T) {
				creds, err := atls.NewCredentials(issuer, nil)
				require.NoError(t, err)
				lis, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				srv := grpc.NewServer(grpc.Creds(creds))
				healthpb.RegisterHealthServer(srv, health.NewServer())
				go func() { _ = srv.Serve(lis) }()
				defer srv.Stop()
				require.NoError(t, check(t, lis.Addr().String(), nil, []attestation.Validator{validator}))
			})

			t.Run("VerificationService", func(t *testing.T) {
				vs := verifytest.New(issuer, "node-0")
				lis, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				srv := grpc.NewServer()
				verifyproto.RegisterAPIServer(srv, vs)
				go func() { _ = srv.Serve(lis) }()
				defer srv.Stop()
				conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
				require.NoError(t, err)
				defer conn.Close()
				nonce, userData := make([]byte, 32), []byte("the CLI's verify request")
				_, _ = rand.Read(nonce)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				resp, err := verifyproto.NewAPIClient(conn).GetAttestation(ctx, &verifyproto.GetAttestationRequest{Nonce: nonce, UserData: userData})
				require.NoError(t, err)
				doc := resp.GetAttestation()
				t.Logf("%d-byte event log, %d-byte document", len(raw), len(doc))
				assert.LessOrEqual(t, len(doc), attestation.MaxDocumentSize)

				bound, err := validator.Validate(ctx, doc, nonce)
				require.NoError(t, err)
				assert.True(t, bytes.Equal(verifyproto.Binding("node-0", userData), bound), "the answer is bound to the node asked")
			})
		})
	}
}
