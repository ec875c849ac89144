// Package nodeagent is the node's side of a Kubernetes upgrade (the contract is bootstrapper/agentapi): once
// the node is a member of a cluster, the agent polls its own Node object with the kubelet's credentials,
// and carries out the step that the target annotation asks for: it stages the new version's components
// (verified against their pinned sha256 before they become visible), runs `kubeadm upgrade apply` or
// `kubeadm upgrade node`, then replaces and restarts the kubelet and records the new components on the
// state disk. It reports every step in the status annotation.
//
// Every step is idempotent: a bootstrapper that restarts in the middle of one finds the instruction again
// and carries the step out again (an installed file with the right hash is not downloaded again, and
// kubeadm finishes an interrupted upgrade). A failed step is reported and not retried until the caller
// clears the status.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// kubeletComponent is the component installed only after kubeadm's step: a kubelet newer than the API
// server is outside Kubernetes' version skew policy, and the supervisor may restart it at any time.
const kubeletComponent = "kubelet"

// Installer installs components after verifying them, without recording them.
type Installer interface {
	Stage(ctx context.Context, comps []*components.Component) error
}

// Recorder keeps the node's components on its state disk, for the next restart.
type Recorder interface {
	LoadComponents() ([]byte, error)
	SaveComponents(data []byte) error
}

// Kubeadm runs kubeadm's upgrade commands.
type Kubeadm interface {
	UpgradeApply(ctx context.Context, version string) error
	UpgradeNode(ctx context.Context) error
}

// Kubelet is the kubelet supervisor: f runs while the kubelet is stopped, which starts again afterwards.
type Kubelet interface {
	WhileStopped(ctx context.Context, f func(context.Context) error) error
}

// Agent carries out the node's upgrade instructions.
type Agent struct {
	NodeName string
	// Client returns a client with the kubelet's credentials; it fails until the node joined.
	Client    func() (kubernetes.Interface, error)
	Installer Installer
	Recorder  Recorder
	Kubeadm   Kubeadm
	Kubelet   Kubelet
	// KubeadmTail, if set, returns the last lines kubeadm printed, for a failure's report.
	KubeadmTail func() string
	Log         *slog.Logger
	// Interval between looks at the Node object; zero means 2 s (one GET of one object: each instruction
	// of an upgrade waits for it, and an upgrade has three per node).
	Interval time.Duration
	// now is time.Now, or a test's clock.
	now func() time.Time
}

