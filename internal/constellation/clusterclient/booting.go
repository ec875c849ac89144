package clusterclient

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Booting bounds how long a call waits for a booting node's API to listen (Wait), asking every Poll.
type Booting struct {
	Wait, Poll time.Duration
}

// DefaultBooting is long enough for a node that was just created or restarted.
var DefaultBooting = Booting{Wait: 3 * time.Minute, Poll: 2 * time.Second}

// Refused tells whether a gRPC call failed because nothing listens yet.
func Refused(err error) bool {
	return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "connection refused")
}

// Do calls fn until it does not fail with a refused connection, for at most b.Wait: a node whose service is
// not listening yet may still be booting. waiting is told once when the wait begins; done, if set, ends
// the wait early with (true, nil).
func (b Booting) Do(ctx context.Context, what string, waiting func(what string), fn func() error, done func() bool) (bool, error) {
	deadline := time.Now().Add(b.Wait)
	told := false
	for {
		err := fn()
		if err == nil || !Refused(err) {
			return false, err
		}
		if done != nil && done() {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("%s did not answer within %s: is the node booted? (%w)", what, b.Wait, err)
		}
		if !told && waiting != nil {
			waiting(what)
			told = true
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(b.Poll):
		}
	}
}
