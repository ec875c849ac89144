// Package nodelock is the node lock: a one-way lock that makes init and join mutually exclusive. Taking it
// extends PCR 15 with measurements.ClusterIDEvent(clusterID). A TPM PCR can only be extended, never reset
// until the next boot, so once PCR 15 is non-zero the node belongs to a cluster for the rest of this boot and
// the lock can never be taken again; every attestation the node produces from then on shows the cluster ID.
package nodelock

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

// Lock is the node lock over the node's TPM.
type Lock struct {
	tpm transport.TPM

	// mu serialises the read-check-extend sequence within this process.
	mu    sync.Mutex
	taken chan struct{}
	// clusterID is the cluster this process took the lock for; nil if it has not.
	clusterID []byte
}

// New returns the lock of the node whose TPM is t.
func New(t transport.TPM) *Lock {
	return &Lock{tpm: t, taken: make(chan struct{})}
}

// IsLocked reports whether PCR 15 is set, i.e. whether the node already belongs to a cluster in this boot
// (locked by this process or by an earlier run of the bootstrapper).
func (l *Lock) IsLocked() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pcr, err := l.readPCR15()
	if err != nil {
		return false, err
	}
	return !bytes.Equal(pcr, measurements.Zero), nil
}

// TryLock takes the lock for clusterID: if PCR 15 is zero it extends it with the cluster ID event and returns
// true. If PCR 15 is already set, it changes nothing and returns false. An error means the TPM could not be
// read or extended, or PCR 15 does not hold the expected value afterwards (something else extended it
// concurrently); the node must then be treated as locked.
func (l *Lock) TryLock(clusterID []byte) (bool, error) {
	if len(clusterID) == 0 {
		return false, measurements.ErrNoClusterID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.clusterID != nil {
		return false, nil
	}
	pcr, err := l.readPCR15()
	if err != nil {
		return false, err
	}
	if !bytes.Equal(pcr, measurements.Zero) {
		return false, nil
	}
	if err := tpm.Extend(l.tpm, measurements.PCRClusterID, measurements.ClusterIDEvent(clusterID)); err != nil {
		return false, fmt.Errorf("taking the node lock: %w", err)
	}
	// From here on the lock is taken whatever happens next: PCR 15 is no longer zero.
	l.clusterID = bytes.Clone(clusterID)
	close(l.taken)
	after, err := l.readPCR15()
	if err != nil {
		return true, err
	}
	if want := measurements.PCR15ForCluster(clusterID); !bytes.Equal(after, want) {
		return true, fmt.Errorf("taking the node lock: PCR 15 is %x after the extend, expected %x (extended concurrently?)", after, []byte(want))
	}
	return true, nil
}

// Taken returns a channel that is closed once this process has taken the lock.
func (l *Lock) Taken() <-chan struct{} {
	return l.taken
}

// ClusterID returns the cluster ID this process took the lock for, or nil.
func (l *Lock) ClusterID() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.clusterID)
}

func (l *Lock) readPCR15() ([]byte, error) {
	pcrs, err := tpm.ReadPCRs(l.tpm, []uint32{measurements.PCRClusterID})
	if err != nil {
		return nil, fmt.Errorf("reading PCR 15: %w", err)
	}
	return pcrs[measurements.PCRClusterID], nil
}
