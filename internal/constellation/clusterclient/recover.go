package clusterclient

import (
	"context"
	"net"
	"strconv"
	"time"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// PrepareRecovery makes the request that unlocks the node a DescribeResponse describes: the master secret,
// and with user-managed keys the disk key the admin's KMS unwrapped.
type PrepareRecovery = func(ctx context.Context, desc *recoverproto.DescribeResponse) (*recoverproto.RecoverRequest, error)

// Recoverer unlocks a control plane that waits for recovery after validator accepted its attestation.
type Recoverer interface {
	Recover(ctx context.Context, endpoint string, validator attestation.Validator, prepare PrepareRecovery) error
}

// recoverTimeout bounds one recover call, once the node's Recovery API listens.
const recoverTimeout = 5 * time.Minute

// Recovery unlocks restarted control planes with the master secret.
type Recovery struct {
	API     Recoverer
	Booting Booting
	// Reachable tells whether a TCP address accepts connections.
	Reachable func(ctx context.Context, addr string) bool
	// Validator checks the node's attestation (a fresh node's measurements: it has not joined yet).
	Validator attestation.Validator
	Prepare   PrepareRecovery
	// Waiting, if set, is told once when a node's Recovery API does not listen yet.
	Waiting func(what string)
}

// RecoverNode sends the master secret to one node. A node whose VerificationService answers runs normally
// (it is a pod, which needs the unlocked state disk): it is left alone, and running is true. A node whose
// Recovery API refuses connections is still booting: it is waited for.
func (r Recovery) RecoverNode(ctx context.Context, t Target) (running bool, err error) {
	runs := func() bool { return r.Reachable(ctx, net.JoinHostPort(t.IP, strconv.Itoa(verifyproto.Port))) }
	if runs() {
		return true, nil
	}
	endpoint := net.JoinHostPort(t.IP, strconv.Itoa(recoverproto.Port))
	return r.Booting.Do(ctx, t.Name+"'s Recovery API", r.Waiting, func() error {
		cctx, cancel := context.WithTimeout(ctx, recoverTimeout)
		defer cancel()
		return r.API.Recover(cctx, endpoint, r.Validator, r.Prepare)
	}, runs)
}

// Unlock is RecoverNode: a Recovery unlocks the control planes of an image roll-out.
func (r Recovery) Unlock(ctx context.Context, t Target) (bool, error) { return r.RecoverNode(ctx, t) }

// DialReachable tells whether addr accepts TCP connections within two seconds.
func DialReachable(ctx context.Context, addr string) bool {
	conn, err := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}
