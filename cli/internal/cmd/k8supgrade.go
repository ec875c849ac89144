package cmd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// kubernetesStepWait bounds one node's kubeadm step (`kubeadm upgrade apply` moves etcd and every static pod
// one after the other, waiting for each) and a node's staging.
var kubernetesStepWait = 15 * time.Minute

// kubernetesPoll is how often an upgrade or a roll-out looks at a node again.
var kubernetesPoll = 2 * time.Second

// kubernetesDrainRetry bounds how long a drain that fails is tried again.
var kubernetesDrainRetry = 3 * time.Minute

// kubernetesUpgrade moves an initialized cluster from one Kubernetes version to the next.
type kubernetesUpgrade struct {
	from, to string
}

// planKubernetes compares the configuration's Kubernetes version with what the cluster's API server and
// kubelets run. It returns nil when every part runs the configured version, and refuses a downgrade, a
// skipped minor version and a version whose components this machine cannot serve, before anything changed.
func (e *env) planKubernetes(ctx context.Context, cfg *config.Config) (*kubernetesUpgrade, error) {
	to, err := versions.ResolveKubernetes(cfg.KubernetesVersion)
	if err != nil {
		return nil, err
	}
	k8s, err := e.adminClient()
	if err != nil {
		return nil, fmt.Errorf("reading the admin kubeconfig: %w", err)
	}
	// A cluster that does not answer (its control planes stopped) must still get its infrastructure applied
	// again, which restarts them: the versions are compared on the next run.
	sv, err := k8s.Discovery().ServerVersion()
	if err != nil {
		fmt.Fprintf(e.errOut, "Notice: the cluster did not answer (%v), so its Kubernetes version is not compared with "+
			"kubernetesVersion %s in this run; re-run 'constellation apply' once it answers.\n", err, to)
		return nil, nil
	}
	nodes, err := k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the nodes: %w", err)
	}
	u := &kubernetesUpgrade{from: sv.GitVersion, to: to}
	pending := u.from != to
	fix := fmt.Sprintf("; set kubernetesVersion in %s back to %s", e.path(config.FileName), u.from)
	if err := upgrade.CheckKubernetes(u.from, to); err != nil {
		return nil, fmt.Errorf("kubernetesVersion %s: %w%s", to, err, fix)
	}
	for _, n := range nodes.Items {
		kubelet := n.Status.NodeInfo.KubeletVersion
		if kubelet == to {
			continue
		}
		pending = true
		if err := upgrade.CheckKubernetes(kubelet, to); err != nil {
			return nil, fmt.Errorf("kubernetesVersion %s: the kubelet of %s: %w%s", to, n.Name, err, fix)
		}
	}
	if !pending {
		return nil, nil
	}
	if cfg.GetProvider() != cloudprovider.Local {
		return nil, fmt.Errorf("kubernetesVersion %s differs from the cluster's %s, but upgrading Kubernetes on %s clusters "+
			"is not implemented yet (only the local provider serves components to its nodes)%s", to, u.from, cfg.GetProvider(), fix)
	}
	if !versions.Built(to) {
		return nil, fmt.Errorf("the components of Kubernetes %s are not built on this machine, so its nodes could not "+
			"install them: build them with 'bazel/kubernetes/build.sh --version %s all' (from the source tree), then "+
			"re-run 'constellation apply'", to, to)
	}
	return u, nil
}

