package leader

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"k8s.io/client-go/tools/leaderelection"

	"github.com/constellation-go/constellation/internal/kubetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"))
}

func TestLockValidation(t *testing.T) {
	testCases := map[string]struct {
		namespace, name, identity string
	}{
		"no identity":  {namespace: "kube-system", name: "lease"},
		"no namespace": {name: "lease", identity: "operator-a"},
		"no name":      {namespace: "kube-system", identity: "operator-a"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := Lock(nil, tc.namespace, tc.name, tc.identity, time.Minute)
			assert.Error(t, err)
		})
	}
}

// TestRestartedLeaderTakesItsLeaseBack: on a real API server, a leader that stops without releasing its Lease
// (as a process that lost its renew deadline does) leaves a Lease valid for an hour. A restart under the same
// identity leads again at once; another identity does not lead while the Lease is valid.
func TestRestartedLeaderTakesItsLeaseBack(t *testing.T) {
	cluster := kubetest.Start(t)
	const leaseDuration = time.Hour

	crashed := elect(t, cluster, "operator-a", leaseDuration)
	require.True(t, crashed.waitLeading(30*time.Second), "the first replica never led")
	crashed.stop()

	testCases := map[string]struct {
		identity  string
		wantLeads bool
	}{
		"another replica waits for the Lease to expire": {identity: "operator-b", wantLeads: false},
		"the same replica, restarted, leads at once":    {identity: "operator-a", wantLeads: true},
	}
	// The order does not matter: a replica that led stops without releasing the Lease too.
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			e := elect(t, cluster, tc.identity, leaseDuration)
			defer e.stop()
			// Many retry periods: a replica that may lead does so within the first few.
			assert.Equal(t, tc.wantLeads, e.waitLeading(5*time.Second))
		})
	}
}

type election struct {
	cancel  context.CancelFunc
	done    chan struct{}
	leading chan struct{}
	once    sync.Once
}

// elect runs a leader elector for identity on the Lease kube-system/constellation-operator; it never releases
// the Lease when stopped.
func elect(t *testing.T, cluster *kubetest.Cluster, identity string, leaseDuration time.Duration) *election {
	t.Helper()
	lock, err := Lock(cluster.Config, "kube-system", "constellation-operator", identity, 10*time.Second)
	require.NoError(t, err)
	e := &election{done: make(chan struct{}), leading: make(chan struct{})}
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:          lock,
		LeaseDuration: leaseDuration,
		RenewDeadline: 10 * time.Second,
		RetryPeriod:   100 * time.Millisecond,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { e.once.Do(func() { close(e.leading) }) },
			OnStoppedLeading: func() {},
		},
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() {
		defer close(e.done)
		elector.Run(ctx)
	}()
	return e
}

func (e *election) waitLeading(d time.Duration) bool {
	select {
	case <-e.leading:
		return true
	case <-time.After(d):
		return false
	}
}

func (e *election) stop() {
	e.cancel()
	<-e.done
}
