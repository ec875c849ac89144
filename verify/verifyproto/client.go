package verifyproto

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Client asks VerificationServices for attestations.
type Client struct{}

// GetAttestation asks the VerificationService at endpoint for an attestation bound to nonce; it returns the
// document and the name of the node that says it answered. No transport security is needed: the document
// is signed by the node's TPM and bound to the nonce and to the node's name (CheckAnswer checks both).
func (Client) GetAttestation(ctx context.Context, endpoint string, nonce []byte) ([]byte, string, error) {
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, "", err
	}
	defer conn.Close()
	resp, err := NewAPIClient(conn).GetAttestation(ctx, &GetAttestationRequest{Nonce: nonce})
	if err != nil {
		return nil, "", err
	}
	return resp.GetAttestation(), resp.GetNodeName(), nil
}
