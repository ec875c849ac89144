// Package kubeupgrade moves a running cluster to a new Kubernetes version through the nodes' agents
// (bootstrapper/agentapi), one reconcile pass at a time: each call of Reconciler.Reconcile reads the cluster,
// takes the next action the upgrade needs and says what it now waits for. Nothing is kept between passes:
// where the upgrade stands is read off the Nodes (their kubelet version, the agents' reports, a cordon the
// upgrade set), so whoever runs the passes (the upgrade controller in operator/, or the CLI on a cluster
// without it) may stop at any moment, and the next pass, by the same caller or another, continues.
//
// The order (see agentapi for what a node does at each step):
//
//  1. Every node that has not moved yet stages the version's components.
//  2. The first control plane (control planes sort first, by name) is cordoned, its pods are evicted, then
//     it runs `kubeadm upgrade apply`; once its kubelet and control plane run the version and are Ready, the
//     JoinService hands joining nodes the new version, and the node is uncordoned (after the evicted pods
//     terminated: the step does not wait for them, see Evict).
//  3. Each other node in turn is cordoned, its pods are evicted, it runs `kubeadm upgrade node`, and is
//     uncordoned once its new kubelet is Ready and the evicted pods are gone (control planes also wait for
//     their static pods).
//
// A node reporting a failed step stops the upgrade (PhaseFailed, with the node's reason); ClearFailures asks
// the nodes to try again.
package kubeupgrade

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/drain"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// CordonAnnotation marks a node the upgrade cordoned (its value is the version): only such a node is
// uncordoned again, so a node an administrator cordoned stays cordoned.
const CordonAnnotation = "constellation.io/kubernetes-upgrade-cordoned"

// controlPlaneLabel is the label kubeadm puts on control planes; a node cannot set it on itself (the
// NodeRestriction admission plugin refuses node-role labels from kubelets).
const controlPlaneLabel = "node-role.kubernetes.io/control-plane"

// Spec is what the cluster moves to.
type Spec struct {
	// Version is the Kubernetes version.
	Version string
	// Components are the version's components, which the nodes verify and install.
	Components []*components.Component
	// JoinComponents are what the JoinService hands joining nodes once the control plane runs Version.
	JoinComponents []*components.Component
}

// Phase is where an upgrade stands.
type Phase string

// Phases of an upgrade.
const (
	// PhaseStaging: nodes install the version's components.
	PhaseStaging Phase = "Staging"
	// PhaseUpgrading: one node after the other runs its kubeadm step.
	PhaseUpgrading Phase = "Upgrading"
	// PhaseDone: every node runs the version, Ready and uncordoned, and the JoinService hands it out.
	PhaseDone Phase = "Done"
	// PhaseFailed: a node reported that its step failed; nothing moves until ClearFailures.
	PhaseFailed Phase = "Failed"
)

// Progress is what a pass found and did.
type Progress struct {
	Phase Phase
	// Staging counts the nodes that still had to stage (PhaseStaging).
	Staging int
	// Node is the node the upgrade is at (PhaseUpgrading, PhaseFailed), Index its place (from 1) of Total,
	// and Step what it runs.
	Node         string
	Index, Total int
	Step         agentapi.Step
	// Waiting says what the pass waits for; for PhaseFailed, the node's reason.
	Waiting string
	// Reports are what the nodes that work on a step report, as "<node>: <message>".
	Reports []string
	// Did lists what the pass changed, as sentences.
	Did []string
	// Finished are the nodes this pass found moved, Ready and uncordoned, in order.
	Finished []string
}

// DefaultDrainTimeout bounds the eviction of one node's pods.
const DefaultDrainTimeout = 5 * time.Minute

// Reconciler runs the passes.
type Reconciler struct {
	Client kubernetes.Interface
	// DrainTimeout bounds the eviction of one node's pods; default DefaultDrainTimeout.
	DrainTimeout time.Duration
}