// upgradeKubernetes moves the cluster to u.to with the nodes' agents (bootstrapper/agentapi): every node
// stages the new components first; then the first control plane runs `kubeadm upgrade apply`, after which the
// JoinService hands out the new version; then every other node, control planes first, runs `kubeadm upgrade
// node`. Each node is cordoned and drained before its step and uncordoned once its new kubelet is Ready. The
// nodes carry their steps out on their own, so an interrupted run loses nothing: a re-run finds the steps
// done and continues.
func (e *env) upgradeKubernetes(ctx context.Context, cfg *config.Config, st *state.State, u *kubernetesUpgrade, p *progress) (err error) {
	start := time.Now()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("the Kubernetes upgrade was interrupted (%w); the nodes finish the step they were given: "+
				"re-run 'constellation apply' to continue", err)
		}
	}()
	k8s, err := e.adminClient()
	if err != nil {
		return err
	}
	infra, err := e.infra(p)
	if err != nil {
		return err
	}
	// Joining nodes get the version's components and the services' images; a node that upgrades has the
	// services' images already, and its agent accepts only the version's pinned components.
	joinComps, err := e.components(ctx, cfg, infra)
	if err != nil {
		return err
	}
	comps, err := kubernetesOnly(joinComps, u.to)
	if err != nil {
		return err
	}
	nodes, err := selectNodes(st, nil)
	if err != nil {
		return err
	}
	if err := e.rollKubernetes(ctx, k8s, nodes, u, comps, joinComps, p); err != nil {
		return err
	}
	took := time.Since(start).Round(100 * time.Millisecond)
	if u.from == u.to {
		fmt.Fprintf(e.out, "The cluster runs Kubernetes %s: every node moved (this run finished an interrupted upgrade in %s).\n", u.to, took)
	} else {
		fmt.Fprintf(e.out, "The cluster runs Kubernetes %s (upgraded from %s in %s).\n", u.to, u.from, took)
	}
	return nil
}

// rollKubernetes gives the nodes their steps, in order, and waits for each.
// comps are what the nodes install, joinComps what the JoinService hands joining nodes afterwards.
func (e *env) rollKubernetes(ctx context.Context, k8s kubernetes.Interface, nodes []target, u *kubernetesUpgrade,
	comps, joinComps []*components.Component, p *progress,
) error {
	// Control planes first, each group by name: the first control plane runs `kubeadm upgrade apply`, and a
	// re-run picks the same one.
	slices.SortStableFunc(nodes, func(a, b target) int {
		if r := boolRank(a.role != config.RoleControlPlane) - boolRank(b.role != config.RoleControlPlane); r != 0 {
			return r
		}
		return strings.Compare(a.name, b.name)
	})
	if len(nodes) == 0 || nodes[0].role != config.RoleControlPlane {
		return errors.New("the cluster's state lists no control plane")
	}

	p.Step("Kubernetes %s: verifying and installing its components on %d node(s)", u.to, len(nodes))
	var staging []string
	for _, t := range nodes {
		given, err := instruct(ctx, k8s, t.name, agentapi.Target{Version: u.to, Step: agentapi.StepStage, Components: comps})
		if err != nil {
			return err
		}
		if given {
			staging = append(staging, t.name)
		}
	}
	for _, name := range staging {
		if err := waitForStep(ctx, k8s, name, u.to, agentapi.StepStage, p); err != nil {
			return err
		}
	}
	p.Done()

	for i, t := range nodes {
		step := agentapi.StepNode
		if i == 0 {
			step = agentapi.StepApply
		}
		node, err := k8s.CoreV1().Nodes().Get(ctx, t.name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading the node %s: %w", t.name, err)
		}
		status, _ := agentapi.ReadStatus(node)
		p.Step("Node %s (%d of %d): kubeadm upgrade %s to %s", t.name, i+1, len(nodes), step, u.to)
		if !status.Reached(u.to, step) || node.Status.NodeInfo.KubeletVersion != u.to {
			if err := e.drainNodeRetrying(ctx, k8s, t.name, p); err != nil {
				return fmt.Errorf("draining %s before its upgrade: %w\nFix the cause and re-run 'constellation apply'", t.name, err)
			}
			if _, err := instruct(ctx, k8s, t.name, agentapi.Target{Version: u.to, Step: step, Components: comps}); err != nil {
				return err
			}
			if err := waitForStep(ctx, k8s, t.name, u.to, step, p); err != nil {
				return err
			}
		}
		if err := waitForKubelet(ctx, k8s, t.name, u.to); err != nil {
			return err
		}
		if t.role == config.RoleControlPlane {
			// The new kubelet replaces the static pods it finds: the API server may restart once more.
			if err := waitForControlPlane(ctx, k8s, t.name, u.to); err != nil {
				return err
			}
		}
		if step == agentapi.StepApply {
			// From now on a node that joins gets the new version: the control plane runs it.
			if err := updateJoinService(ctx, k8s, u.to, joinComps); err != nil {
				return fmt.Errorf("the control plane runs Kubernetes %s, but updating the JoinService failed: %w\nRe-run "+
					"'constellation apply' to continue", u.to, err)
			}
			p.Detail("the JoinService hands joining nodes Kubernetes %s", u.to)
		}
		if err := cordon(ctx, k8s, t.name, false); err != nil {
			return fmt.Errorf("uncordoning %s: %w", t.name, err)
		}
		p.Detail("%s runs the kubelet of %s and is Ready", t.name, u.to)
		p.Done()
	}
	return nil
}

