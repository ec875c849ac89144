package imagerollout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout/imagerollouttest"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/kubeupgradetest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// image returns measurements of a made-up image: every PCR the validator enforces, each filled with b.
func image(b byte) measurements.M {
	m := measurements.M{}
	for _, i := range []uint32{4, 9, 11, 12, 13} {
		m[i] = measurements.Measurement{Expected: bytes.Repeat([]byte{b}, 32)}
	}
	return m
}

// fakeCluster is a cluster whose JoinService trusts current (and previous, during a roll-out), with a
// Ready control plane and worker.
func fakeCluster(t *testing.T, current measurements.M, previous measurements.M) *k8sfake.Clientset {
	t.Helper()
	f := attestconfig.File{AttestationConfig: config.AttestationConfig{
		Variant: "qemu-vtpm", Measurements: current, PlatformCA: string(vtpmtest.PlatformCA(t).CertificatePEM()),
	}}
	if previous != nil {
		f.Rollout = &attestconfig.Rollout{PreviousMeasurements: previous}
	}
	return imagerollouttest.Cluster(t, f)
}

// fakeInfra reboots nodes: a moved node reports a Ready heartbeat from after its reboot.
type fakeInfra struct {
	t       *testing.T
	k8s     kubernetes.Interface
	mu      sync.Mutex
	events  []string
	failOn  map[string]error // node+step → error
	verify  map[string][]clusterclient.NodeResult
	running map[string]bool // control planes that need no unlock
}

func (f *fakeInfra) log(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, fmt.Sprintf(format, args...))
}

func (f *fakeInfra) MoveNode(ctx context.Context, node, image string) error {
	if err := f.failOn[node+"/move"]; err != nil {
		return err
	}
	n, err := f.k8s.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	require.NoError(f.t, err)
	f.log("move %s (unschedulable=%t) to %s", node, n.Spec.Unschedulable, image)
	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Now().Add(time.Second))
	_, err = f.k8s.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

func (f *fakeInfra) Unlock(_ context.Context, t clusterclient.Target) (bool, error) {
	if err := f.failOn[t.Name+"/unlock"]; err != nil {
		return false, err
	}
	f.log("unlock %s", t.Name)
	return f.running[t.Name], nil
}

