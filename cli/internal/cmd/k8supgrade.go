package cmd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/cli/internal/terraform"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/versions"
)

// kubernetesStepWait bounds one node's kubeadm step (`kubeadm upgrade apply` moves etcd and every static pod
// one after the other, waiting for each) and a node's staging.
var kubernetesStepWait = 15 * time.Minute

// kubernetesPoll is how often an upgrade or a roll-out looks at a node again.
var kubernetesPoll = 2 * time.Second

// nodesJoinWait bounds the wait for the configuration's nodes to be Ready members before an upgrade starts.
var nodesJoinWait = 5 * time.Minute

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
	plan, err := clusterupgrade.PlanKubernetes(ctx, k8s, to)
	// A cluster that does not answer (its control planes stopped) must still get its infrastructure applied
	// again, which restarts them: the versions are compared on the next run.
	if errors.Is(err, clusterupgrade.ErrNotAnswering) {
		fmt.Fprintf(e.errOut, "Notice: %v, so its Kubernetes version is not compared with kubernetesVersion %s in this "+
			"run; re-run 'constellation apply' once it answers.\n", err, to)
		return nil, nil
	}
	if refused := (*clusterupgrade.RefusedError)(nil); errors.As(err, &refused) {
		return nil, fmt.Errorf("kubernetesVersion %s: %w; set kubernetesVersion in %s back to %s", to, refused,
			e.path(config.FileName), refused.From)
	}
	if err != nil || plan == nil {
		return nil, err
	}
	fix := fmt.Sprintf("; set kubernetesVersion in %s back to %s", e.path(config.FileName), plan.From)
	if cfg.GetProvider() != cloudprovider.Local {
		return nil, fmt.Errorf("kubernetesVersion %s differs from the cluster's %s, but upgrading Kubernetes on %s clusters "+
			"is not implemented yet (only the local provider serves components to its nodes)%s", to, plan.From, cfg.GetProvider(), fix)
	}
	if !versions.Built(to) {
		return nil, fmt.Errorf("%w, then re-run 'constellation apply'", clusterupgrade.NotBuiltError(to))
	}
	return &kubernetesUpgrade{from: plan.From, to: plan.To}, nil
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
	comps, err := clusterupgrade.KubernetesOnly(joinComps, u.to)
	if err != nil {
		return err
	}
	var names []string
	for _, n := range terraform.Nodes(cfg) {
		names = append(names, n.Name)
	}
	if err := waitNodesJoined(ctx, k8s, names, nodesJoinWait, kubernetesPoll, p); err != nil {
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
	err = clusterupgrade.Submit(ctx, cr, spec)
	if errors.Is(err, clusterupgrade.ErrNoController) {
		fmt.Fprintln(e.errOut, "Notice: the cluster has no upgrade controller (an earlier release created it): this CLI moves the nodes "+
			"itself and must run until the upgrade is done.")
		return e.runPasses(ctx, k8s, spec, p)
	}
	if err != nil {
		return fmt.Errorf("handing the upgrade to the cluster's upgrade controller: %w", err)
	}
	err = clusterupgrade.Follow(ctx, cr, spec.Version, clusterupgrade.Options{Poll: kubernetesPoll, StepWait: kubernetesStepWait},
		func(last, prog kubeupgrade.Progress) { reportKubernetes(p, last, prog, spec.Version) })
	var failed *clusterupgrade.StepFailedError
	var stalled *clusterupgrade.StalledError
	switch {
	case err == nil:
		p.Done()
		return nil
	case errors.As(err, &failed):
		return fmt.Errorf("%w\nThe node keeps what it ran; fix the cause and re-run 'constellation apply' to retry", err)
	case errors.As(err, &stalled):
		return fmt.Errorf("%w\nThe upgrade controller goes on in the cluster; re-run 'constellation apply' to follow it", err)
	}
	return err
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
			if clusterupgrade.Progressed(last, prog) {
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

// reportKubernetes prints what changed from one pass to the next.
func reportKubernetes(p *progress, last, prog kubeupgrade.Progress, version string) {
	for _, n := range prog.Finished {
		if n == last.Node && last.Phase == kubeupgrade.PhaseUpgrading {
			p.Detail("%s runs the kubelet of %s and is Ready", n, version)
		}
	}
	if prog.Phase != last.Phase && prog.Phase == kubeupgrade.PhaseStaging {
		// Not a count: the first pass the CLI sees may come after a node finished staging.
		p.Step("Kubernetes %s: verifying and installing its components on the nodes", version)
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

// waitNodesJoined waits until every node of names is a Ready node of the cluster, for at most timeout, and
// says so while it waits: `mini up` returns before its workers joined (clusterupgrade.WaitNodesJoined).
func waitNodesJoined(ctx context.Context, k8s kubernetes.Interface, names []string, timeout, poll time.Duration, p *progress) error {
	stepped := false
	err := clusterupgrade.WaitNodesJoined(ctx, k8s, names, clusterupgrade.Options{Poll: poll, JoinWait: timeout}, func(missing []string) {
		p.Step("Waiting until %s is a Ready node of the cluster (a node may still be joining) before the upgrade starts", strings.Join(missing, ", "))
		stepped = true
	})
	if notJoined := (*clusterupgrade.NotJoinedError)(nil); errors.As(err, &notJoined) {
		return fmt.Errorf("%w. Check it with 'constellation status' and re-run 'constellation apply'", err)
	}
	if err == nil && stepped {
		p.Done()
	}
	return err
}
