// Package imagerollout moves an initialized cluster's nodes to another node image, one node at a time,
// control planes first, while the cluster's JoinService trusts both the measurements of the image the nodes
// ran and those of the new one; when every node moved and verified, only the new ones. The CLI's apply and
// the Terraform provider's cluster resource run the same roll-out: each says how a node reboots into an
// image (its infrastructure), how a rebooted control plane is unlocked, and where the admin's own record of
// the roll-out lives, and each words the way out of a failure from the errors' types.
package imagerollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
)

// Same tells whether two measurement sets expect the same values of the same PCRs.
func Same(a, b measurements.M) bool {
	return len(upgrade.ChangedPCRs(a, b)) == 0 && len(upgrade.ChangedPCRs(b, a)) == 0
}

// Cluster is the JoinService's attestation config as the cluster holds it (a ConfigMap in kube-system).
type Cluster struct {
	k8s  kubernetes.Interface
	cm   *corev1.ConfigMap
	file attestconfig.File
}

// ReadCluster reads the attestation config the cluster's JoinService enforces.
func ReadCluster(ctx context.Context, k8s kubernetes.Interface) (*Cluster, error) {
	cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, attestconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's attestation config (kube-system/%s): %w", attestconfig.ConfigMapName, err)
	}
	c := &Cluster{k8s: k8s, cm: cm}
	if err := yaml.Unmarshal([]byte(cm.Data[attestconfig.FileName]), &c.file); err != nil {
		return nil, fmt.Errorf("parsing the cluster's attestation config: %w", err)
	}
	return c, nil
}

// File is the attestation config.
func (c *Cluster) File() attestconfig.File { return c.file }

// InProgress tells whether a roll-out runs: the JoinService trusts the measurements of two images.
func (c *Cluster) InProgress() bool { return c.file.Rollout != nil }

// Trusts tells whether m are the measurements the JoinService trusts (the new image's during a roll-out).
func (c *Cluster) Trusts(m measurements.M) bool { return Same(c.file.Measurements, m) }

// ErrOtherRollout is returned by Check when the cluster rolls out to an image other than the target: that
// roll-out must finish first, or nodes of three images would be trusted.
var ErrOtherRollout = errors.New("a roll-out to another image runs in the cluster (its JoinService trusts the " +
	"measurements of that image and of the one before)")

// Check tells whether moving to an image with the target measurements needs a roll-out: new measurements,
// or a roll-out that was interrupted (the caller also moves nodes that run the image from another place).
func (c *Cluster) Check(target measurements.M) (needed bool, err error) {
	changed := !c.Trusts(target)
	if c.InProgress() && changed {
		return false, ErrOtherRollout
	}
	return changed || c.InProgress(), nil
}

// begin makes the JoinService trust the target measurements and, until finish, the ones it trusted so far.
// A roll-out that began already is left alone.
func (c *Cluster) begin(ctx context.Context, target measurements.M) (began bool, err error) {
	if c.InProgress() || c.Trusts(target) {
		return false, nil
	}
	next := c.file
	next.Measurements = target
	next.Rollout = &attestconfig.Rollout{PreviousMeasurements: c.file.Measurements}
	return true, c.write(ctx, next)
}

// finish makes the JoinService trust only the new measurements.
func (c *Cluster) finish(ctx context.Context) error {
	if !c.InProgress() {
		return nil
	}
	next := c.file
	next.Rollout = nil
	return c.write(ctx, next)
}

// write replaces the cluster's attestation config; a concurrent change makes it fail rather than be
// overwritten.
func (c *Cluster) write(ctx context.Context, f attestconfig.File) error {
	data, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	// The JoinService refuses a file it cannot parse and keeps the last good one; refusing it here says why.
	if _, err := attestconfig.Parse(data, nil); err != nil {
		return fmt.Errorf("the new attestation config is invalid: %w", err)
	}
	cm := c.cm.DeepCopy()
	cm.Data[attestconfig.FileName] = string(data)
	updated, err := c.k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	c.cm, c.file = updated, f
	return nil
}

// Mover reboots one node into image, its state disk kept: the infrastructure's part of a roll-out. Moving a
// node that runs image already must change nothing, since an interrupted roll-out moves it again.
type Mover interface {
	MoveNode(ctx context.Context, node, image string) error
}

// Unlocker unlocks a control plane that rebooted into the new image: no other control plane's JoinService
// runs that image yet, so the admin's master secret unlocks it. running reports a node that needed nothing.
type Unlocker interface {
	Unlock(ctx context.Context, t clusterclient.Target) (running bool, err error)
}

// Verifier checks a node's attestation against the new measurements bound to the cluster.
type Verifier interface {
	Verify(ctx context.Context, t clusterclient.Target) clusterclient.NodeResult
}

// Recorder keeps the admin's own record of a roll-out, so that verification by the admin accepts nodes of
// both images from the admin's configuration rather than from the cluster's say. Begin is called before the
// cluster trusts the new image, Finish after it trusts only that one; both are called again by a re-run.
type Recorder interface {
	Begin(previous measurements.M, image string) error
	Finish() error
}