// Run looks for instructions until ctx ends.
func (a *Agent) Run(ctx context.Context) {
	interval := a.Interval
	if interval == 0 {
		interval = 2 * time.Second
	}
	var lastErr string
	for {
		if err := a.Reconcile(ctx); err != nil && err.Error() != lastErr {
			// Said once per distinct error: before the join every look fails the same way.
			a.Log.Debug("looking for a Kubernetes upgrade instruction", "error", err)
			lastErr = err.Error()
		} else if err == nil {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// Reconcile reads the node's instruction once and carries it out if the node has not yet. It returns an
// error only if it could not read or report (a step that fails is reported as failed, not returned).
func (a *Agent) Reconcile(ctx context.Context) error {
	client, err := a.Client()
	if err != nil {
		return err
	}
	node, err := client.CoreV1().Nodes().Get(ctx, a.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the node %s: %w", a.NodeName, err)
	}
	target, err := agentapi.ReadTarget(node)
	if errors.Is(err, agentapi.ErrNoTarget) {
		return nil
	}
	status, _ := agentapi.ReadStatus(node)
	if err != nil {
		// Reported once, like a failed step: the caller writes a valid instruction and clears the status.
		if status.Phase == agentapi.PhaseFailed && status.Version == "" {
			return nil
		}
		return a.report(ctx, client, agentapi.Status{Phase: agentapi.PhaseFailed, Message: err.Error()})
	}
	if status.Reached(target.Version, target.Step) {
		return nil
	}
	if status.Phase == agentapi.PhaseFailed && status.Version == target.Version && status.Step == target.Step {
		return nil
	}
	a.Log.Info("Kubernetes upgrade instruction", "version", target.Version, "step", target.Step)
	stepErr := a.carryOut(ctx, client, node, target)
	result := agentapi.Status{Version: target.Version, Step: target.Step, Phase: agentapi.PhaseDone, Message: doneMessage(target)}
	if stepErr != nil {
		a.Log.Error("Kubernetes upgrade step failed", "version", target.Version, "step", target.Step, "error", stepErr)
		result.Phase, result.Message = agentapi.PhaseFailed, stepErr.Error()
		if a.KubeadmTail != nil && target.Step != agentapi.StepStage {
			if tail := strings.TrimSpace(a.KubeadmTail()); tail != "" {
				result.Message += "\nkubeadm's last output:\n" + tail
			}
		}
	} else {
		a.Log.Info("Kubernetes upgrade step done", "version", target.Version, "step", target.Step)
	}
	return a.report(ctx, client, result)
}

func doneMessage(t agentapi.Target) string {
	if t.Step == agentapi.StepStage {
		return "the components of " + t.Version + " are verified and installed; the kubelet is not replaced yet"
	}
	return "kubeadm upgrade " + string(t.Step) + " done; the kubelet of " + t.Version + " runs"
}

// carryOut does the step.
func (a *Agent) carryOut(ctx context.Context, client kubernetes.Interface, node *corev1.Node, t agentapi.Target) error {
	if err := a.check(node, t); err != nil {
		return err
	}
	working := func(msg string) error {
		return a.report(ctx, client, agentapi.Status{Version: t.Version, Step: t.Step, Phase: agentapi.PhaseWorking, Message: msg})
	}
	kubelet, others := splitKubelet(t.Components)
	if err := working("installing the components of " + t.Version); err != nil {
		return err
	}
	if err := a.Installer.Stage(ctx, others); err != nil {
		return fmt.Errorf("installing the components of %s: %w", t.Version, err)
	}
	if t.Step == agentapi.StepStage {
		return nil
	}
	if err := working("kubeadm upgrade " + string(t.Step)); err != nil {
		return err
	}
	var err error
	if t.Step == agentapi.StepApply {
		err = a.Kubeadm.UpgradeApply(ctx, t.Version)
	} else {
		err = a.Kubeadm.UpgradeNode(ctx)
	}
	if err != nil {
		return err
	}
	if err := working("replacing the kubelet with " + t.Version); err != nil {
		return err
	}
	if err := a.Kubelet.WhileStopped(ctx, func(ctx context.Context) error {
		return a.Installer.Stage(ctx, kubelet)
	}); err != nil {
		return fmt.Errorf("replacing the kubelet: %w", err)
	}
	data, err := a.record(t.Components)
	if err != nil {
		return err
	}
	if err := a.Recorder.SaveComponents(data); err != nil {
		return fmt.Errorf("recording the components of %s on the state disk: %w", t.Version, err)
	}
	return nil
}

// record returns what the node records after an upgrade: the new components, and those recorded before
// that the upgrade does not replace (the services' images, which a restarted control plane needs too).
func (a *Agent) record(comps []*components.Component) ([]byte, error) {
	out := slices.Clone(comps)
	if old, err := a.Recorder.LoadComponents(); err == nil {
		previous, err := components.UnmarshalList(old)
		if err != nil {
			return nil, fmt.Errorf("reading the components recorded before: %w", err)
		}
		for _, c := range previous {
			if !slices.ContainsFunc(comps, func(n *components.Component) bool { return n.GetName() == c.GetName() }) {
				out = append(out, c)
			}
		}
	}
	return components.MarshalList(out)
}

// check refuses an instruction this node must not follow: a version its own (measured) bootstrapper does not
// support, a downgrade or a skipped minor version, components without a kubeadm and a kubelet, and the
// cluster-wide `kubeadm upgrade apply` on a node that is no control plane.
func (a *Agent) check(node *corev1.Node, t agentapi.Target) error {
	if v, err := versions.ResolveKubernetes(t.Version); err != nil || v != t.Version {
		return fmt.Errorf("this node's image does not support Kubernetes %s (it supports %s)", t.Version,
			strings.Join(versions.SupportedKubernetes(), ", "))
	}
	if current := node.Status.NodeInfo.KubeletVersion; current != "" {
		if err := upgrade.CheckKubernetes(current, t.Version); err != nil {
			return err
		}
	}
	kubelet, _ := splitKubelet(t.Components)
	hasKubeadm := slices.ContainsFunc(t.Components, func(c *components.Component) bool { return c.GetName() == "kubeadm" })
	if len(kubelet) == 0 || !hasKubeadm {
		return errors.New("the instruction's components lack kubeadm or the kubelet")
	}
	if err := a.checkPins(t); err != nil {
		return err
	}
	if _, cp := node.Labels["node-role.kubernetes.io/control-plane"]; t.Step == agentapi.StepApply && !cp {
		return errors.New("kubeadm upgrade apply runs on a control plane, and this node is none")
	}
	return nil
}

// checkPins holds every component of the instruction to this node's own pins of the version (compiled into
// its measured bootstrapper): the same name, install path, image reference and sha256. The one exception is
// the one versions.LocalComponents makes: an image built from Debian packages (kube-proxy's), which a machine
// whose Debian archive moved had to rebuild, may have another sha256; it is logged. So an instruction can
// neither place a file outside the component directories nor replace a pinned binary.
func (a *Agent) checkPins(t agentapi.Target) error {
	set, err := versions.Components(t.Version)
	if err != nil {
		return err
	}
	for _, c := range t.Components {
		pin, ok := set.Component(c.GetName())
		if !ok || pin.InstallPath == "" {
			return fmt.Errorf("component %q is not one a node installs for Kubernetes %s", c.GetName(), t.Version)
		}
		if c.GetInstallPath() != pin.InstallPath || c.GetImage() != pin.Image {
			return fmt.Errorf("component %s: install path %q and image %q are not the pinned %q and %q", c.GetName(),
				c.GetInstallPath(), c.GetImage(), pin.InstallPath, pin.Image)
		}
		if c.GetHash() == "sha256:"+pin.SHA256 {
			continue
		}
		if len(pin.Debs) == 0 {
			return fmt.Errorf("component %s: sha256 %s is not the pinned %s", c.GetName(), c.GetHash(), pin.SHA256)
		}
		a.Log.Warn("installing a locally rebuilt image (Debian's archive moved since it was pinned)",
			"component", c.GetName(), "sha256", c.GetHash(), "pinned", pin.SHA256)
	}
	return nil
}

func splitKubelet(comps []*components.Component) (kubelet, others []*components.Component) {
	for _, c := range comps {
		if c.GetName() == kubeletComponent {
			kubelet = append(kubelet, c)
		} else {
			others = append(others, c)
		}
	}
	return kubelet, others
}

// report writes the status annotation, retrying for a while: during `kubeadm upgrade apply` the API server
// restarts.
func (a *Agent) report(ctx context.Context, client kubernetes.Interface, s agentapi.Status) error {
	now := time.Now
	if a.now != nil {
		now = a.now
	}
	s.Time = now().UTC().Truncate(time.Second)
	value, err := s.Encode()
	if err != nil {
		return err
	}
	patch, err := agentapi.AnnotationsPatch(map[string]*string{agentapi.StatusAnnotation: &value})
	if err != nil {
		return err
	}
	deadline := now().Add(2 * time.Minute)
	for {
		_, err = client.CoreV1().Nodes().Patch(ctx, a.NodeName, types.MergePatchType, patch, metav1.PatchOptions{})
		if err == nil || ctx.Err() != nil || now().After(deadline) {
			if err != nil {
				return fmt.Errorf("reporting on the node %s: %w", a.NodeName, err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}