// instruct sets a node's target annotation, unless the node reached the step already or was given a later
// step of the same version (a re-run asks for staging again); given tells whether it was set. A failed
// report is removed with it: setting the target again asks the node to retry.
func instruct(ctx context.Context, k8s kubernetes.Interface, name string, t agentapi.Target) (given bool, err error) {
	node, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("reading the node %s: %w", name, err)
	}
	status, _ := agentapi.ReadStatus(node)
	if status.Reached(t.Version, t.Step) {
		return false, nil
	}
	if current, err := agentapi.ReadTarget(node); err == nil && current.Version == t.Version && t.Step == agentapi.StepStage &&
		current.Step != agentapi.StepStage {
		return false, nil
	}
	value, err := t.Encode()
	if err != nil {
		return false, err
	}
	annotations := map[string]*string{agentapi.TargetAnnotation: &value}
	if status.Phase == agentapi.PhaseFailed {
		annotations[agentapi.StatusAnnotation] = nil
	}
	patch, err := agentapi.AnnotationsPatch(annotations)
	if err != nil {
		return false, err
	}
	if _, err := k8s.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return false, fmt.Errorf("giving %s its upgrade instruction: %w", name, err)
	}
	return true, nil
}

// describeStep names what a node does for step.
func describeStep(step agentapi.Step, version string) string {
	if step == agentapi.StepStage {
		return "installing the components of " + version
	}
	return "'kubeadm upgrade " + string(step) + "' to " + version
}

