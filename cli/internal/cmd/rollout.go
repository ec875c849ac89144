package cmd

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
)

// rolloutWait bounds how long a roll-out waits for a moved node to be Ready again.
var rolloutWait = 10 * time.Minute

// sameMeasurements tells whether two measurement sets expect the same values of the same PCRs.
func sameMeasurements(a, b measurements.M) bool {
	return len(upgrade.ChangedPCRs(a, b)) == 0 && len(upgrade.ChangedPCRs(b, a)) == 0
}

// imageRollout is what moving a cluster to the configuration's image involves.
type imageRollout struct {
	cfg    *config.Config
	st     *state.State
	infra  infrastructure
	k8s    kubernetes.Interface
	target string
	// cluster is the JoinService's attestation config as the cluster holds it.
	cluster attestconfig.File
	// clusterCM is the ConfigMap it came from (for an update that fails on a concurrent change).
	clusterCM *corev1.ConfigMap
	// images is the image each node runs.
	images map[string]string
}

// allOnTarget tells whether every node runs the target image.
func (r *imageRollout) allOnTarget() bool {
	for _, img := range r.images {
		if img != r.target {
			return false
		}
	}
	return true
}

// planRollout compares the configuration with the initialized cluster; it returns nil when every node runs
// the configured image with the configured measurements and no roll-out is pending.
func (e *env) planRollout(ctx context.Context, cfg *config.Config, st *state.State, p *progress) (*imageRollout, error) {
	k8s, err := e.adminClient()
	if err != nil {
		return nil, fmt.Errorf("reading the admin kubeconfig: %w", err)
	}
	cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, attestconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's attestation config (kube-system/%s): %w", attestconfig.ConfigMapName, err)
	}
	r := &imageRollout{cfg: cfg, st: st, k8s: k8s, clusterCM: cm}
	if err := yaml.Unmarshal([]byte(cm.Data[attestconfig.FileName]), &r.cluster); err != nil {
		return nil, fmt.Errorf("parsing the cluster's attestation config: %w", err)
	}
	measurementsChanged := !sameMeasurements(r.cluster.Measurements, cfg.Attestation.Measurements)
	if cfg.GetProvider() != cloudprovider.Local {
		if measurementsChanged || r.cluster.Rollout != nil {
			return nil, fmt.Errorf("attestation.measurements differ from the cluster's, but moving %s nodes to another image "+
				"is not implemented yet (only local clusters roll out images)", cfg.GetProvider())
		}
		return nil, nil
	}
	if r.infra, r.images, r.target, err = e.imagePlacement(cfg, p); err != nil {
		return nil, err
	}
	if !measurementsChanged && r.cluster.Rollout == nil && r.allOnTarget() {
		return nil, nil
	}
	if r.cluster.Rollout != nil && measurementsChanged {
		return nil, fmt.Errorf("a roll-out to another image runs in the cluster (its JoinService trusts the measurements of that "+
			"image and of the one before): finish it first by setting 'image' and attestation.measurements in %s back to "+
			"that image and re-running 'constellation apply'", e.path(config.FileName))
	}
	// The nodes would boot the image and then fail attestation against the measurements the cluster is told
	// to trust: never move a node to an image the configuration does not describe.
	m, err := measureImage(file.NewHandler(e.osFs), r.target)
	if err != nil {
		return nil, fmt.Errorf("measuring the image %s: %w", r.target, err)
	}
	if changed := upgrade.ChangedPCRs(cfg.Attestation.Measurements, m); len(changed) > 0 {
		if !measurementsChanged && r.cluster.Rollout == nil {
			// The configuration names an image by where it is (e.g. the one beside the CLI, rebuilt), but still
			// trusts what the nodes run: the user did not ask for a roll-out.
			fmt.Fprintf(e.errOut, "Notice: the node image %s is not the one the nodes run, and attestation.measurements are "+
				"not its own (PCRs %s differ), so the nodes keep their image. To move them to it: 'constellation upgrade "+
				"check --image %s --update-config', then 'constellation upgrade apply'.\n", r.target, pcrList(changed), r.target)
			return nil, nil
		}
		return nil, fmt.Errorf("the image %s does not boot to attestation.measurements (PCRs %s differ): write its "+
			"measurements with 'constellation upgrade check --image %s --update-config'", r.target, pcrList(changed), r.target)
	}
	return r, nil
}

