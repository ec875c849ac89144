package kubeupgrade

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/kubeupgradetest"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	oldVersion = "v1.33.13"
	newVersion = "v1.34.10"
)

var spec = Spec{
	Version: newVersion,
	Components: []*components.Component{
		{Name: "kubeadm", Url: "http://10.42.0.1:9081/v1.34.10/kubeadm", Hash: "sha256:aa", InstallPath: "/var/lib/constellation/bin/kubeadm"},
		{Name: "kubelet", Url: "http://10.42.0.1:9081/v1.34.10/kubelet", Hash: "sha256:bb", InstallPath: "/var/lib/constellation/bin/kubelet"},
	},
	JoinComponents: []*components.Component{
		{Name: "kubeadm", Url: "http://10.42.0.1:9081/v1.34.10/kubeadm", Hash: "sha256:aa", InstallPath: "/var/lib/constellation/bin/kubeadm"},
		{Name: "kubelet", Url: "http://10.42.0.1:9081/v1.34.10/kubelet", Hash: "sha256:bb", InstallPath: "/var/lib/constellation/bin/kubelet"},
		{Name: "joinservice.tar", Url: "http://10.42.0.1:9081/sha256/cc", Hash: "sha256:cc", InstallPath: "/var/lib/constellation/images/joinservice.tar"},
	},
}

// cluster is two control planes and a worker at oldVersion, with the JoinService; the control planes'
// static pods run podsVersion (as they do once kubeadm moved them). objs are added.
func cluster(podsVersion string, objs ...runtime.Object) *k8sfake.Clientset {
	objs = append(objs, kubeupgradetest.JoinService(oldVersion)...)
	for _, n := range []string{"cp-1", "cp-0"} {
		objs = append(objs, kubeupgradetest.Node(n, oldVersion, true))
		objs = append(objs, kubeupgradetest.ControlPlanePods(n, podsVersion)...)
	}
	return k8sfake.NewClientset(objs...)
}

