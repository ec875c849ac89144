package tfprovider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/diag"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/localprovider/daemon"
	"github.com/constellation-go/constellation/localprovider/metadata"
	"github.com/constellation-go/constellation/localprovider/node"
)

// clusterClaimFile, in a local network's directory, names the constellation_cluster resource that
// initialized the network's cluster: its nodes move to another image by that resource's roll-out, never by a
// node resource's restart.
const clusterClaimFile = "cluster-resource"

// claimRoot holds the local networks' directories (daemon.Dir) with their claims; tests move it.
var claimRoot = node.DefaultStateRoot

// clusterClaim is the name of the cluster resource that claimed the network's nodes, or empty.
func clusterClaim(network string) string {
	data, err := os.ReadFile(filepath.Join(claimRoot, network, clusterClaimFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// clusterInfra is what the cluster resource needs of its nodes' infrastructure: the image each node runs, a
// reboot into another one (a roll-out's step), and the claim that leaves the nodes' images to it.
type clusterInfra interface {
	imagerollout.Mover
	// RunningImages returns the image directory each named node runs; a node it cannot tell is missing.
	RunningImages(names []string) map[string]string
	// Claim marks the nodes as the cluster resource's to move (owner names it); an empty owner removes the mark.
	Claim(owner string) error
}

// localNodes are the nodes of a local network.
type localNodes struct{ network string }

// findLocalNodes returns the local network whose registered nodes include every target, by name and address.
func findLocalNodes(targets []clusterclient.Target) (clusterInfra, error) {
	entries, err := os.ReadDir(node.DefaultStateRoot)
	if err != nil {
		return nil, fmt.Errorf("listing the local networks: %w", err)
	}
	var found []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		instances, err := daemon.Instances(e.Name())
		if err != nil || len(instances) == 0 {
			continue
		}
		if !slices.ContainsFunc(targets, func(t clusterclient.Target) bool {
			return !slices.ContainsFunc(instances, func(in metadata.Instance) bool { return in.Name == t.Name && in.IP.String() == t.IP })
		}) {
			found = append(found, e.Name())
		}
	}
	switch len(found) {
	case 1:
		return localNodes{network: found[0]}, nil
	case 0:
		return nil, errors.New("no local network has all of the cluster's nodes (by name and address): are they " +
			"constellation_local_node resources of this machine?")
	default:
		return nil, fmt.Errorf("the local networks %s all have the cluster's nodes", strings.Join(found, ", "))
	}
}

func (l localNodes) RunningImages(names []string) map[string]string {
	images := map[string]string{}
	for _, n := range names {
		if img := node.RunningImage(node.StateDirFor(l.network, n)); img != "" {
			images[n] = img
		}
	}
	return images
}

// MoveNode restarts the node with image on its state disk, unless it runs that image already.
func (l localNodes) MoveNode(ctx context.Context, name, image string) error {
	img, err := filepath.Abs(image)
	if err != nil {
		return err
	}
	if node.RunningImage(node.StateDirFor(l.network, name)) == img {
		return nil
	}
	instances, err := daemon.Instances(l.network)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(instances, func(in metadata.Instance) bool { return in.Name == name })
	if i < 0 {
		return fmt.Errorf("the local network %s has no node %s", l.network, name)
	}
	spec, err := daemon.ReadSpec(l.network)
	if err != nil {
		return err
	}
	nw, err := spec.Network()
	if err != nil {
		return err
	}
	index, ok := nw.IndexOf(instances[i].IP)
	if !ok {
		return fmt.Errorf("%s's address %s is not one of the local network %s", name, instances[i].IP, l.network)
	}
	cfg, _, err := localNodeConfig(l.network, name, instances[i].Role, index, img, 0)
	if err != nil {
		return err
	}
	done, err := forBoot(&cfg)
	if err != nil {
		return err
	}
	defer done()
	cfg.Log.Info("moving the node to another image (a roll-out of the cluster resource)", "to", img)
	return restartNode(ctx, cfg)
}

func (l localNodes) Claim(owner string) error {
	file := filepath.Join(claimRoot, l.network, clusterClaimFile)
	if owner == "" {
		if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(owner+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// rolloutKey is the private state of a cluster resource whose roll-out did not finish: the image and the
// measurements it moves the nodes to. The state keeps the attestation from before (so the next plan applies
// the change again and the roll-out continues); Read accepts nodes that show either set meanwhile.
const rolloutKey = "rollout"

// pendingRollout is rolloutKey's value.
type pendingRollout struct {
	Image        string         `json:"image"`
	Measurements measurements.M `json:"measurements"`
}

// privateState is a resource's private state, which Terraform keeps with its state.
type privateState interface {
	GetKey(ctx context.Context, key string) ([]byte, diag.Diagnostics)
	SetKey(ctx context.Context, key string, value []byte) diag.Diagnostics
}

// privateRecord keeps the roll-out in the resource's private state, which Terraform saves with the state
// even when the apply fails: the admin's own record of which images are trusted.
type privateRecord struct {
	ctx     context.Context
	private privateState
	target  measurements.M
}

func (p privateRecord) Begin(_ measurements.M, image string) error {
	data, err := json.Marshal(pendingRollout{Image: image, Measurements: p.target})
	if err != nil {
		return err
	}
	if d := p.private.SetKey(p.ctx, rolloutKey, data); d.HasError() {
		return errors.New(diagText(d))
	}
	return nil
}

func (p privateRecord) Finish() error {
	if d := p.private.SetKey(p.ctx, rolloutKey, nil); d.HasError() {
		return errors.New(diagText(d))
	}
	return nil
}

// logReporter writes a roll-out's progress to the provider's log.
type logReporter struct{ log *slog.Logger }

func (l logReporter) Step(format string, args ...any) {
	l.log.Info("image roll-out: " + fmt.Sprintf(format, args...))
}
func (l logReporter) Detail(format string, args ...any) {
	l.log.Info("image roll-out: " + fmt.Sprintf(format, args...))
}
func (l logReporter) Done() {}

// rollImage moves every node of m's cluster to m's image_dir, as `constellation apply` does
// (imagerollout): the image must boot to m's measurements; the JoinService trusts both images until the last
// node moved and verified. An apply that stops halfway leaves both trusted; the next apply continues.
func (r *clusterResource) rollImage(ctx context.Context, m *clusterModel, private privateState, log *slog.Logger) error {
	att, err := m.attestationConfig(ctx)
	if err != nil {
		return err
	}
	if m.ImageDir.IsNull() || m.ImageDir.ValueString() == "" {
		return attrErrorf("image_dir", "new measurements are a roll-out to another node image: set image_dir to the "+
			"image whose measurements they are")
	}
	image, err := filepath.Abs(m.ImageDir.ValueString())
	if err != nil {
		return err
	}
	if err := r.checkImage(image, att.Measurements); err != nil {
		return err
	}
	targets, err := m.targets(ctx)
	if err != nil {
		return err
	}
	infra, err := r.infra(targets)
	if err != nil {
		return err
	}
	k8s, err := r.kube([]byte(m.Kubeconfig.ValueString()))
	if err != nil {
		return fmt.Errorf("the kubeconfig in the state: %w", err)
	}
	cluster, err := imagerollout.ReadCluster(ctx, k8s)
	if err != nil {
		return fmt.Errorf("%w\nIs the cluster up? Run terraform apply again when it answers", err)
	}
	needed, err := cluster.Check(att.Measurements)
	if errors.Is(err, imagerollout.ErrOtherRollout) {
		return attrErrorf("attestation", "%v: set image_dir and the attestation back to that image and apply, "+
			"which finishes it; then move on", err)
	}
	names := targetNames(targets)
	running := infra.RunningImages(names)
	// With the trusted measurements unchanged, only nodes known to run another directory move (to the same
	// image there); a node whose image is not recorded (started by an earlier provider) is left alone.
	if !needed && !slices.ContainsFunc(names, func(n string) bool { return running[n] != "" && running[n] != image }) {
		return nil
	}
	ms, given, err := m.givenMasterSecret()
	if err != nil {
		return err
	}
	if !given {
		return errors.New("the state holds no master secret, which restarted control planes need")
	}
	fresh, err := r.validator(att, att.Measurements.WithFreshNode())
	if err != nil {
		return err
	}
	member, err := r.memberValidator(m, att, att.Measurements)
	if err != nil {
		return err
	}
	run := imagerollout.Rollout{
		K8s: k8s, Cluster: cluster, Image: image, Measurements: att.Measurements, Nodes: targets, Running: running,
		Mover: infra,
		// User-managed keys are not part of the resource yet: the master secret unlocks a control plane.
		Unlocker: clusterclient.Recovery{
			API: r.recoverer, Booting: r.booting, Reachable: r.reachable, Validator: fresh,
			Prepare: func(context.Context, *recoverproto.DescribeResponse) (*recoverproto.RecoverRequest, error) {
				return &recoverproto.RecoverRequest{MasterSecret: ms.Key, Salt: ms.Salt}, nil
			},
		},
		Verifier: clusterclient.Verifier{API: r.attester, Validator: member},
		Recorder: privateRecord{ctx: ctx, private: private, target: att.Measurements},
		Reporter: logReporter{log: log},
		Options:  r.rollout,
	}
	log.Info("image roll-out", "image", image, "nodes", len(targets))
	res, err := run.Run(ctx)
	if err != nil {
		return rolloutFailed(err)
	}
	log.Info("image roll-out done", "image", image, "moved", res.Moved, "took", res.Took.String())
	return nil
}

// checkImage refuses an image that does not boot to the attestation's measurements: its nodes would reboot
// into it and then fail attestation.
func (r *clusterResource) checkImage(image string, want measurements.M) error {
	got, _, err := r.measure(image)
	if err != nil {
		return attrErrorf("image_dir", "measuring %s: %w", image, err)
	}
	if changed := upgrade.ChangedPCRs(want, got); len(changed) > 0 {
		return attrErrorf("image_dir", "%s does not boot to the attestation's measurements (PCRs %v differ): take both "+
			"from the same image (data.constellation_image, or the measurements published for it)", image, changed)
	}
	return nil
}

// rolloutFailed words a failed roll-out for Terraform.
func rolloutFailed(err error) error {
	var rerr *imagerollout.Error
	if errors.As(err, &rerr) && rerr.Step == imagerollout.StepVerify {
		return fmt.Errorf("%w\nThe roll-out stops here, with both images trusted: constellation verify -o json shows what "+
			"differs. Do not trust the node; fix the image and its measurements, then run terraform apply again", err)
	}
	return fmt.Errorf("%w\nNodes already moved stay on the new image and both images stay trusted; run terraform "+
		"apply again to continue the roll-out", err)
}