// waitForStep waits until the node reports step for version done; it prints what the node reports meanwhile.
func waitForStep(ctx context.Context, k8s kubernetes.Interface, name, version string, step agentapi.Step, p *progress) error {
	var said string
	var failed error
	err := poll(ctx, kubernetesStepWait, func(ctx context.Context) bool {
		node, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		// The API server restarts during `kubeadm upgrade apply`: an error here is waited out.
		if err != nil {
			return false
		}
		s, ok := agentapi.ReadStatus(node)
		switch {
		case s.Reached(version, step):
			return true
		case ok && s.Phase == agentapi.PhaseFailed && (s.Version == "" || s.Version == version):
			failed = fmt.Errorf("%s failed %s: %s\nThe node keeps what it ran; fix the cause and "+
				"re-run 'constellation apply' to retry", name, describeStep(step, version), s.Message)
			return true
		case ok && s.Phase == agentapi.PhaseWorking && s.Version == version && s.Message != said:
			said = s.Message
			p.Detail("%s: %s", name, s.Message)
		}
		return false
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("%s did not finish %s within %s (last report: %q)\nIts bootstrapper's log "+
			"says more; re-run 'constellation apply' to keep waiting", name, describeStep(step, version), kubernetesStepWait, said)
	}
	if err != nil {
		return err
	}
	return failed
}

// waitForKubelet waits until the node's kubelet reports version and the node is Ready.
func waitForKubelet(ctx context.Context, k8s kubernetes.Interface, name, version string) error {
	last := "not seen"
	err := poll(ctx, rolloutWait, func(ctx context.Context) bool {
		node, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		last = "kubelet " + node.Status.NodeInfo.KubeletVersion + ", not Ready"
		return node.Status.NodeInfo.KubeletVersion == version && nodeReady(node)
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("%s did not report a Ready kubelet of %s within %s (%s)\nRe-run 'constellation apply' to keep waiting",
			name, version, rolloutWait, last)
	}
	return err
}

// errPollTimeout is poll's error when the time ran out.
var errPollTimeout = errors.New("timed out")

// poll calls done every kubernetesPoll until it returns true, ctx ends (its error) or timeout passed
// (errPollTimeout).
func poll(ctx context.Context, timeout time.Duration, done func(context.Context) bool) error {
	err := wait.PollUntilContextTimeout(ctx, kubernetesPoll, timeout, true, func(ctx context.Context) (bool, error) {
		return done(ctx), nil
	})
	if err != nil && ctx.Err() == nil {
		return errPollTimeout
	}
	return err
}

// drainNodeRetrying drains a node, and again after a failure for a while: right after a control plane moved,
// its API server restarts, and one that just started refuses requests until its authorizer caught up.
func (e *env) drainNodeRetrying(ctx context.Context, k8s kubernetes.Interface, name string, p *progress) error {
	deadline := time.Now().Add(kubernetesDrainRetry)
	for {
		err := e.drainNode(ctx, k8s, name, p)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		p.Detail("draining %s failed (%v); trying again", name, firstLine(err.Error()))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * kubernetesPoll):
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// controlPlaneComponents are kubeadm's static pods on a control plane.
var controlPlaneComponents = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// waitForControlPlane waits until the static pods of the control plane on node are Ready, those of Kubernetes
// itself at version.
func waitForControlPlane(ctx context.Context, k8s kubernetes.Interface, node, version string) error {
	var last string
	err := poll(ctx, rolloutWait, func(ctx context.Context) bool {
		last = ""
		for _, c := range controlPlaneComponents {
			pod, err := k8s.CoreV1().Pods(metav1.NamespaceSystem).Get(ctx, c+"-"+node, metav1.GetOptions{})
			switch {
			case err != nil:
				last = err.Error()
			case c != "etcd" && !slices.ContainsFunc(pod.Spec.Containers, func(ct corev1.Container) bool {
				return strings.HasSuffix(ct.Image, ":"+version)
			}):
				last = c + " does not run " + version + " yet"
			case !podReady(pod):
				last = c + " is not Ready"
			}
			if last != "" {
				return false
			}
		}
		return true
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("the control plane on %s is not Ready at %s within %s (%s)\nRe-run 'constellation apply' to keep waiting",
			node, version, rolloutWait, last)
	}
	return err
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func nodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// updateJoinService makes the JoinService hand joining nodes version and comps: its ConfigMap's components,
// and its DaemonSet's flag (a changed flag restarts it).
func updateJoinService(ctx context.Context, k8s kubernetes.Interface, version string, comps []*components.Component) error {
	data, err := components.MarshalList(comps)
	if err != nil {
		return err
	}
	cms := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	cm, err := cms.Get(ctx, joinproto.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if cm.Data[joinproto.ComponentsKey] != string(data) {
		cm.Data[joinproto.ComponentsKey] = string(data)
		if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	dss := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem)
	ds, err := dss.Get(ctx, joinproto.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	flag := joinproto.KubernetesVersionFlag + "="
	changed, found := false, false
	for i := range ds.Spec.Template.Spec.Containers {
		args := ds.Spec.Template.Spec.Containers[i].Args
		for j, a := range args {
			if strings.HasPrefix(a, flag) {
				found = true
				if a != flag+version {
					args[j], changed = flag+version, true
				}
			}
		}
	}
	if !found {
		return fmt.Errorf("the DaemonSet %s has no %s argument", joinproto.DaemonSetName, joinproto.KubernetesVersionFlag)
	}
	if changed {
		if _, err := dss.Update(ctx, ds, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// kubernetesOnly returns the components of the Kubernetes version among comps.
func kubernetesOnly(comps []*components.Component, version string) ([]*components.Component, error) {
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
