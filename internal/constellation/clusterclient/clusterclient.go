// Package clusterclient is the admin's side of the node protocols, apart from the CLI's commands: the init
// request to the first control plane (resuming an interrupted one), the master secret to a control plane
// that waits for recovery, and an attestation from a node's VerificationService, checked and bound to the
// node asked. Init and Recover run over aTLS: the handshake validates the node before anything is sent.
// Each call is one network round; the callers (the CLI's commands) decide what to print and what to store.
package clusterclient

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// GRPC reaches the nodes' APIs over the network.
type GRPC struct{}

// InitFailedError is a failure the node reported, with the logs it sent along.
type InitFailedError struct {
	Message string
	Logs    []byte
}

func (e *InitFailedError) Error() string { return "the node reported: " + e.Message }

// Init sends the init request to the first control plane at endpoint, after validator accepted its
// attestation, and reports the node's progress until it answers.
func (GRPC) Init(ctx context.Context, endpoint string, validator attestation.Validator, req *initproto.InitRequest,
	progress func(step, message string),
) (*initproto.InitSuccessResponse, error) {
	conn, err := dialAttested(endpoint, validator)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := initproto.NewAPIClient(conn).Init(ctx, req)
	if err != nil {
		return nil, err
	}
	var failure *InitFailedError
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if failure != nil {
				return nil, failure
			}
			return nil, err
		}
		switch {
		case resp.GetProgress() != nil:
			progress(resp.GetProgress().GetStep(), resp.GetProgress().GetMessage())
		case resp.GetInitSuccess() != nil:
			return resp.GetInitSuccess(), nil
		case resp.GetInitFailure() != nil:
			failure = &InitFailedError{Message: resp.GetInitFailure().GetError()}
		case resp.GetLog() != nil && failure != nil:
			failure.Logs = append(failure.Logs, resp.GetLog().GetLog()...)
		}
	}
	if failure != nil {
		return nil, failure
	}
	return nil, errors.New("the node closed the init stream without a result")
}

// Recover unlocks a control plane at endpoint that waits for recovery, after validator accepted its
// attestation: it asks the node to describe its disk, prepares the request from that (the master secret,
// and with user-managed keys the disk key the admin's KMS unwrapped), and sends it.
func (GRPC) Recover(ctx context.Context, endpoint string, validator attestation.Validator,
	prepare PrepareRecovery,
) error {
	conn, err := dialAttested(endpoint, validator)
	if err != nil {
		return err
	}
	defer conn.Close()
	api := recoverproto.NewAPIClient(conn)
	desc, err := api.Describe(ctx, &recoverproto.DescribeRequest{})
	if err != nil {
		return err
	}
	req, err := prepare(ctx, desc)
	if err != nil {
		return err
	}
	_, err = api.Recover(ctx, req)
	return err
}

// GetAttestation asks the VerificationService at endpoint for an attestation bound to nonce; it returns the
// document and the name of the node that says it answered.
func (GRPC) GetAttestation(ctx context.Context, endpoint string, nonce []byte) ([]byte, string, error) {
	return verifyproto.Client{}.GetAttestation(ctx, endpoint, nonce)
}

// dialAttested returns a connection whose every handshake validates the server with validator.
func dialAttested(endpoint string, validator attestation.Validator) (*grpc.ClientConn, error) {
	creds, err := atls.NewCredentials(nil, []attestation.Validator{validator})
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(endpoint, grpc.WithTransportCredentials(creds))
}