func (f *fakeInfra) Verify(_ context.Context, t clusterclient.Target) clusterclient.NodeResult {
	f.log("verify %s", t.Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	if rs := f.verify[t.Name]; len(rs) > 0 {
		f.verify[t.Name] = rs[1:]
		return rs[0]
	}
	return clusterclient.NodeResult{Name: t.Name, Verified: true}
}

// record is the admin's record of the roll-out.
type record struct {
	previous measurements.M
	began    int
	finished int
	failOn   error
}

func (r *record) Begin(previous measurements.M, _ string) error {
	if r.failOn != nil {
		return r.failOn
	}
	r.previous = previous
	r.began++
	return nil
}

func (r *record) Finish() error {
	r.previous = nil
	r.finished++
	return nil
}

type quiet struct{}

func (quiet) Step(string, ...any)   {}
func (quiet) Detail(string, ...any) {}
func (quiet) Done()                 {}

var (
	nodes   = []clusterclient.Target{{Name: "worker-0", IP: "10.42.0.3", Role: config.RoleWorker}, {Name: "cp-0", IP: "10.42.0.2", Role: config.RoleControlPlane}}
	fastOpt = Options{Wait: time.Second, Poll: 10 * time.Millisecond, DrainTimeout: time.Second}
)

// TestRun: the nodes move control planes first, each drained before and uncordoned after; the cluster and
// the admin's record trust both images until the last node verified, then only the new one. A failed step
// names the node and the step and leaves both images trusted; a re-run continues.
func TestRun(t *testing.T) {
	oldImage, newImage := image(1), image(2)
	testCases := map[string]struct {
		// previous set: an interrupted roll-out left the cluster trusting both.
		previous   measurements.M
		running    map[string]string
		failOn     map[string]error
		verify     map[string][]clusterclient.NodeResult
		recordErr  error
		wantEvents []string
		wantMoved  int
		wantStep   Step
		wantNode   string
		wantIs     error
	}{
		"every node moves, control planes first": {
			running: map[string]string{"cp-0": "/a", "worker-0": "/a"},
			wantEvents: []string{
				"move cp-0 (unschedulable=true) to /b", "unlock cp-0", "verify cp-0", "moved cp-0",
				"move worker-0 (unschedulable=true) to /b", "verify worker-0", "moved worker-0",
			},
			wantMoved: 2,
		},
		"an interrupted roll-out continues with the node that did not move": {
			previous: oldImage,
			running:  map[string]string{"cp-0": "/b", "worker-0": "/a"},
			wantEvents: []string{
				// The moved control plane is asked again: the infrastructure may not have made the move.
				"move cp-0 (unschedulable=false) to /b", "unlock cp-0", "verify cp-0",
				"move worker-0 (unschedulable=true) to /b", "verify worker-0", "moved worker-0",
			},
			wantMoved: 1,
		},
		"a node that answers late is asked again": {
			running: map[string]string{"cp-0": "/b", "worker-0": "/a"},
			verify:  map[string][]clusterclient.NodeResult{"worker-0": {{Unreachable: true, Error: "no answer"}}},
			wantEvents: []string{
				"move cp-0 (unschedulable=false) to /b", "unlock cp-0", "verify cp-0",
				"move worker-0 (unschedulable=true) to /b", "verify worker-0", "verify worker-0", "moved worker-0",
			},
			wantMoved: 1,
		},
		"a node that does not verify stops the roll-out": {
			running:    map[string]string{"cp-0": "/a", "worker-0": "/a"},
			verify:     map[string][]clusterclient.NodeResult{"worker-0": {{Error: "PCR 9 differs"}}},
			wantEvents: []string{"move cp-0 (unschedulable=true) to /b", "unlock cp-0", "verify cp-0", "moved cp-0", "move worker-0 (unschedulable=true) to /b", "verify worker-0"},
			wantMoved:  2, wantStep: StepVerify, wantNode: "worker-0", wantIs: ErrNotVerified,
		},
		"a failed reboot stops the roll-out": {
			running:    map[string]string{"cp-0": "/a", "worker-0": "/a"},
			failOn:     map[string]error{"cp-0/move": errors.New("no such image")},
			wantEvents: nil,
			wantMoved:  0, wantStep: StepMove, wantNode: "cp-0",
		},
		"a control plane that cannot be unlocked stops the roll-out": {
			running:    map[string]string{"cp-0": "/a", "worker-0": "/a"},
			failOn:     map[string]error{"cp-0/unlock": errors.New("attestation failed")},
			wantEvents: []string{"move cp-0 (unschedulable=true) to /b"},
			wantMoved:  1, wantStep: StepUnlock, wantNode: "cp-0",
		},
		"without the admin's record nothing changes in the cluster": {
			running:   map[string]string{"cp-0": "/a", "worker-0": "/a"},
			recordErr: errors.New("read-only workspace"),
			wantStep:  StepBegin,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			current := oldImage
			if tc.previous != nil {
				current = newImage
			}
			k8s := fakeCluster(t, current, tc.previous)
			cluster, err := ReadCluster(ctx, k8s)
			require.NoError(t, err)
			infra := &fakeInfra{t: t, k8s: k8s, failOn: tc.failOn, verify: tc.verify}
			rec := &record{failOn: tc.recordErr}
			r := Rollout{
				K8s: k8s, Cluster: cluster, Image: "/b", Measurements: newImage, Nodes: nodes, Running: tc.running,
				Mover: infra, Unlocker: infra, Verifier: infra, Recorder: rec, Reporter: quiet{},
				Moved:   func(_ context.Context, node string) { infra.log("moved %s", node) },
				Options: fastOpt,
			}
			res, err := r.Run(ctx)
			assert.Equal(t, tc.wantEvents, infra.events)
			assert.Equal(t, tc.wantMoved, res.Moved)
			f := imagerollouttest.File(t, k8s)
			if tc.wantStep != "" {
				var rerr *Error
				require.ErrorAs(t, err, &rerr)
				assert.Equal(t, tc.wantStep, rerr.Step)
				assert.Equal(t, tc.wantNode, rerr.Node)
				if tc.wantIs != nil {
					assert.ErrorIs(t, err, tc.wantIs)
				}
				assert.Zero(t, rec.finished)
				if tc.wantStep == StepBegin {
					assert.True(t, Same(oldImage, f.Measurements), "the cluster was not told before the admin's record")
					assert.Nil(t, f.Rollout)
					return
				}
				require.NotNil(t, f.Rollout, "after a failure both images stay trusted")
				assert.True(t, Same(newImage, f.Measurements))
				assert.True(t, Same(oldImage, f.Rollout.PreviousMeasurements))
				assert.True(t, Same(oldImage, rec.previous), "the admin's record keeps the old image")
				return
			}
			require.NoError(t, err)
			assert.Nil(t, f.Rollout, "after the roll-out only the new image is trusted")
			assert.True(t, Same(newImage, f.Measurements))
			assert.Equal(t, 1, rec.began)
			assert.Equal(t, 1, rec.finished)
			for _, n := range []string{"cp-0", "worker-0"} {
				node, err := k8s.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
				require.NoError(t, err)
				assert.False(t, node.Spec.Unschedulable, "%s is uncordoned", n)
			}
			assert.Equal(t, map[string]string{"cp-0": "/b", "worker-0": "/b"}, tc.running)
		})
	}
}

// TestCheck: a roll-out is needed for new measurements or one that was interrupted; a second target
// during a roll-out is refused.
func TestCheck(t *testing.T) {
	a, b, c := image(1), image(2), image(3)
	testCases := map[string]struct {
		current, previous, target measurements.M
		want                      bool
		wantErr                   error
	}{
		"up to date":                       {current: a, target: a},
		"new measurements":                 {current: a, target: b, want: true},
		"an interrupted roll-out":          {current: b, previous: a, target: b, want: true},
		"another target during a roll-out": {current: b, previous: a, target: c, wantErr: ErrOtherRollout},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			cluster, err := ReadCluster(context.Background(), fakeCluster(t, tc.current, tc.previous))
			require.NoError(t, err)
			got, err := cluster.Check(tc.target)
			if tc.wantErr != nil {
				assert.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestWaitNodeReady: a roll-out's node counts as back only with a Ready heartbeat from after its reboot.
func TestWaitNodeReady(t *testing.T) {
	rebooted := time.Now()
	n := kubeupgradetest.Node("worker-0", "v1.34.10", false)
	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(rebooted.Add(-time.Minute))
	k8s := k8sfake.NewClientset(n)
	ctx := context.Background()

	err := WaitNodeReady(ctx, k8s, "worker-0", rebooted, 200*time.Millisecond, 10*time.Millisecond)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "worker-0 was not Ready again within 200ms: Ready=True")

	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(rebooted.Add(time.Second))
	_, err = k8s.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, WaitNodeReady(ctx, k8s, "worker-0", rebooted, 200*time.Millisecond, 10*time.Millisecond))

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, WaitNodeReady(canceled, k8s, "missing", rebooted, 200*time.Millisecond, 10*time.Millisecond), context.Canceled)
}
