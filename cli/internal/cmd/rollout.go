package cmd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/state"
)

// rolloutWait bounds how long a roll-out waits for a moved node to be Ready again.
var rolloutWait = 10 * time.Minute

// imageRollout is what moving a cluster to the configuration's image involves.
type imageRollout struct {
	cfg   *config.Config
	st    *state.State
	infra infrastructure
	k8s   kubernetes.Interface
	// target is the image the nodes move to.
	target string
	// cluster is the JoinService's attestation config as the cluster holds it.
	cluster *imagerollout.Cluster
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
	cluster, err := imagerollout.ReadCluster(ctx, k8s)
	if err != nil {
		return nil, err
	}
	r := &imageRollout{cfg: cfg, st: st, k8s: k8s, cluster: cluster}
	measurementsChanged := !cluster.Trusts(cfg.Attestation.Measurements)
	if cfg.GetProvider() != cloudprovider.Local {
		if measurementsChanged || cluster.InProgress() {
			return nil, fmt.Errorf("attestation.measurements differ from the cluster's, but moving %s nodes to another image "+
				"is not implemented yet (only local clusters roll out images)", cfg.GetProvider())
		}
		return nil, nil
	}
	if r.infra, r.images, r.target, err = e.imagePlacement(cfg, p); err != nil {
		return nil, err
	}
	needed, err := cluster.Check(cfg.Attestation.Measurements)
	if errors.Is(err, imagerollout.ErrOtherRollout) {
		return nil, fmt.Errorf("%w: finish it first by setting 'image' and attestation.measurements in %s back to "+
			"that image and re-running 'constellation apply'", err, e.path(config.FileName))
	}
	if !needed && r.allOnTarget() {
		return nil, nil
	}
	// The nodes would boot the image and then fail attestation against the measurements the cluster is told
	// to trust: never move a node to an image the configuration does not describe.
	m, err := measureImage(file.NewHandler(e.osFs), r.target)
	if err != nil {
		return nil, fmt.Errorf("measuring the image %s: %w", r.target, err)
	}
	if changed := upgrade.ChangedPCRs(cfg.Attestation.Measurements, m); len(changed) > 0 {
		if !measurementsChanged && !cluster.InProgress() {
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
// control planes first (imagerollout.Rollout): the infrastructure reboots a node into the new image with its
// state disk kept, a control plane is recovered with the master secret (no other control plane's JoinService
// runs its new image yet), and images loaded with `mini image load` go back into a moved node before it is
// uncordoned. While nodes move, the JoinService and `verify` accept both images; afterwards only the new one.
// A re-run after an interruption continues.
func (e *env) rollout(ctx context.Context, r *imageRollout, p *progress) error {
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
	run := imagerollout.Rollout{
		K8s: r.k8s, Cluster: r.cluster, Image: r.target, Measurements: r.cfg.Attestation.Measurements,
		Nodes: nodes, Running: r.images,
		Mover: moverFunc(func(ctx context.Context, node, image string) error {
			_, err := r.infra.MoveNode(ctx, r.cfg, node, image)
			return err
		}),
		Unlocker: e.recovery(p, fresh, prepare),
		Verifier: clusterclient.Verifier{API: e.deps.attester, Validator: memberValidator},
		Recorder: stateRecord{e: e, st: r.st},
		Reporter: p,
		Moved:    func(ctx context.Context, node string) { e.reloadImages(ctx, r.cfg, r.st, r.infra, node, p) },
		Options:  imagerollout.Options{Wait: rolloutWait, Poll: kubernetesPoll, DrainTimeout: kubeupgrade.DefaultDrainTimeout},
	}
	res, err := run.Run(ctx)
	if err != nil {
		return rolloutFailed(ctx, err)
	}
	fmt.Fprintf(e.out, "The roll-out to %s is complete (%s, %d node(s) moved by this run): every node runs it and "+
		"verified, and the cluster now trusts only its measurements.\n", r.target, res.Took.Round(100*time.Millisecond), res.Moved)
	return nil
}

// rolloutFailed words a failed roll-out: what happened to the node, and how to go on.
func rolloutFailed(ctx context.Context, err error) error {
	var rerr *imagerollout.Error
	if ctx.Err() != nil || !errors.As(err, &rerr) {
		return fmt.Errorf("the roll-out was interrupted (%w); nodes already moved stay on the new image and both "+
			"images stay trusted: re-run 'constellation apply' to continue", err)
	}
	switch rerr.Step {
	case imagerollout.StepDrain:
		return fmt.Errorf("%w\nNothing moved yet; fix the cause and re-run 'constellation apply'", err)
	case imagerollout.StepUnlock:
		return fmt.Errorf("%w\nIf it failed attestation, nothing was sent to it; re-run 'constellation apply' to retry", err)
	case imagerollout.StepVerify:
		return fmt.Errorf("%w\nThe roll-out stops here; 'constellation verify' shows the details", err)
	case imagerollout.StepReady:
		return fmt.Errorf("%w\nRe-run 'constellation apply' to continue; 'constellation status' shows the nodes", err)
	default:
		return fmt.Errorf("%w\nRe-run 'constellation apply' to continue the roll-out", err)
	}
}

type moverFunc func(ctx context.Context, node, image string) error

func (f moverFunc) MoveNode(ctx context.Context, node, image string) error {
	return f(ctx, node, image)
}

// stateRecord keeps the roll-out in constellation-state.yaml, so that `verify` accepts nodes of both images
// from the admin's own files rather than from the cluster's say.
type stateRecord struct {
	e  *env
	st *state.State
}

func (s stateRecord) Begin(previous measurements.M, image string) error {
	if s.st.Rollout != nil {
		return nil
	}
	s.st.Rollout = &state.Rollout{PreviousMeasurements: previous, Image: image}
	if err := s.st.Write(s.e.files, state.FileName); err != nil {
		return err
	}
	fmt.Fprintf(s.e.errOut, "Roll-out started: the cluster trusts the measurements of the image it runs and of %s until every node moved.\n", image)
	return nil
}

func (s stateRecord) Finish() error {
	if s.st.Rollout == nil {
		return nil
	}
	s.st.Rollout = nil
	return s.st.Write(s.e.files, state.FileName)
}