// Reconcile runs one pass for spec. An error is one of reading or changing the cluster (the API server
// restarts during the control plane's step): the next pass tries again.
func (r *Reconciler) Reconcile(ctx context.Context, spec Spec) (Progress, error) {
	list, err := r.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return Progress{}, fmt.Errorf("listing the nodes: %w", err)
	}
	nodes := Ordered(list.Items)
	if len(nodes) == 0 || !IsControlPlane(&nodes[0]) {
		return Progress{}, errors.New("the cluster has no control plane node")
	}
	prog := Progress{Total: len(nodes)}
	moved := make([]bool, len(nodes))
	for i := range nodes {
		if moved[i], err = r.moved(ctx, &nodes[i], spec.Version, stepOf(i)); err != nil {
			return prog, err
		}
	}

	// 1. Staging, on every node that has not moved.
	for i := range nodes {
		n := &nodes[i]
		if moved[i] || staged(n, spec.Version) {
			continue
		}
		prog.Staging++
		if s, ok := agentapi.ReadStatus(n); ok && s.Phase == agentapi.PhaseFailed && s.Version == spec.Version {
			return failed(prog, n.Name, i, agentapi.StepStage, s), nil
		}
		if t, err := agentapi.ReadTarget(n); err == nil && t.Version == spec.Version {
			// Given; the node works on it.
			prog.Reports = appendReport(prog.Reports, n, spec.Version)
			continue
		}
		if err := r.instruct(ctx, n.Name, agentapi.Target{Version: spec.Version, Step: agentapi.StepStage, Components: spec.Components}); err != nil {
			return prog, err
		}
	}
	if prog.Staging > 0 {
		prog.Phase, prog.Waiting = PhaseStaging, fmt.Sprintf("%d node(s) to verify and install the components of %s", prog.Staging, spec.Version)
		return prog, nil
	}

	// 2. and 3. One node after the other.
	prog.Phase = PhaseUpgrading
	for i := range nodes {
		n := &nodes[i]
		step := stepOf(i)
		prog.Node, prog.Index, prog.Step = n.Name, i+1, step
		if !moved[i] {
			return r.advance(ctx, prog, n, spec)
		}
		if n.Status.NodeInfo.KubeletVersion != spec.Version || !NodeReady(n) {
			prog.Waiting = fmt.Sprintf("the kubelet of %s on %s to be Ready (it reports %s)", spec.Version, n.Name, n.Status.NodeInfo.KubeletVersion)
			return prog, nil
		}
		if IsControlPlane(n) {
			if waiting, err := r.controlPlaneWaiting(ctx, n.Name, spec.Version); err != nil || waiting != "" {
				prog.Waiting = waiting
				return prog, err
			}
		}
		if step == agentapi.StepApply {
			changed, err := UpdateJoinService(ctx, r.Client, spec.Version, spec.JoinComponents)
			if err != nil {
				return prog, fmt.Errorf("the control plane runs Kubernetes %s, but updating the JoinService failed: %w", spec.Version, err)
			}
			if changed {
				prog.Did = append(prog.Did, "the JoinService hands joining nodes Kubernetes "+spec.Version)
			}
		}
		if _, ours := n.Annotations[CordonAnnotation]; ours {
			left, err := Evicting(ctx, r.Client, n.Name)
			if err != nil {
				return prog, fmt.Errorf("listing the pods evicted from %s: %w", n.Name, err)
			}
			if len(left) > 0 {
				prog.Waiting = fmt.Sprintf("the pods evicted from %s to terminate (%s)", n.Name, strings.Join(left, ", "))
				return prog, nil
			}
			if err := r.uncordon(ctx, n); err != nil {
				return prog, err
			}
			prog.Did = append(prog.Did, "uncordoned "+n.Name)
		}
		prog.Finished = append(prog.Finished, n.Name)
	}
	prog.Phase, prog.Node, prog.Index, prog.Step, prog.Waiting = PhaseDone, "", 0, "", ""
	return prog, nil
}

// advance takes the next action for a node that has not moved: drain it and give it its step, or wait for
// the step it was given.
func (r *Reconciler) advance(ctx context.Context, prog Progress, n *corev1.Node, spec Spec) (Progress, error) {
	status, hasStatus := agentapi.ReadStatus(n)
	if t, err := agentapi.ReadTarget(n); err == nil && t.Version == spec.Version && t.Step == prog.Step {
		if hasStatus && status.Phase == agentapi.PhaseFailed && status.Version == spec.Version {
			return failed(prog, n.Name, prog.Index-1, prog.Step, status), nil
		}
		prog.Waiting = n.Name + ": " + DescribeStep(prog.Step, spec.Version)
		prog.Reports = appendReport(prog.Reports, n, spec.Version)
		return prog, nil
	}
	// Cordoning and evicting are two passes, so that a caller can say which node the upgrade is at before
	// the eviction, which may take minutes.
	if !n.Spec.Unschedulable {
		if err := r.cordon(ctx, n, spec.Version); err != nil {
			return prog, fmt.Errorf("cordoning %s before its upgrade: %w", n.Name, err)
		}
		prog.Did = append(prog.Did, "cordoned "+n.Name)
		prog.Waiting = "the eviction of the pods on " + n.Name
		return prog, nil
	}
	timeout := r.DrainTimeout
	if timeout == 0 {
		timeout = DefaultDrainTimeout
	}
	// The step does not wait for the evicted pods to terminate, the uncordon does (see Evict).
	if err := Evict(ctx, r.Client, n.Name, timeout); err != nil {
		return prog, fmt.Errorf("draining %s before its upgrade: %w", n.Name, err)
	}
	prog.Did = append(prog.Did, "evicted the pods on "+n.Name)
	if err := r.instruct(ctx, n.Name, agentapi.Target{Version: spec.Version, Step: prog.Step, Components: spec.Components}); err != nil {
		return prog, err
	}
	prog.Did = append(prog.Did, fmt.Sprintf("asked %s for %s", n.Name, DescribeStep(prog.Step, spec.Version)))
	prog.Waiting = n.Name + ": " + DescribeStep(prog.Step, spec.Version)
	return prog, nil
}

