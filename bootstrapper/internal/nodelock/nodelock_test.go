package nodelock

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm/swtpmtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openTPM(t *testing.T) *Lock {
	t.Helper()
	p := swtpmtest.Start(t)
	tp, err := tpm.Open(p.Address())
	require.NoError(t, err)
	t.Cleanup(func() { _ = tp.Close() })
	return New(tp)
}

func pcr15(t *testing.T, l *Lock) []byte {
	t.Helper()
	pcrs, err := tpm.ReadPCRs(l.tpm, []uint32{measurements.PCRClusterID})
	require.NoError(t, err)
	return pcrs[measurements.PCRClusterID]
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestTryLockExtendsPCR15Once(t *testing.T) {
	l := openTPM(t)
	clusterID := bytes.Repeat([]byte{0x42}, 32)

	locked, err := l.IsLocked()
	require.NoError(t, err)
	assert.False(t, locked, "a fresh node is not locked")
	assert.Equal(t, []byte(measurements.Zero), pcr15(t, l))
	assert.False(t, isClosed(l.Taken()))

	ok, err := l.TryLock(clusterID)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), pcr15(t, l), "PCR 15 holds the cluster ID event")
	assert.True(t, isClosed(l.Taken()))
	assert.Equal(t, clusterID, l.ClusterID())

	locked, err = l.IsLocked()
	require.NoError(t, err)
	assert.True(t, locked)

	// Neither the same nor another cluster ID takes it again, and PCR 15 does not change.
	for _, id := range [][]byte{clusterID, bytes.Repeat([]byte{0x43}, 32)} {
		ok, err = l.TryLock(id)
		require.NoError(t, err)
		assert.False(t, ok)
	}
	assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), pcr15(t, l))

	// A restarted bootstrapper (a new Lock on the same TPM) sees the node locked and cannot take it.
	again := New(l.tpm)
	locked, err = again.IsLocked()
	require.NoError(t, err)
	assert.True(t, locked)
	ok, err = again.TryLock(clusterID)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.False(t, isClosed(again.Taken()), "the restarted process did not take the lock")
	assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), pcr15(t, l))
}

func TestTryLockRace(t *testing.T) {
	l := openTPM(t)
	const contenders = 8
	var wg sync.WaitGroup
	won := make(chan []byte, contenders)
	errs := make(chan error, contenders)
	for i := range contenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := bytes.Repeat([]byte{byte(i + 1)}, 32)
			ok, err := l.TryLock(id)
			if err != nil {
				errs <- err
				return
			}
			if ok {
				won <- id
			}
		}()
	}
	wg.Wait()
	close(won)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var winners [][]byte
	for id := range won {
		winners = append(winners, id)
	}
	require.Len(t, winners, 1, "exactly one contender takes the lock")
	assert.Equal(t, []byte(measurements.PCR15ForCluster(winners[0])), pcr15(t, l), "PCR 15 was extended exactly once")
}

func TestTryLockRefusals(t *testing.T) {
	testCases := map[string]struct {
		preExtend []byte
		clusterID []byte
		wantErr   bool
	}{
		"empty cluster ID":           {clusterID: nil, wantErr: true},
		"PCR 15 set by someone else": {preExtend: bytes.Repeat([]byte{9}, 32), clusterID: bytes.Repeat([]byte{1}, 32)},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			l := openTPM(t)
			if tc.preExtend != nil {
				require.NoError(t, tpm.Extend(l.tpm, measurements.PCRClusterID, tc.preExtend))
			}
			before := pcr15(t, l)
			ok, err := l.TryLock(tc.clusterID)
			if tc.wantErr {
				require.Error(t, err)
			} else {
				require.NoError(t, err)
			}
			assert.False(t, ok)
			assert.Equal(t, before, pcr15(t, l), "PCR 15 is unchanged")
			assert.False(t, isClosed(l.Taken()))
		})
	}
}

func TestTPMFailure(t *testing.T) {
	l := New(brokenTPM{})
	_, err := l.IsLocked()
	require.Error(t, err)
	ok, err := l.TryLock([]byte("id"))
	require.Error(t, err)
	assert.False(t, ok)
}

type brokenTPM struct{}

func (brokenTPM) Send([]byte) ([]byte, error) { return nil, fmt.Errorf("TPM gone") }