// untilDone runs passes until the upgrade is done or failed, and returns the last progress and every
// progress seen.
func untilDone(ctx context.Context, t *testing.T, r *Reconciler) (Progress, []Progress) {
	t.Helper()
	var seen []Progress
	for range 2000 {
		prog, err := r.Reconcile(ctx, spec)
		require.NoError(t, err)
		seen = append(seen, prog)
		if prog.Phase == PhaseDone || prog.Phase == PhaseFailed {
			return prog, seen
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("the upgrade never finished; last pass: %+v", seen[len(seen)-1])
	return Progress{}, nil
}

// untilWaiting runs passes until one waits for waiting, and returns that pass.
func untilWaiting(ctx context.Context, t *testing.T, r *Reconciler, waiting string) Progress {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		prog, err := r.Reconcile(ctx, spec)
		require.NoError(t, err)
		if prog.Waiting == waiting {
			return prog
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pass waited for %q; the last one: %+v", waiting, prog)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestReconcile: every node stages first; then the first control plane runs kubeadm upgrade apply, the
// JoinService moves to the new version, and every other node (control planes first) runs kubeadm upgrade
// node, drained first and uncordoned after. A pass after the end changes nothing.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	k8s := cluster(newVersion, kubeupgradetest.Node("worker-0", oldVersion, false))
	agents := &kubeupgradetest.Agents{K8s: k8s}
	agents.Start(t)
	r := &Reconciler{Client: k8s}

	last, seen := untilDone(ctx, t, r)
	require.Equal(t, PhaseDone, last.Phase, "%+v", last)
	steps := agents.CarriedOut()
	require.Len(t, steps, 6)
	assert.ElementsMatch(t, []string{"cp-0 stage", "cp-1 stage", "worker-0 stage"}, steps[:3])
	assert.Equal(t, []string{"cp-0 apply", "cp-1 node", "worker-0 node"}, steps[3:])
	assert.Equal(t, []string{"cp-0", "cp-1", "worker-0"}, last.Finished)
	for _, n := range []string{"cp-0", "cp-1", "worker-0"} {
		node, err := k8s.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
		require.NoError(t, err)
		assert.False(t, node.Spec.Unschedulable, n)
		assert.NotContains(t, node.Annotations, CordonAnnotation, n)
		assert.Equal(t, newVersion, node.Status.NodeInfo.KubeletVersion)
	}
	var did []string
	for _, p := range seen {
		did = append(did, p.Did...)
	}
	assert.Contains(t, did, "cordoned cp-1")
	assert.Contains(t, did, "evicted the pods on cp-1")
	assert.Contains(t, did, "uncordoned worker-0")
	assert.Contains(t, did, "the JoinService hands joining nodes Kubernetes v1.34.10")

	ds, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, joinproto.DaemonSetName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.NotEmpty(t, ds.Spec.Template.Annotations[joinproto.RestartAnnotation], "the JoinService is restarted to read its new config")
	cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, joinproto.ConfigMapName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, newVersion, cm.Data[joinproto.KubernetesVersionKey])
	got, err := components.UnmarshalList([]byte(cm.Data[joinproto.ComponentsKey]))
	require.NoError(t, err)
	assert.Len(t, got, 3)

	// Another pass finds everything done and changes nothing.
	prog, err := r.Reconcile(ctx, spec)
	require.NoError(t, err)
	assert.Equal(t, PhaseDone, prog.Phase)
	assert.Empty(t, prog.Did)
	assert.Len(t, agents.CarriedOut(), 6)
}

// TestReconcileStops covers what holds an upgrade, and what it leaves alone.
func TestReconcileStops(t *testing.T) {
	ctx := context.Background()

	t.Run("a failed step stops it with the node's reason; ClearFailures makes the node retry", func(t *testing.T) {
		k8s := cluster(newVersion, kubeupgradetest.Node("worker-0", oldVersion, false))
		agents := &kubeupgradetest.Agents{K8s: k8s}
		agents.FailOn("cp-1", agentapi.StepNode)
		agents.Start(t)
		r := &Reconciler{Client: k8s}

		last, _ := untilDone(ctx, t, r)
		require.Equal(t, PhaseFailed, last.Phase)
		assert.Equal(t, "cp-1", last.Node)
		assert.Equal(t, agentapi.StepNode, last.Step)
		assert.Contains(t, last.Waiting, "etcd did not come up")
		assert.NotContains(t, agents.CarriedOut(), "worker-0 node", "nothing moves past a failed node")
		// Passes do not retry on their own.
		prog, err := r.Reconcile(ctx, spec)
		require.NoError(t, err)
		assert.Equal(t, PhaseFailed, prog.Phase)

		agents.FailOn("cp-1", "")
		cleared, err := ClearFailures(ctx, k8s, newVersion)
		require.NoError(t, err)
		assert.Equal(t, []string{"cp-1"}, cleared)
		last, _ = untilDone(ctx, t, r)
		require.Equal(t, PhaseDone, last.Phase)
		steps := agents.CarriedOut()
		assert.Equal(t, []string{"cp-1 node", "worker-0 node"}, steps[len(steps)-2:])
		assert.Equal(t, 1, count(steps, "cp-0 apply"), "the control plane's apply is not repeated")
	})

	t.Run("it waits for the control plane's static pods to run the version", func(t *testing.T) {
		k8s := cluster(oldVersion)
		agents := &kubeupgradetest.Agents{K8s: k8s}
		agents.Start(t)
		r := &Reconciler{Client: k8s}
		prog := untilWaiting(ctx, t, r, "kube-apiserver on cp-0 to run v1.34.10")
		assert.Equal(t, "cp-0", prog.Node)
		assert.NotContains(t, agents.CarriedOut(), "cp-1 node")
		ds, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, joinproto.DaemonSetName, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Empty(t, ds.Spec.Template.Annotations[joinproto.RestartAnnotation], "the JoinService is not restarted before the control plane moved")
		cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, joinproto.ConfigMapName, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, oldVersion, cm.Data[joinproto.KubernetesVersionKey], "joining nodes get the new version only once the control plane runs it")
	})

	t.Run("a node an administrator cordoned stays cordoned; a node that joined at the version is left alone", func(t *testing.T) {
		cordoned := kubeupgradetest.Node("worker-0", oldVersion, false)
		cordoned.Spec.Unschedulable = true
		k8s := cluster(newVersion, cordoned, kubeupgradetest.Node("worker-1", newVersion, false))
		agents := &kubeupgradetest.Agents{K8s: k8s}
		agents.Start(t)
		last, _ := untilDone(ctx, t, &Reconciler{Client: k8s})
		require.Equal(t, PhaseDone, last.Phase)
		node, err := k8s.CoreV1().Nodes().Get(ctx, "worker-0", metav1.GetOptions{})
		require.NoError(t, err)
		assert.True(t, node.Spec.Unschedulable)
		assert.Equal(t, newVersion, node.Status.NodeInfo.KubeletVersion)
		for _, s := range agents.CarriedOut() {
			assert.NotContains(t, s, "worker-1")
		}
	})

	t.Run("a cluster without a control plane is an error", func(t *testing.T) {
		k8s := k8sfake.NewClientset(kubeupgradetest.Node("worker-0", oldVersion, false))
		_, err := (&Reconciler{Client: k8s}).Reconcile(ctx, spec)
		assert.ErrorContains(t, err, "no control plane")
	})
}

// TestEvictionDoesNotHoldTheStep: a node gets its step once the evictions of its pods were accepted, not
// once the pods terminated (its kubelet may see the evictions a minute late, see Evict); it is uncordoned
// only once they are gone. An eviction a PodDisruptionBudget refuses is asked again, within DrainTimeout.
func TestEvictionDoesNotHoldTheStep(t *testing.T) {
	ctx := context.Background()
	oldRetry := evictRetry
	evictRetry = time.Millisecond
	t.Cleanup(func() { evictRetry = oldRetry })

	// workload is a ReplicaSet's pod on worker-0, beside a pod of the JoinService's DaemonSet, which stays.
	workload := func() []runtime.Object {
		rs, ds := true, true
		return []runtime.Object{
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default", OwnerReferences: []metav1.OwnerReference{
				{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", Controller: &rs},
			}}, Spec: corev1.PodSpec{NodeName: "worker-0"}},
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "joinservice-w", Namespace: metav1.NamespaceSystem, OwnerReferences: []metav1.OwnerReference{
				{APIVersion: "apps/v1", Kind: "DaemonSet", Name: joinproto.DaemonSetName, Controller: &ds},
			}}, Spec: corev1.PodSpec{NodeName: "worker-0"}},
			kubeupgradetest.Node("worker-0", oldVersion, false),
		}
	}
	// withEviction serves the Eviction API as the API server does for a pod with a budget: it refuses the
	// first refusals evictions of each pod (429), then marks the pod terminating. It records the evictions.
	withEviction := func(k8s *k8sfake.Clientset, refusals int) *[]string {
		k8s.Resources = []*metav1.APIResourceList{{GroupVersion: "v1", APIResources: []metav1.APIResource{
			{Name: "pods/eviction", Kind: "Eviction", Group: "policy", Version: "v1"},
		}}}
		// The fake ignores field selectors; drains list the pods of one node.
		k8s.PrependReactor("list", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
			obj, err := k8s.Tracker().List(corev1.SchemeGroupVersion.WithResource("pods"), corev1.SchemeGroupVersion.WithKind("Pod"), action.GetNamespace())
			if err != nil {
				return true, nil, err
			}
			node, _ := action.(k8stesting.ListAction).GetListRestrictions().Fields.RequiresExactMatch("spec.nodeName")
			list := obj.(*corev1.PodList)
			list.Items = slices.DeleteFunc(list.Items, func(p corev1.Pod) bool { return node != "" && p.Spec.NodeName != node })
			return true, list, nil
		})
		var mu sync.Mutex
		var evicted []string
		tried := map[string]int{}
		k8s.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
			if action.GetSubresource() != "eviction" {
				return false, nil, nil
			}
			ev := action.(k8stesting.CreateAction).GetObject().(*policyv1.Eviction)
			mu.Lock()
			defer mu.Unlock()
			if tried[ev.Name]++; tried[ev.Name] <= refusals {
				return true, nil, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
			}
			obj, err := k8s.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), ev.Namespace, ev.Name)
			if err != nil {
				return true, nil, err
			}
			pod := obj.(*corev1.Pod)
			pod.DeletionTimestamp = &metav1.Time{Time: time.Now()}
			evicted = append(evicted, ev.Namespace+"/"+ev.Name)
			return true, nil, k8s.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), pod, ev.Namespace)
		})
		return &evicted
	}

	t.Run("the step runs while the evicted pod terminates; the uncordon waits for it", func(t *testing.T) {
		k8s := cluster(newVersion, workload()...)
		evicted := withEviction(k8s, 2)
		agents := &kubeupgradetest.Agents{K8s: k8s}
		agents.Start(t)
		r := &Reconciler{Client: k8s}
		prog := untilWaiting(ctx, t, r, "the pods evicted from worker-0 to terminate (default/web-1)")
		assert.Equal(t, []string{"default/web-1"}, *evicted, "the budget's refusals were asked again; the DaemonSet's pod stays")
		// (The fake agent writes the kubelet's version before it records the step.)
		assert.Eventually(t, func() bool { return slices.Contains(agents.CarriedOut(), "worker-0 node") }, 5*time.Second,
			time.Millisecond, "the step did not wait for the pod")
		node, err := k8s.CoreV1().Nodes().Get(ctx, "worker-0", metav1.GetOptions{})
		require.NoError(t, err)
		assert.True(t, node.Spec.Unschedulable, "cordoned while an evicted pod is still there")

		// A pod that tolerates the cordon is placed there meanwhile: it is not waited for.
		late := workload()[0].(*corev1.Pod)
		late.Name = "late-1"
		_, err = k8s.CoreV1().Pods("default").Create(ctx, late, metav1.CreateOptions{})
		require.NoError(t, err)
		prog, err = r.Reconcile(ctx, spec)
		require.NoError(t, err)
		assert.Equal(t, "the pods evicted from worker-0 to terminate (default/web-1)", prog.Waiting)
		// The kubelet ends the evicted pod.
		require.NoError(t, k8s.CoreV1().Pods("default").Delete(ctx, "web-1", metav1.DeleteOptions{}))
		last, _ := untilDone(ctx, t, r)
		require.Equal(t, PhaseDone, last.Phase)
		node, err = k8s.CoreV1().Nodes().Get(ctx, "worker-0", metav1.GetOptions{})
		require.NoError(t, err)
		assert.False(t, node.Spec.Unschedulable)
	})

	t.Run("a budget that never allows the eviction stops the node's step, saying so", func(t *testing.T) {
		k8s := cluster(newVersion, workload()...)
		withEviction(k8s, 1<<30)
		agents := &kubeupgradetest.Agents{K8s: k8s}
		agents.Start(t)
		r := &Reconciler{Client: k8s, DrainTimeout: 50 * time.Millisecond}
		var err error
		require.Eventually(t, func() bool {
			_, err = r.Reconcile(ctx, spec)
			return err != nil
		}, 10*time.Second, 2*time.Millisecond)
		assert.ErrorContains(t, err, "draining worker-0 before its upgrade: 1 pod(s) on worker-0 were not evicted within 50ms (check their PodDisruptionBudgets)")
		assert.True(t, apierrors.IsTooManyRequests(err), "the budget's refusal is wrapped: %v", err)
		assert.NotContains(t, agents.CarriedOut(), "worker-0 node")
	})
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
