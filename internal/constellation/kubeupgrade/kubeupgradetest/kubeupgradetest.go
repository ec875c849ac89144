// Package kubeupgradetest plays the nodes' side of a Kubernetes upgrade for tests: agents that carry out
// every instruction at once, and a cluster of Nodes, control plane static pods and JoinService objects.
package kubeupgradetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// Agents carries out every instruction on the cluster's Nodes: the node reports the step done and, for a
// kubeadm step, its kubelet runs the version; or, for FailOn, reports it failed.
type Agents struct {
	K8s kubernetes.Interface
	// Delay is how long a step takes.
	Delay time.Duration
	mu    sync.Mutex
	// failOn is the step each node fails.
	failOn map[string]agentapi.Step
	steps  []string
}

// FailOn makes node fail step (no step fails for "").
func (a *Agents) FailOn(node string, step agentapi.Step) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failOn == nil {
		a.failOn = map[string]agentapi.Step{}
	}
	a.failOn[node] = step
}

// Start plays the agents until the test ends.
func (a *Agents) Start(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// Run plays the agents until ctx ends.
func (a *Agents) Run(ctx context.Context) {
	for ctx.Err() == nil {
		nodes, err := a.K8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range nodes.Items {
				a.reconcile(ctx, &nodes.Items[i])
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (a *Agents) reconcile(ctx context.Context, node *corev1.Node) {
	target, err := agentapi.ReadTarget(node)
	if err != nil {
		return
	}
	if s, ok := agentapi.ReadStatus(node); ok && (s.Reached(target.Version, target.Step) || s.Phase == agentapi.PhaseFailed) {
		return
	}
	status := agentapi.Status{Version: target.Version, Step: target.Step, Phase: agentapi.PhaseDone}
	a.mu.Lock()
	fail := a.failOn[node.Name] == target.Step
	a.mu.Unlock()
	if a.Delay > 0 {
		time.Sleep(a.Delay)
	}
	if fail {
		status.Phase, status.Message = agentapi.PhaseFailed, "kubeadm upgrade: exit status 1\nkubeadm's last output:\n[ERROR] etcd did not come up"
	} else if target.Step != agentapi.StepStage {
		// The new kubelet first. Patches, as the real agent and kubelet write: a write from a stale copy of
		// the Node must not undo what the upgrade changed meanwhile (its cordon).
		patch := fmt.Sprintf(`{"status":{"nodeInfo":{"kubeletVersion":%q}}}`, target.Version)
		if _, err := a.K8s.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			return
		}
	}
	value, _ := status.Encode()
	patch, _ := agentapi.AnnotationsPatch(map[string]*string{agentapi.StatusAnnotation: &value})
	// The step is recorded before the report is written, so that whoever reads the report finds it recorded.
	a.mu.Lock()
	a.steps = append(a.steps, node.Name+" "+string(target.Step))
	a.mu.Unlock()
	if _, err := a.K8s.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		a.mu.Lock()
		a.steps = a.steps[:len(a.steps)-1]
		a.mu.Unlock()
	}
}

// CarriedOut lists the steps carried out, as "<node> <step>", failed ones included.
func (a *Agents) CarriedOut() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.steps)
}

// Node is a Ready node whose kubelet runs kubelet.
func Node(name, kubelet string, controlPlane bool) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}, Annotations: map[string]string{}},
		Status: corev1.NodeStatus{
			NodeInfo:   corev1.NodeSystemInfo{KubeletVersion: kubelet},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	if controlPlane {
		n.Labels["node-role.kubernetes.io/control-plane"] = ""
	}
	return n
}

// ControlPlanePods are the Ready static pods (mirror pods, which a drain leaves alone) of a control plane
// whose Kubernetes components run version.
func ControlPlanePods(node, version string) []runtime.Object {
	var objs []runtime.Object
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: c + "-" + node, Namespace: metav1.NamespaceSystem,
				Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "hash"}},
			Spec:   corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: c, Image: "registry.k8s.io/" + c + ":" + version}}},
			Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		})
	}
	return objs
}

// JoinService is the JoinService's ConfigMap and DaemonSet as deployed for version.
func JoinService(version string) []runtime.Object {
	return []runtime.Object{
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: joinproto.ConfigMapName, Namespace: metav1.NamespaceSystem},
			Data:       map[string]string{joinproto.ComponentsKey: `{"components":[]}`, joinproto.KubernetesVersionKey: version},
		},
		&appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Name: joinproto.DaemonSetName, Namespace: metav1.NamespaceSystem},
			Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: joinproto.DaemonSetName, Args: []string{"--grpc-addr=:30090"},
			}}}}},
		},
	}
}
