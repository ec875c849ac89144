package cmd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// kubernetesStepWait bounds one node's kubeadm step (`kubeadm upgrade apply` moves etcd and every static pod
// one after the other, waiting for each) and a node's staging.
var kubernetesStepWait = 15 * time.Minute

// kubernetesPoll is how often an upgrade or a roll-out looks at a node again.
var kubernetesPoll = 2 * time.Second

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

// upgradeKubernetes moves the cluster to u.to with the nodes' agents, by kubeupgrade's passes (see there for
// the order). The nodes carry their steps out on their own, so an interrupted run loses nothing: a re-run
// finds the steps done and continues.
func (e *env) upgradeKubernetes(ctx context.Context, cfg *config.Config, u *kubernetesUpgrade, p *progress) (err error) {
	start := time.Now()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("the Kubernetes upgrade was interrupted (%w); the nodes finish the step they were given, and the "+
				"cluster's upgrade controller goes on with the rest (kubectl get kubernetesupgrades shows where it stands): "+
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
	spec := kubeupgrade.Spec{Version: u.to, Components: comps, JoinComponents: joinComps}
	if err := e.rollKubernetes(ctx, k8s, spec, p); err != nil {
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

// rollKubernetes hands the upgrade to the cluster's upgrade controller (the KubernetesUpgrade resource) and
// follows it; the controller carries it on if this CLI stops. A cluster without the controller (created by
// an earlier release) is moved by this CLI's own passes.
func (e *env) rollKubernetes(ctx context.Context, k8s kubernetes.Interface, spec kubeupgrade.Spec, p *progress) error {
	cr, err := e.upgradeClient()
	if err != nil {
		return err
	}
	err = submitUpgrade(ctx, cr, spec)
	if meta.IsNoMatchError(err) {
		fmt.Fprintln(e.errOut, "Notice: the cluster has no upgrade controller (an earlier release created it): this CLI moves the nodes "+
			"itself and must run until the upgrade is done.")
		return e.runPasses(ctx, k8s, spec, p)
	}
	if err != nil {
		return fmt.Errorf("handing the upgrade to the cluster's upgrade controller: %w", err)
	}
	return e.followUpgrade(ctx, cr, spec.Version, p)
}

// submitUpgrade writes spec into the cluster's KubernetesUpgrade; if the controller reported a failed step
// of this version, it also asks the nodes to retry. A write that crossed the controller's is done again.
func submitUpgrade(ctx context.Context, cr client.Client, spec kubeupgrade.Spec) error {
	want, err := v1alpha1.EncodeSpec(spec)
	if err != nil {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
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
}

// followUpgrade prints what the upgrade controller reports until the upgrade is done or failed, or did not
// move for kubernetesStepWait.
func (e *env) followUpgrade(ctx context.Context, cr client.Client, version string, p *progress) error {
	var last kubeupgrade.Progress
	moved := time.Now()
	for {
		var u v1alpha1.KubernetesUpgrade
		err := cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		// The API server restarts during the control plane's step: an error here is waited out.
		// A report counts once it is about this spec, and the retry it asks for.
		if err == nil && u.Status.ObservedGeneration == u.Generation && u.Status.Retried >= u.Spec.Retry && u.Spec.Version == version {
			prog := u.Status.Progress()
			reportKubernetes(p, last, prog, version)
			switch prog.Phase {
			case kubeupgrade.PhaseDone:
				p.Done()
				return nil
			case kubeupgrade.PhaseFailed:
				if prog.Node == "" {
					return fmt.Errorf("the upgrade controller refused the upgrade to %s: %s", version, u.Status.Error)
				}
				return fmt.Errorf("%s failed %s: %s\nThe node keeps what it ran; fix the cause and re-run 'constellation apply' to retry",
					prog.Node, kubeupgrade.DescribeStep(prog.Step, version), prog.Waiting)
			}
			if progressed(last, prog) {
				moved = time.Now()
			}
			last = prog
		}
		if time.Since(moved) > kubernetesStepWait {
			waiting := last.Waiting
			if waiting == "" {
				waiting = "the upgrade controller to take the target up (is its pod running? kubectl -n kube-system get pods -l app.kubernetes.io/name=operator)"
			}
			return fmt.Errorf("the Kubernetes upgrade to %s did not move for %s, waiting for %s\nThe upgrade controller goes on in "+
				"the cluster; re-run 'constellation apply' to follow it", version, kubernetesStepWait, waiting)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(kubernetesPoll):
		}
	}
}

// runPasses runs kubeupgrade's passes every kubernetesPoll until the upgrade is done, and prints where it
// stands. It gives up when nothing moved for kubernetesStepWait, or a pass kept failing that long (the API
// server restarts during the control plane's step; a drain right after it may be refused for a while).
func (e *env) runPasses(ctx context.Context, k8s kubernetes.Interface, spec kubeupgrade.Spec, p *progress) error {
	cleared, err := kubeupgrade.ClearFailures(ctx, k8s, spec.Version)
	if err != nil {
		return err
	}
	for _, n := range cleared {
		fmt.Fprintf(e.errOut, "Notice: %s failed its step of the Kubernetes %s upgrade before; it tries again.\n", n, spec.Version)
	}
	r := &kubeupgrade.Reconciler{Client: k8s}
	var last kubeupgrade.Progress
	var lastErr string
	moved, failing := time.Now(), time.Time{}
	for {
		prog, err := r.Reconcile(ctx, spec)
		switch {
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			if failing.IsZero() {
				failing = time.Now()
			}
			if time.Since(failing) > kubernetesStepWait {
				return fmt.Errorf("the Kubernetes upgrade to %s: %w\nFix the cause and re-run 'constellation apply' to continue", spec.Version, err)
			}
			if msg := firstLine(err.Error()); msg != lastErr {
				p.Detail("%s; trying again", msg)
				lastErr = msg
			}
		default:
			failing, lastErr = time.Time{}, ""
			reportKubernetes(p, last, prog, spec.Version)
			switch prog.Phase {
			case kubeupgrade.PhaseDone:
				p.Done()
				return nil
			case kubeupgrade.PhaseFailed:
				return fmt.Errorf("%s failed %s: %s\nThe node keeps what it ran; fix the cause and re-run 'constellation apply' to retry",
					prog.Node, kubeupgrade.DescribeStep(prog.Step, spec.Version), prog.Waiting)
			}
			if progressed(last, prog) {
				moved = time.Now()
			} else if time.Since(moved) > kubernetesStepWait {
				return fmt.Errorf("the Kubernetes upgrade to %s did not move for %s, waiting for %s\nThe nodes' bootstrapper "+
					"logs say more; re-run 'constellation apply' to keep waiting", spec.Version, kubernetesStepWait, prog.Waiting)
			}
			last = prog
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(kubernetesPoll):
		}
	}
}

// progressed tells whether the upgrade moved from one report to the next: another phase, node, awaited
// thing, or action.
func progressed(last, prog kubeupgrade.Progress) bool {
	return prog.Phase != last.Phase || prog.Node != last.Node || prog.Waiting != last.Waiting || !slices.Equal(prog.Did, last.Did)
}

// reportKubernetes prints what changed from one pass to the next.
func reportKubernetes(p *progress, last, prog kubeupgrade.Progress, version string) {
	for _, n := range prog.Finished {
		if n == last.Node && last.Phase == kubeupgrade.PhaseUpgrading {
			p.Detail("%s runs the kubelet of %s and is Ready", n, version)
		}
	}
	if prog.Phase != last.Phase && prog.Phase == kubeupgrade.PhaseStaging {
		p.Step("Kubernetes %s: verifying and installing its components on %d node(s)", version, prog.Staging)
	}
	did := prog.Did
	if slices.Equal(prog.Did, last.Did) {
		did = nil
	}
	if prog.Phase == kubeupgrade.PhaseUpgrading && (prog.Node != last.Node || last.Phase != kubeupgrade.PhaseUpgrading) {
		// A pass that moves on to the next node also reports what finished the previous one (the
		// JoinService's move, its uncordon): those belong under the previous node's heading.
		var next []string
		for _, d := range did {
			if strings.Contains(d, prog.Node) {
				next = append(next, d)
			} else {
				p.Detail("%s", d)
			}
		}
		did = next
		p.Step("Node %s (%d of %d): kubeadm upgrade %s to %s", prog.Node, prog.Index, prog.Total, prog.Step, version)
	}
	for _, d := range did {
		p.Detail("%s", d)
	}
	for _, r := range prog.Reports {
		if !slices.Contains(last.Reports, r) {
			p.Detail("%s", r)
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
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
