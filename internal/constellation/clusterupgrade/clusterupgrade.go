// Package clusterupgrade moves an initialized cluster to another Kubernetes version through its upgrade
// controller: it plans the move from what the API server and the kubelets run (refusing a downgrade or a
// skipped minor version before anything changes), hands the target to the cluster's KubernetesUpgrade, and
// follows what the controller reports. The CLI's apply and the Terraform provider's cluster resource both
// call it; each says what to do next in its own words, from the errors' types.
package clusterupgrade

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// Plan is a move of the cluster from the Kubernetes version its API server runs to another one. From and To
// are equal when an interrupted upgrade left kubelets behind.
type Plan struct {
	From, To string
}

var (
	// ErrNotAnswering is returned by PlanKubernetes when the API server does not answer: the versions cannot
	// be compared (the control planes may be stopped).
	ErrNotAnswering = errors.New("the cluster's API server did not answer")
	// ErrNoController is returned by Submit for a cluster without the upgrade controller (created by an
	// earlier release): only kubeupgrade's passes, run by the caller, can move it.
	ErrNoController = errors.New("the cluster has no upgrade controller")
)

// RefusedError is a target the cluster may not move to (a downgrade, a skipped minor version). From is what
// its API server runs; Part, if set, names the part that runs an older version.
type RefusedError struct {
	From, Part string
	Err        error
}

func (e *RefusedError) Error() string {
	if e.Part == "" {
		return e.Err.Error()
	}
	return e.Part + ": " + e.Err.Error()
}

func (e *RefusedError) Unwrap() error { return e.Err }

// PlanKubernetes compares the target version to with what the cluster's API server and kubelets run. It
// returns nil when every part runs to.
func PlanKubernetes(ctx context.Context, k8s kubernetes.Interface, to string) (*Plan, error) {
	sv, err := k8s.Discovery().ServerVersion()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotAnswering, err)
	}
	nodes, err := k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the nodes: %w", err)
	}
	p := &Plan{From: sv.GitVersion, To: to}
	pending := p.From != to
	if err := upgrade.CheckKubernetes(p.From, to); err != nil {
		return nil, &RefusedError{From: p.From, Err: err}
	}
	for _, n := range nodes.Items {
		kubelet := n.Status.NodeInfo.KubeletVersion
		if kubelet == to {
			continue
		}
		pending = true
		if err := upgrade.CheckKubernetes(kubelet, to); err != nil {
			return nil, &RefusedError{From: p.From, Part: "the kubelet of " + n.Name, Err: err}
		}
	}
	if !pending {
		return nil, nil
	}
	return p, nil
}

// NotBuiltError says that this machine did not build the components of a Kubernetes version, so no node
// could install them, and how to build them; the caller adds how to go on.
func NotBuiltError(version string) error {
	return fmt.Errorf("the components of Kubernetes %s are not built on this machine, so its nodes could not install them: "+
		"build them with 'bazel/kubernetes/build.sh --version %s all' (from the source tree)", version, version)
}

// KubernetesOnly returns the components of the Kubernetes version among comps: an upgrade instruction
// carries only those (a node's agent refuses what its image does not pin for the version); joining nodes
// get all of comps.
func KubernetesOnly(comps []*components.Component, version string) ([]*components.Component, error) {
	set, err := versions.Components(version)
	if err != nil {
		return nil, err
	}
	var out []*components.Component
	for _, c := range comps {
		if _, ok := set.Component(c.GetName()); ok {
			out = append(out, c)
		}
	}
	return out, nil
}

// Submit writes spec into the cluster's KubernetesUpgrade, which its upgrade controller carries out whether
// or not the caller stays. If the controller reported a failed step of this version, it also asks the nodes
// to retry. A write that crossed the controller's is done again.
func Submit(ctx context.Context, cr client.Client, spec kubeupgrade.Spec) error {
	want, err := v1alpha1.EncodeSpec(spec)
	if err != nil {
		return err
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var u v1alpha1.KubernetesUpgrade
		err := cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u)
		if apierrors.IsNotFound(err) {
			u = v1alpha1.KubernetesUpgrade{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name}, Spec: want}
			return cr.Create(ctx, &u)
		}
		if err != nil {
			return err
		}
		next := want
		next.Retry = u.Spec.Retry
		if u.Spec.Version == want.Version && u.Status.ObservedGeneration == u.Generation && u.Status.Phase == string(kubeupgrade.PhaseFailed) {
			next.Retry = max(u.Spec.Retry, u.Status.Retried) + 1
		}
		if next == u.Spec {
			return nil
		}
		u.Spec = next
		return cr.Update(ctx, &u)
	})
	if meta.IsNoMatchError(err) {
		return fmt.Errorf("%w: %w", ErrNoController, err)
	}
	return err
}

// StepFailedError is a node's failed step, as the controller reported it; a Submit of the same version asks
// it to retry.
type StepFailedError struct {
	Node, Step, Reason string
}

func (e *StepFailedError) Error() string {
	return fmt.Sprintf("%s failed %s: %s", e.Node, e.Step, e.Reason)
}

// RefusedByControllerError is a target the controller refused before any node moved.
type RefusedByControllerError struct {
	Version, Reason string
}

func (e *RefusedByControllerError) Error() string {
	return fmt.Sprintf("the upgrade controller refused the upgrade to %s: %s", e.Version, e.Reason)
}

// StalledError is an upgrade that did not move for Options.StepWait; the controller goes on regardless.
type StalledError struct {
	Version, Waiting string
	For              time.Duration
}