// rollout moves every node of an initialized local cluster to the configuration's image, one at a time,
// control planes first: cordon and drain it, reboot it into the new image with its state disk kept, let it
// rejoin (a control plane is recovered with the master secret, as no other control plane's JoinService runs
// its new image yet), wait until it is Ready, uncordon it and verify its attestation. While nodes move, the
// JoinService and `verify` accept both images; afterwards only the new one. Every step is idempotent, so a
// re-run after an interruption continues.
func (e *env) rollout(ctx context.Context, r *imageRollout, p *progress) (err error) {
	start := time.Now()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("the roll-out was interrupted (%w); nodes already moved stay on the new image and both "+
				"images stay trusted: re-run 'constellation apply' to continue", err)
		}
	}()
	if err := r.begin(ctx, e); err != nil {
		return err
	}
	ms, err := crypto.ReadMasterSecret(e.files, crypto.MasterSecretFileName)
	if err != nil {
		return fmt.Errorf("reading the master secret (restarted control planes need it): %w", err)
	}
	prepare, err := e.recoverRequest(ctx, r.cfg, ms)
	if err != nil {
		return err
	}
	fresh, err := e.validator(r.cfg, r.cfg.Attestation.Measurements.WithFreshNode())
	if err != nil {
		return err
	}
	member, err := r.cfg.Attestation.Measurements.WithClusterID(r.st.ClusterValues.ClusterID)
	if err != nil {
		return err
	}
	memberValidator, err := e.validator(r.cfg, member)
	if err != nil {
		return err
	}
	nodes, err := selectNodes(r.st, nil)
	if err != nil {
		return err
	}
	// Control planes first: a worker rejoins through a JoinService that runs its own new image.
	slices.SortStableFunc(nodes, func(a, b clusterclient.Target) int {
		return boolRank(a.Role != config.RoleControlPlane) - boolRank(b.Role != config.RoleControlPlane)
	})
	moved := 0
	for i, t := range nodes {
		p.Step("Node %s (%d of %d): image %s", t.Name, i+1, len(nodes), r.target)
		// A node moved now must report Ready after its reboot; one moved by an interrupted run is Ready already
		// (a kubelet that changes nothing reports only every few minutes).
		var since time.Time
		movedNow := r.images[t.Name] != r.target
		if movedNow {
			if err := e.drainNode(ctx, r.k8s, t.Name, p); err != nil {
				return fmt.Errorf("draining %s before it moves: %w\nNothing moved yet; fix the cause and re-run 'constellation apply'", t.Name, err)
			}
			p.Detail("rebooting %s into the new image (its state disk is kept)", t.Name)
			since = time.Now()
			moved++
		}
		// Also for a node whose rendered image is the target already: an interrupted run may have rendered it
		// without Terraform applying it. Terraform changes nothing for a node that runs it.
		if _, err := r.infra.MoveNode(ctx, r.cfg, t.Name, r.target); err != nil {
			return fmt.Errorf("moving %s to %s: %w\nRe-run 'constellation apply' to continue the roll-out", t.Name, r.target, err)
		}
		r.images[t.Name] = r.target
		if t.Role == config.RoleControlPlane {
			endpoint := net.JoinHostPort(t.IP, strconv.Itoa(recoverproto.Port))
			running, err := e.recoverNode(ctx, p, t, endpoint, fresh, prepare)
			if err != nil {
				return fmt.Errorf("unlocking %s after it moved: %w\nIf it failed attestation, nothing was sent to it; re-run "+
					"'constellation apply' to retry", t.Name, err)
			}
			if !running {
				p.Detail("unlocked %s with the master secret", t.Name)
				if err := e.waitForAPI(ctx, rolloutWait); err != nil {
					return fmt.Errorf("%s is unlocked, but the Kubernetes API does not answer: %w", t.Name, err)
				}
			}
		}
		if err := waitNodeReady(ctx, r.k8s, t.Name, since); err != nil {
			return fmt.Errorf("%w\nRe-run 'constellation apply' to continue; 'constellation status' shows the nodes", err)
		}
		// Verified before it is uncordoned: the VerificationService is a DaemonSet, so it runs on a cordoned node,
		// and a node that answers has finished its reboot.
		if res := e.verifyMovedNode(ctx, t, memberValidator); !res.Verified {
			return fmt.Errorf("%s runs the new image but does not verify: %s\nThe roll-out stops here; 'constellation verify' "+
				"shows the details", t.Name, res.Error)
		}
		// The reboot emptied the node's containerd: images loaded with `mini image load` go back in before
		// pods may be scheduled there. A node still cordoned was moved by an interrupted run.
		if movedNow || r.cordoned(ctx, t.Name) {
			e.reloadImages(ctx, r.cfg, r.st, r.infra, t.Name, p)
		}
		if err := kubeupgrade.Cordon(ctx, r.k8s, t.Name, false); err != nil {
			return fmt.Errorf("uncordoning %s: %w", t.Name, err)
		}
		p.Detail("%s is Ready and verified", t.Name)
		p.Done()
	}
	if err := r.finish(ctx, e); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "The roll-out to %s is complete (%s, %d node(s) moved by this run): every node runs it and "+
		"verified, and the cluster now trusts only its measurements.\n", r.target, time.Since(start).Round(100*time.Millisecond), moved)
	return nil
}