// appendReport appends what the node reports working on for version, if anything.
func appendReport(reports []string, n *corev1.Node, version string) []string {
	if s, ok := agentapi.ReadStatus(n); ok && s.Phase == agentapi.PhaseWorking && s.Version == version && s.Message != "" {
		return append(reports, n.Name+": "+s.Message)
	}
	return reports
}

func failed(prog Progress, node string, index int, step agentapi.Step, s agentapi.Status) Progress {
	prog.Phase, prog.Node, prog.Index, prog.Step, prog.Waiting = PhaseFailed, node, index+1, step, s.Message
	return prog
}

// stepOf is the kubeadm step of the node at index i of Ordered.
func stepOf(i int) agentapi.Step {
	if i == 0 {
		return agentapi.StepApply
	}
	return agentapi.StepNode
}

// moved tells whether the node carried its step for version out: its agent reports it, or its kubelet runs
// the version (a node that joined after the control plane moved) and, for the first control plane, so does
// its control plane.
func (r *Reconciler) moved(ctx context.Context, n *corev1.Node, version string, step agentapi.Step) (bool, error) {
	if s, ok := agentapi.ReadStatus(n); ok && s.Reached(version, step) {
		return true, nil
	}
	if n.Status.NodeInfo.KubeletVersion != version {
		return false, nil
	}
	if step != agentapi.StepApply {
		return true, nil
	}
	waiting, err := r.controlPlaneWaiting(ctx, n.Name, version)
	return err == nil && waiting == "", err
}

// staged tells whether the node installed the version's components, or was given a later step of it (which
// stages first).
func staged(n *corev1.Node, version string) bool {
	if s, ok := agentapi.ReadStatus(n); ok && s.Reached(version, agentapi.StepStage) {
		return true
	}
	t, err := agentapi.ReadTarget(n)
	return err == nil && t.Version == version && t.Step != agentapi.StepStage
}