func (e *StalledError) Error() string {
	return fmt.Sprintf("the Kubernetes upgrade to %s did not move for %s, waiting for %s", e.Version, e.For, e.Waiting)
}

// Options are Follow's and WaitNodesJoined's timing.
type Options struct {
	// Poll is how often the report (or the node list) is read; StepWait how long the report may stay the same
	// (one node's kubeadm step moves etcd and every static pod one after the other); JoinWait how long the
	// nodes may take to be Ready members before an upgrade starts (a worker joins after its control plane).
	Poll, StepWait, JoinWait time.Duration
}

// DefaultOptions suit a real cluster.
var DefaultOptions = Options{Poll: 2 * time.Second, StepWait: 15 * time.Minute, JoinWait: 5 * time.Minute}

// NotJoinedError names the nodes that were no Ready nodes of the cluster when WaitNodesJoined gave up.
type NotJoinedError struct {
	Nodes []string
	For   time.Duration
}

func (e *NotJoinedError) Error() string {
	return fmt.Sprintf("%s did not become a Ready node of the cluster within %s; an upgrade now would leave it behind",
		strings.Join(e.Nodes, ", "), e.For)
}

// WaitNodesJoined waits until every node of names is a Ready node of the cluster, for at most o.JoinWait
// (then *NotJoinedError), reading the node list every o.Poll. waiting is called once, with the missing nodes,
// if there are any at the first look. A node that joins while an upgrade runs misses its staging, and
// kubeadm's preflight Job may land on it before it has the new version's images (`upgrade apply` then fails);
// nodes join on their own after init, so a cluster just created may still lack its workers.
func WaitNodesJoined(ctx context.Context, k8s kubernetes.Interface, names []string, o Options, waiting func(missing []string)) error {
	var missing []string
	told := false
	err := wait.PollUntilContextTimeout(ctx, o.Poll, o.JoinWait, true, func(ctx context.Context) (bool, error) {
		var err error
		if missing, err = notReadyNodes(ctx, k8s, names); err != nil {
			return false, fmt.Errorf("listing the cluster's nodes: %w", err)
		}
		if len(missing) > 0 && !told {
			waiting(missing)
			told = true
		}
		return len(missing) == 0, nil
	})
	if err != nil && len(missing) > 0 && ctx.Err() == nil {
		return &NotJoinedError{Nodes: missing, For: o.JoinWait}
	}
	return err
}

// notReadyNodes returns the names that are no Ready node of the cluster, in their order.
func notReadyNodes(ctx context.Context, k8s kubernetes.Interface, names []string) ([]string, error) {
	list, err := k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, name := range names {
		if !slices.ContainsFunc(list.Items, func(n corev1.Node) bool { return n.Name == name && kubeupgrade.NodeReady(&n) }) {
			missing = append(missing, name)
		}
	}
	return missing, nil
}

// Follow reads what the upgrade controller reports about the upgrade to version until it is done (nil), a
// step failed (*StepFailedError), the controller refused it (*RefusedByControllerError) or it did not move
// for o.StepWait (*StalledError). report receives each report that is about this target, with the one before.
func Follow(ctx context.Context, cr client.Client, version string, o Options, report func(last, prog kubeupgrade.Progress)) error {
	var last kubeupgrade.Progress
	moved := time.Now()
	for {
		var u v1alpha1.KubernetesUpgrade
		err := cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		// The API server restarts during the control plane's step: an error here is waited out. A report
		// counts once it is about this spec, and the retry it asks for.
		if err == nil && u.Status.ObservedGeneration == u.Generation && u.Status.Retried >= u.Spec.Retry && u.Spec.Version == version {
			prog := u.Status.Progress()
			report(last, prog)
			switch prog.Phase {
			case kubeupgrade.PhaseDone:
				return nil
			case kubeupgrade.PhaseFailed:
				if prog.Node == "" {
					return &RefusedByControllerError{Version: version, Reason: u.Status.Error}
				}
				return &StepFailedError{Node: prog.Node, Step: kubeupgrade.DescribeStep(prog.Step, version), Reason: prog.Waiting}
			}
			if Progressed(last, prog) {
				moved = time.Now()
			}
			last = prog
		}
		if time.Since(moved) > o.StepWait {
			waiting := last.Waiting
			if waiting == "" {
				waiting = "the upgrade controller to take the target up (is its pod running? kubectl -n kube-system get pods -l app.kubernetes.io/name=operator)"
			}
			return &StalledError{Version: version, Waiting: waiting, For: o.StepWait}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.Poll):
		}
	}
}

// Progressed tells whether the upgrade moved from one report to the next: another phase, node, awaited
// thing, or action.
func Progressed(last, prog kubeupgrade.Progress) bool {
	return prog.Phase != last.Phase || prog.Node != last.Node || prog.Waiting != last.Waiting || !slices.Equal(prog.Did, last.Did)
}

// clientTimeout bounds one request to the API server.
const clientTimeout = 30 * time.Second

// NewKubeClient returns a client of the cluster of an admin kubeconfig.
func NewKubeClient(kubeconfig []byte) (kubernetes.Interface, error) {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = clientTimeout
	return kubernetes.NewForConfig(cfg)
}

// NewUpgradeClient returns a client of the cluster's KubernetesUpgrade (the upgrade controller's resource),
// for Submit and Follow.
func NewUpgradeClient(kubeconfig []byte) (client.Client, error) {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = clientTimeout
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}