// verifyMovedNode verifies a node that just rebooted: its VerificationService (a DaemonSet pod) may not answer
// yet, so a node that does not answer is asked again for a while; an answer that fails validation is final.
func (e *env) verifyMovedNode(ctx context.Context, t clusterclient.Target, validator attestation.Validator) clusterclient.NodeResult {
	deadline := time.Now().Add(rolloutWait)
	for {
		res := clusterclient.VerifyNode(ctx, e.deps.attester, t, validator)
		if !res.Unreachable || time.Now().After(deadline) || ctx.Err() != nil {
			return res
		}
		select {
		case <-ctx.Done():
			return res
		case <-time.After(3 * time.Second):
		}
	}
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// begin records the roll-out: first in the admin's state (so that `verify` accepts nodes of both images),
// then in the cluster (so that the JoinService does). A resumed roll-out finds both done.
func (r *imageRollout) begin(ctx context.Context, e *env) error {
	if r.cluster.Rollout != nil || sameMeasurements(r.cluster.Measurements, r.cfg.Attestation.Measurements) {
		return nil
	}
	r.st.Rollout = &state.Rollout{PreviousMeasurements: r.cluster.Measurements, Image: r.target}
	if err := r.st.Write(e.files, state.FileName); err != nil {
		return err
	}
	next := r.cluster
	next.Measurements = r.cfg.Attestation.Measurements
	next.Rollout = &attestconfig.Rollout{PreviousMeasurements: r.cluster.Measurements}
	if err := r.writeCluster(ctx, next); err != nil {
		return fmt.Errorf("telling the JoinService to trust both images: %w", err)
	}
	fmt.Fprintf(e.errOut, "Roll-out started: the cluster trusts the measurements of the image it runs and of %s until every node moved.\n", r.target)
	return nil
}

// finish makes the new measurements the only trusted ones, in the cluster and in the admin's state.
func (r *imageRollout) finish(ctx context.Context, e *env) error {
	if r.cluster.Rollout != nil {
		next := r.cluster
		next.Rollout = nil
		if err := r.writeCluster(ctx, next); err != nil {
			return fmt.Errorf("every node moved, but ending the roll-out in the cluster failed: %w\nRe-run 'constellation apply'", err)
		}
	}
	if r.st.Rollout != nil {
		r.st.Rollout = nil
		return r.st.Write(e.files, state.FileName)
	}
	return nil
}

// writeCluster replaces the cluster's attestation config; a concurrent change makes it fail rather than be
// overwritten.
func (r *imageRollout) writeCluster(ctx context.Context, f attestconfig.File) error {
	data, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	// The JoinService refuses a file it cannot parse and keeps the last good one; refusing it here says why.
	if _, err := attestconfig.Parse(data, nil); err != nil {
		return fmt.Errorf("the new attestation config is invalid: %w", err)
	}
	cm := r.clusterCM.DeepCopy()
	cm.Data[attestconfig.FileName] = string(data)
	updated, err := r.k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	r.clusterCM, r.cluster = updated, f
	return nil
}

// drainNode cordons a node and evicts its pods (DaemonSet pods stay: they run on every node anyway).
func (e *env) drainNode(ctx context.Context, k8s kubernetes.Interface, name string, p *progress) error {
	p.Detail("cordoning %s and evicting its pods", name)
	return kubeupgrade.Drain(ctx, k8s, name, kubeupgrade.DefaultDrainTimeout)
}

// cordoned tells whether the node is marked unschedulable.
func (r *imageRollout) cordoned(ctx context.Context, name string) bool {
	node, err := r.k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	return err == nil && node.Spec.Unschedulable
}

// waitNodeReady waits until the node reports Ready with a heartbeat after since (a heartbeat from before the
// reboot does not count).
func waitNodeReady(ctx context.Context, k8s kubernetes.Interface, name string, since time.Time) error {
	// Heartbeats are whole seconds.
	since = since.Truncate(time.Second)
	var last string
	err := wait.PollUntilContextTimeout(ctx, kubernetesPoll, rolloutWait, true, func(ctx context.Context) (bool, error) {
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
		return fmt.Errorf("%s was not Ready again within %s: %s", name, rolloutWait, last)
	}
	return err
}