// Ordered sorts nodes as an upgrade visits them: control planes first, each group by name.
func Ordered(nodes []corev1.Node) []corev1.Node {
	out := slices.Clone(nodes)
	slices.SortStableFunc(out, func(a, b corev1.Node) int {
		if ca, cb := IsControlPlane(&a), IsControlPlane(&b); ca != cb {
			if ca {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// IsControlPlane tells whether kubeadm made the node a control plane.
func IsControlPlane(n *corev1.Node) bool {
	_, ok := n.Labels[controlPlaneLabel]
	return ok
}

// instruct sets a node's target annotation and removes its report of an earlier one (a failed report would
// keep the agent from acting).
func (r *Reconciler) instruct(ctx context.Context, name string, t agentapi.Target) error {
	value, err := t.Encode()
	if err != nil {
		return err
	}
	patch, err := agentapi.AnnotationsPatch(map[string]*string{agentapi.TargetAnnotation: &value, agentapi.StatusAnnotation: nil})
	if err != nil {
		return err
	}
	if _, err := r.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("giving %s its upgrade instruction: %w", name, err)
	}
	return nil
}

// ClearFailures removes every failed report of version, which asks those nodes to try their step again.
// It returns the nodes it cleared.
func ClearFailures(ctx context.Context, k8s kubernetes.Interface, version string) ([]string, error) {
	list, err := k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the nodes: %w", err)
	}
	patch, err := agentapi.AnnotationsPatch(map[string]*string{agentapi.StatusAnnotation: nil})
	if err != nil {
		return nil, err
	}
	var cleared []string
	for i := range list.Items {
		s, ok := agentapi.ReadStatus(&list.Items[i])
		if !ok || s.Phase != agentapi.PhaseFailed || s.Version != version {
			continue
		}
		if _, err := k8s.CoreV1().Nodes().Patch(ctx, list.Items[i].Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return cleared, fmt.Errorf("clearing the failed report of %s: %w", list.Items[i].Name, err)
		}
		cleared = append(cleared, list.Items[i].Name)
	}
	return cleared, nil
}

// cordon marks the node as cordoned by the upgrade, then cordons it.
func (r *Reconciler) cordon(ctx context.Context, n *corev1.Node, version string) error {
	patch, err := agentapi.AnnotationsPatch(map[string]*string{CordonAnnotation: &version})
	if err != nil {
		return err
	}
	if _, err := r.Client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return err
	}
	return Cordon(ctx, r.Client, n.Name, true)
}

func (r *Reconciler) uncordon(ctx context.Context, n *corev1.Node) error {
	if err := Cordon(ctx, r.Client, n.Name, false); err != nil {
		return fmt.Errorf("uncordoning %s: %w", n.Name, err)
	}
	patch, err := agentapi.AnnotationsPatch(map[string]*string{CordonAnnotation: nil})
	if err != nil {
		return err
	}
	_, err = r.Client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// evictRetry is how often an eviction that a PodDisruptionBudget refused is asked again (kubectl drain waits
// 5 s; a replica that became Ready elsewhere is what the budget waits for, and a retry is one small request).
var evictRetry = time.Second

// drainHelper is kubectl drain's configuration for the upgrade's drains: DaemonSet pods stay (they run on
// every node anyway), emptyDir data goes with its pod, each pod gets its own grace period.
func drainHelper(ctx context.Context, k8s kubernetes.Interface, timeout time.Duration, errOut io.Writer) *drain.Helper {
	return &drain.Helper{
		Ctx: ctx, Client: k8s, IgnoreAllDaemonSets: true, DeleteEmptyDirData: true, GracePeriodSeconds: -1,
		Timeout: timeout, EvictErrorRetryDelay: evictRetry, Out: io.Discard, ErrOut: errOut,
	}
}

// Drain cordons a node, evicts its pods and waits until they terminated, within timeout.
func Drain(ctx context.Context, k8s kubernetes.Interface, name string, timeout time.Duration) error {
	if err := Cordon(ctx, k8s, name, true); err != nil {
		return err
	}
	var out strings.Builder
	if err := drain.RunNodeDrain(drainHelper(ctx, k8s, timeout, &out), name); err != nil {
		// The helper writes a line per refused eviction; the last says why it still waited.
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		return fmt.Errorf("%w %s", err, lines[len(lines)-1])
	}
	return nil
}

// Evict cordons a node and evicts the pods Drain would, through the Eviction API (so PodDisruptionBudgets
// hold), asking again for those a budget refuses until timeout; unlike Drain, it returns once every eviction
// was accepted, without waiting for the pods to terminate (Evicting lists those still there).
//
// Why: the kubelet of a node that follows the control plane in an upgrade sees the evictions only after the
// API server came back from the control plane's step and its watch's backoff (up to a minute) ran out, so
// waiting for the pods to terminate before the node's own step stalled the upgrade; the node's step replaces
// its kubelet, and the new one terminates the evicted pods (each within its grace period) as soon as it
// starts.
func Evict(ctx context.Context, k8s kubernetes.Interface, name string, timeout time.Duration) error {
	if err := Cordon(ctx, k8s, name, true); err != nil {
		return err
	}
	h := drainHelper(ctx, k8s, timeout, io.Discard)
	pods, err := drainable(h, name)
	if err != nil {
		return err
	}
	var pending []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp == nil {
			pending = append(pending, p)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	gv, err := drain.CheckEvictionSupport(k8s)
	if err != nil {
		return fmt.Errorf("looking for the Eviction API: %w", err)
	}
	if gv.Empty() {
		return errors.New("the API server offers no Eviction API, which honours PodDisruptionBudgets")
	}
	var refused error
	err = wait.PollUntilContextTimeout(ctx, evictRetry, timeout, true, func(context.Context) (bool, error) {
		var next []corev1.Pod
		for _, p := range pending {
			err := h.EvictPod(p, gv)
			switch {
			case err == nil, apierrors.IsNotFound(err):
			case apierrors.IsTooManyRequests(err):
				// A PodDisruptionBudget that allows no disruption now.
				next, refused = append(next, p), err
			default:
				return false, fmt.Errorf("evicting %s/%s: %w", p.Namespace, p.Name, err)
			}
		}
		pending = next
		return len(pending) == 0, nil
	})
	if wait.Interrupted(err) && ctx.Err() == nil {
		return fmt.Errorf("%d pod(s) on %s were not evicted within %s (check their PodDisruptionBudgets): %w", len(pending), name, timeout, refused)
	}
	return err
}

// drainable lists the pods on a node that a drain evicts (kubectl's filters: DaemonSet and mirror pods stay),
// or why the node cannot be drained (a pod no controller would recreate).
func drainable(h *drain.Helper, name string) ([]corev1.Pod, error) {
	list, errs := h.GetPodsForDeletion(name)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return list.Pods(), nil
}

// Evicting lists, as namespace/name, the pods of the kinds Evict evicts that are still terminating on a node.
// A pod placed there after the eviction (one that tolerates the cordon) is not waited for.
func Evicting(ctx context.Context, k8s kubernetes.Interface, name string) ([]string, error) {
	pods, err := drainable(drainHelper(ctx, k8s, 0, io.Discard), name)
	if err != nil {
		return nil, err
	}
	var left []string
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			left = append(left, p.Namespace+"/"+p.Name)
		}
	}
	return left, nil
}

// Cordon marks a node (un)schedulable.
func Cordon(ctx context.Context, k8s kubernetes.Interface, name string, unschedulable bool) error {
	node, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	h := &drain.Helper{Ctx: ctx, Client: k8s}
	return drain.RunCordonOrUncordon(h, node, unschedulable)
}

// DescribeStep names what a node does for step.
func DescribeStep(step agentapi.Step, version string) string {
	if step == agentapi.StepStage {
		return "installing the components of " + version
	}
	return "'kubeadm upgrade " + string(step) + "' to " + version
}

// ControlPlaneComponents are kubeadm's static pods on a control plane.
var ControlPlaneComponents = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// controlPlaneWaiting says what of the control plane on node is not Ready at version yet ("" when all is).
func (r *Reconciler) controlPlaneWaiting(ctx context.Context, node, version string) (string, error) {
	for _, c := range ControlPlaneComponents {
		pod, err := r.Client.CoreV1().Pods(metav1.NamespaceSystem).Get(ctx, c+"-"+node, metav1.GetOptions{})
		switch {
		case err != nil:
			return "", fmt.Errorf("reading the %s pod of %s: %w", c, node, err)
		case c != "etcd" && !slices.ContainsFunc(pod.Spec.Containers, func(ct corev1.Container) bool {
			return strings.HasSuffix(ct.Image, ":"+version)
		}):
			return fmt.Sprintf("%s on %s to run %s", c, node, version), nil
		case !podReady(pod):
			return fmt.Sprintf("%s on %s to be Ready", c, node), nil
		}
	}
	return "", nil
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// NodeReady tells whether the node's Ready condition is true.
func NodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// UpdateJoinService makes the JoinService hand joining nodes version and comps: it writes both into the join
// config and restarts the JoinService's pods, which read it when they start. changed tells whether anything
// had to change.
func UpdateJoinService(ctx context.Context, k8s kubernetes.Interface, version string, comps []*components.Component) (changed bool, err error) {
	data, err := components.MarshalList(comps)
	if err != nil {
		return false, err
	}
	cms := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	cm, err := cms.Get(ctx, joinproto.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	if cm.Data[joinproto.ComponentsKey] != string(data) || cm.Data[joinproto.KubernetesVersionKey] != version {
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[joinproto.ComponentsKey], cm.Data[joinproto.KubernetesVersionKey] = string(data), version
		if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return false, err
		}
		changed = true
	}
	// The pods read the config when they start: a digest of it on the pod template restarts them once per
	// change (and a pass that runs again after an interruption finds it set).
	digest := sha256.Sum256([]byte(version + "\n" + string(data)))
	want := hex.EncodeToString(digest[:])
	ds, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, joinproto.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		return changed, err
	}
	if ds.Spec.Template.Annotations[joinproto.RestartAnnotation] == want {
		return changed, nil
	}
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{joinproto.RestartAnnotation: want}},
	}}})
	if err != nil {
		return changed, err
	}
	if _, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Patch(ctx, joinproto.DaemonSetName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return changed, err
	}
	return true, nil
}