// Reporter receives the roll-out's progress: a step per node, details within it.
type Reporter interface {
	Step(format string, args ...any)
	Detail(format string, args ...any)
	Done()
}

// Step is the part of moving a node that failed.
type Step string

// The steps of moving one node, in their order.
const (
	StepBegin    Step = "telling the JoinService to trust both images"
	StepDrain    Step = "draining the node before it moves"
	StepMove     Step = "rebooting the node into the new image"
	StepUnlock   Step = "unlocking the control plane after it moved"
	StepAPI      Step = "waiting for the Kubernetes API after the control plane was unlocked"
	StepReady    Step = "waiting until the node is Ready again"
	StepVerify   Step = "verifying the node's attestation"
	StepUncordon Step = "uncordoning the node"
	StepFinish   Step = "making the JoinService trust only the new image"
)

// Error is a failed step of a roll-out. Node is empty for the steps of the whole cluster (StepBegin,
// StepFinish). Nodes moved before stay on the new image, and both images stay trusted, so a re-run continues.
type Error struct {
	Node string
	Step Step
	Err  error
}

func (e *Error) Error() string {
	if e.Node == "" {
		return fmt.Sprintf("%s: %v", e.Step, e.Err)
	}
	return fmt.Sprintf("%s: %s: %v", e.Node, e.Step, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrNotVerified is the Err of a StepVerify Error: the node answered with an attestation that failed.
var ErrNotVerified = errors.New("the node runs the new image but does not verify")

// Options bound a roll-out's waits.
type Options struct {
	// Wait bounds how long a moved node may take to be Ready, to answer for verification, and a moved control
	// plane's API to answer.
	Wait time.Duration
	// Poll is how often those are asked.
	Poll time.Duration
	// DrainTimeout bounds the eviction of one node's pods.
	DrainTimeout time.Duration
}

// DefaultOptions suit the local provider's nodes, which reboot in well under a minute.
var DefaultOptions = Options{Wait: 10 * time.Minute, Poll: 2 * time.Second, DrainTimeout: kubeupgrade.DefaultDrainTimeout}

// Rollout moves every node to Image, whose measurements are Measurements.
type Rollout struct {
	K8s     kubernetes.Interface
	Cluster *Cluster
	// Image names the target image for the Mover; Measurements are what it boots to (before it joins).
	Image        string
	Measurements measurements.M
	// Nodes are the cluster's nodes; Running the image each node runs (a node missing from it moves).
	Nodes   []clusterclient.Target
	Running map[string]string

	Mover    Mover
	Unlocker Unlocker
	Verifier Verifier
	Recorder Recorder
	Reporter Reporter
	// Moved, if set, is called for a node that this run rebooted (or that an interrupted run left cordoned)
	// once it is Ready and verified, before it is uncordoned: what the reboot emptied goes back first.
	Moved   func(ctx context.Context, node string)
	Options Options
}

// Result is what a roll-out did.
type Result struct {
	// Moved counts the nodes this run rebooted.
	Moved int
	// Began tells whether this run made the cluster trust the new image (a re-run finds it done).
	Began bool
	Took  time.Duration
}

// Run moves each node in turn, control planes first (a worker rejoins through a JoinService that runs its own
// new image): cordon and drain it, reboot it into the image with its state disk kept, unlock it if it is a
// control plane, wait until it is Ready with a heartbeat from after the reboot, verify its attestation,
// uncordon it. Every step is idempotent, so a re-run after an interruption continues where it stopped.
func (r *Rollout) Run(ctx context.Context) (res Result, err error) {
	start := time.Now()
	// On the named result: a deferred change to a local would come after the return copied it.
	defer func() { res.Took = time.Since(start) }()
	o := r.Options
	if o.Wait == 0 {
		o = DefaultOptions
	}
	if r.Cluster.InProgress() || !r.Cluster.Trusts(r.Measurements) {
		// The admin's record first: if the run stops between the two, verification still accepts both images.
		previous := r.Cluster.file.Measurements
		if r.Cluster.InProgress() {
			previous = r.Cluster.file.Rollout.PreviousMeasurements
		}
		if err := r.Recorder.Begin(previous, r.Image); err != nil {
			return res, &Error{Step: StepBegin, Err: fmt.Errorf("recording the roll-out: %w", err)}
		}
		began, err := r.Cluster.begin(ctx, r.Measurements)
		if err != nil {
			return res, &Error{Step: StepBegin, Err: err}
		}
		res.Began = began
	}
	nodes := slices.Clone(r.Nodes)
	slices.SortStableFunc(nodes, func(a, b clusterclient.Target) int {
		return rank(a.Role != config.RoleControlPlane) - rank(b.Role != config.RoleControlPlane)
	})
	for i, t := range nodes {
		r.Reporter.Step("Node %s (%d of %d): image %s", t.Name, i+1, len(nodes), r.Image)
		moved, err := r.moveNode(ctx, t, o)
		if moved {
			res.Moved++
		}
		if err != nil {
			return res, err
		}
		r.Reporter.Done()
	}
	if err := r.Cluster.finish(ctx); err != nil {
		return res, &Error{Step: StepFinish, Err: err}
	}
	if err := r.Recorder.Finish(); err != nil {
		return res, &Error{Step: StepFinish, Err: fmt.Errorf("the cluster trusts only the new image, but updating the record of the roll-out failed: %w", err)}
	}
	return res, nil
}

// moveNode moves one node; moved tells whether this call rebooted it.
func (r *Rollout) moveNode(ctx context.Context, t clusterclient.Target, o Options) (moved bool, err error) {
	fail := func(step Step, err error) error { return &Error{Node: t.Name, Step: step, Err: err} }
	// A node moved now must report Ready after its reboot; one moved by an interrupted run is Ready already
	// (a kubelet that changes nothing reports only every few minutes).
	var since time.Time
	reboots := r.Running[t.Name] != r.Image
	if reboots {
		r.Reporter.Detail("cordoning %s and evicting its pods", t.Name)
		if err := kubeupgrade.Drain(ctx, r.K8s, t.Name, o.DrainTimeout); err != nil {
			return false, fail(StepDrain, err)
		}
		r.Reporter.Detail("rebooting %s into the new image (its state disk is kept)", t.Name)
		since = time.Now()
	}
	// Also for a node that runs the target already: an interrupted run may have recorded the move before the
	// infrastructure made it. The Mover changes nothing for a node that runs it.
	if err := r.Mover.MoveNode(ctx, t.Name, r.Image); err != nil {
		return false, fail(StepMove, err)
	}
	moved = reboots
	if r.Running != nil {
		r.Running[t.Name] = r.Image
	}
	if t.Role == config.RoleControlPlane {
		running, err := r.Unlocker.Unlock(ctx, t)
		if err != nil {
			return moved, fail(StepUnlock, err)
		}
		if !running {
			r.Reporter.Detail("unlocked %s with the master secret", t.Name)
			if err := WaitForAPI(ctx, r.K8s, o.Wait, o.Poll); err != nil {
				return moved, fail(StepAPI, err)
			}
		}
	}
	if err := WaitNodeReady(ctx, r.K8s, t.Name, since, o.Wait, o.Poll); err != nil {
		return moved, fail(StepReady, err)
	}
	// Verified before it is uncordoned: the VerificationService is a DaemonSet, so it runs on a cordoned node,
	// and a node that answers has finished its reboot.
	if res := r.verify(ctx, t, o); !res.Verified {
		return moved, fail(StepVerify, fmt.Errorf("%w: %s", ErrNotVerified, res.Error))
	}
	if r.Moved != nil && (moved || cordoned(ctx, r.K8s, t.Name)) {
		r.Moved(ctx, t.Name)
	}
	if err := kubeupgrade.Cordon(ctx, r.K8s, t.Name, false); err != nil {
		return moved, fail(StepUncordon, err)
	}
	r.Reporter.Detail("%s is Ready and verified", t.Name)
	return moved, nil
}

// verify asks a node that just rebooted for its attestation: its VerificationService (a DaemonSet pod) may
// not answer yet, so a node that does not answer is asked again for a while; an answer that fails
// validation is final.
func (r *Rollout) verify(ctx context.Context, t clusterclient.Target, o Options) clusterclient.NodeResult {
	deadline := time.Now().Add(o.Wait)
	for {
		res := r.Verifier.Verify(ctx, t)
		if !res.Unreachable || time.Now().After(deadline) || ctx.Err() != nil {
			return res
		}
		select {
		case <-ctx.Done():
			return res
		case <-time.After(o.Poll):
		}
	}
}

func rank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// cordoned tells whether the node is marked unschedulable.
func cordoned(ctx context.Context, k8s kubernetes.Interface, name string) bool {
	node, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	return err == nil && node.Spec.Unschedulable
}

// WaitForAPI waits until the cluster's API server lists its nodes, for at most timeout.
func WaitForAPI(ctx context.Context, k8s kubernetes.Interface, timeout, poll time.Duration) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, poll, timeout, true, func(ctx context.Context) (bool, error) {
		_, last = k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		return last == nil, nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("%w (last error: %v)", err, last)
	}
	return err
}

// WaitNodeReady waits until the node reports Ready with a heartbeat after since (a heartbeat from before a
// reboot does not count), for at most timeout.
func WaitNodeReady(ctx context.Context, k8s kubernetes.Interface, name string, since time.Time, timeout, poll time.Duration) error {
	// Heartbeats are whole seconds.
	since = since.Truncate(time.Second)
	var last string
	err := wait.PollUntilContextTimeout(ctx, poll, timeout, true, func(ctx context.Context) (bool, error) {
		node, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = "not Ready"
		for _, c := range node.Status.Conditions {
			if c.Type != corev1.NodeReady {
				continue
			}
			if c.Status == corev1.ConditionTrue && !c.LastHeartbeatTime.Time.Before(since) {
				return true, nil
			}
			last = fmt.Sprintf("Ready=%s (%s), last heartbeat %s", c.Status, c.Reason, c.LastHeartbeatTime.Format(time.RFC3339))
		}
		return false, nil
	})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("%s was not Ready again within %s: %s", name, timeout, last)
	}
	return err
}
