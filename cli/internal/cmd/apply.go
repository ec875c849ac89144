package cmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/constellation-go/constellation/cli/internal/terraform"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/choose"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// Workspace files apply writes.
const (
	AdminConfFile  = state.AdminConfFileName
	ClusterLogFile = "constellation-cluster.log"
)

const flagMergeKubeconfig = "merge-kubeconfig"

func newApplyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "apply",
		Aliases: []string{"init"},
		Short:   "Create the infrastructure if needed and initialize the cluster",
		Long: `Bring the cluster to what constellation-conf.yaml describes:

  1. create the infrastructure if constellation-state.yaml records none (as 'constellation create');
  2. generate the master secret and salt into constellation-mastersecret.json (mode 0600; keep it:
     it is the only way to recover the nodes' keys);
  3. connect to the first control plane over attested TLS and check its attestation against
     attestation.measurements (and PCR 15 zero: a node that never joined a cluster) before
     anything is sent;
  4. send the init request (init secret, master secret, Kubernetes version and pinned components)
     and follow the node's progress;
  5. write the admin kubeconfig to constellation-admin.conf.

If the node fails attestation, nothing is sent and the differing measurements are listed. If
initialization fails on the node, its logs are written to constellation-cluster.log. After an
interruption, running apply again continues.

On an initialized cluster, apply moves the nodes to the configuration's node image when it differs
(write it with 'constellation upgrade check --update-config'): one node at a time, control planes
first, each cordoned and drained, rebooted into the new image with its state disk kept, unlocked
(control planes, with the master secret) or rejoined (workers), Ready, uncordoned and verified. While
nodes move, the JoinService and 'constellation verify' accept both images; afterwards only the new one.
An interrupted roll-out continues when apply runs again. Otherwise apply changes nothing.`,
		Example: `  constellation apply
  constellation apply --merge-kubeconfig     # also add the cluster to ~/.kube/config`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			merge, err := cmd.Flags().GetBool(flagMergeKubeconfig)
			if err != nil {
				return err
			}
			return e.apply(cmd.Context(), e.progress(), merge, false)
		},
	}
	cmd.Flags().Bool(flagMergeKubeconfig, false, "merge the cluster's admin kubeconfig into your kubeconfig ($KUBECONFIG or ~/.kube/config)")
	return cmd
}

// apply creates (if needed) and initializes the cluster. replaceCA lets the platform's CA replace another
// attestation.platformCA (mini up, which owns its configuration).
func (e *env) apply(ctx context.Context, p *progress, merge, replaceCA bool) error {
	cfg, err := e.loadConfig()
	if err != nil {
		return err
	}
	if len(cfg.Attestation.Measurements) == 0 {
		return fmt.Errorf("attestation.measurements in %s is empty, so no node could be trusted: fill it in with "+
			"'constellation config fetch-measurements' or 'constellation image measure'", e.path(config.FileName))
	}
	st, err := e.readState()
	if err != nil {
		return err
	}
	if st.IsInitialized() {
		return e.applyInitialized(ctx, cfg, st, p)
	}
	// Every run applies the infrastructure (Terraform is idempotent): it completes an interrupted create,
	// and starts a node that stopped, such as a first control plane that lost power during its init.
	if st, err = e.create(ctx, cfg, p, replaceCA); err != nil {
		return err
	}
	if err := e.initCluster(ctx, cfg, st, p); err != nil {
		return err
	}
	if merge {
		if err := e.mergeKubeconfig(); err != nil {
			return fmt.Errorf("the cluster is initialized, but merging the kubeconfig failed: %w", err)
		}
	}
	fmt.Fprintf(e.out, "Your cluster %s is initialized (%s).\n  Cluster ID:  %s\n  Kubeconfig:  %s\n"+
		"Use it with:  kubectl --kubeconfig %s get nodes\nVerify nodes: constellation verify\n",
		cfg.Name, p.Total(), st.ClusterValues.ClusterID, e.path(AdminConfFile), e.path(AdminConfFile))
	return nil
}

// applyInitialized brings an initialized cluster to the configuration: its services (the chart of this
// CLI), its key backend, its Kubernetes version, then its node image (a roll-out). Both upgrades are
// planned, and refused if they must be, before anything changes.
func (e *env) applyInitialized(ctx context.Context, cfg *config.Config, st *state.State, p *progress) error {
	const recoverFirst = "\n(If every control plane restarted, unlock them first with 'constellation recover'.)"
	k8sUpgrade, err := e.planKubernetes(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%w%s", err, recoverFirst)
	}
	// Applied with the configuration's Kubernetes version: the local provider's component server then serves
	// it (beside every other version built here, which nodes not yet moved still install).
	if err := e.checkInfrastructure(ctx, cfg, st, p); err != nil {
		return err
	}
	r, err := e.planRollout(ctx, cfg, st, p)
	if err != nil {
		return fmt.Errorf("%w%s", err, recoverFirst)
	}
	servicesChanged, err := e.upgradeServices(ctx, p)
	if err != nil {
		return err
	}
	if err := e.applyKeyBackend(ctx, cfg, p); err != nil {
		return err
	}
	if k8sUpgrade == nil && r == nil && servicesChanged {
		fmt.Fprintf(e.out, "The services of cluster %s are upgraded; its Kubernetes version and node image are what %s describes.\n",
			st.Infrastructure.Name, e.path(config.FileName))
		return nil
	}
	if k8sUpgrade == nil && r == nil {
		fmt.Fprintf(e.out, "The cluster %s is initialized (cluster ID %s) and runs what %s describes; nothing to do.\n"+
			"Check its nodes with 'constellation verify'.\n", st.Infrastructure.Name, st.ClusterValues.ClusterID, e.path(config.FileName))
		return nil
	}
	if k8sUpgrade != nil {
		if err := e.upgradeKubernetes(ctx, cfg, k8sUpgrade, p); err != nil {
			return err
		}
	}
	if r == nil {
		return nil
	}
	return e.rollout(ctx, r, p)
}

// checkInfrastructure applies the infrastructure of an initialized cluster again: nodes that stopped (a
// power cut, a crash of the machine) are started on their state disks and come back through the
// JoinService, and the local provider's daemon is restarted if it died. Each node keeps the image it runs.
func (e *env) checkInfrastructure(ctx context.Context, cfg *config.Config, st *state.State, p *progress) error {
	nodes := terraform.Nodes(cfg)
	for _, n := range nodes {
		if _, ok := st.Infrastructure.Nodes[n.Name]; !ok {
			return fmt.Errorf("%s describes node %s, which the initialized cluster does not have: adding nodes to an "+
				"initialized cluster is not supported yet; set nodeGroups back to the cluster's %d nodes",
				e.path(config.FileName), n.Name, len(st.Infrastructure.Nodes))
		}
	}
	if len(nodes) != len(st.Infrastructure.Nodes) {
		return fmt.Errorf("%s describes %d nodes, the initialized cluster has %d: removing nodes is not supported yet; "+
			"set nodeGroups back", e.path(config.FileName), len(nodes), len(st.Infrastructure.Nodes))
	}
	infra, err := e.infra(p)
	if err != nil {
		return err
	}
	p.Step(checkingInfrastructure, cfg.GetProvider(), len(nodes))
	if _, err := infra.Apply(ctx, cfg); err != nil {
		return fmt.Errorf("checking the infrastructure: %w\nRe-run the command to continue", err)
	}
	p.Done()
	return nil
}

// masterSecret reads the workspace's master secret, or generates and writes one. An interrupted apply
// reuses it: a node that already took its lock with it must get the same secret again.
func (e *env) masterSecret(p *progress) (ms crypto.MasterSecret, existed bool, err error) {
	ms, created, err := crypto.LoadOrCreateMasterSecret(e.files, crypto.MasterSecretFileName)
	if err != nil {
		return crypto.MasterSecret{}, false, err
	}
	if created {
		p.Detail("wrote %s (mode 0600): back it up, it is the only way to recover the nodes' keys", e.path(crypto.MasterSecretFileName))
	}
	return ms, !created, nil
}

func (e *env) initCluster(ctx context.Context, cfg *config.Config, st *state.State, p *progress) error {
	// Read before anything is sent: a missing credentials file must not leave a half-initialized node.
	kmsCreds, err := e.kmsCredentials(cfg)
	if err != nil {
		return err
	}
	infra, err := e.infra(p)
	if err != nil {
		return err
	}
	ms, resuming, err := e.masterSecret(p)
	if err != nil {
		return err
	}
	_, initSecret, err := infra.Identity()
	if err != nil {
		return err
	}
	comps, err := e.components(ctx, cfg, infra)
	if err != nil {
		return err
	}
	version, err := versions.ResolveKubernetes(cfg.KubernetesVersion)
	if err != nil {
		return err
	}
	r, err := clusterclient.NewInitRequest(clusterclient.InitConfig{
		Endpoint: st.Infrastructure.ClusterEndpoint, APIServerCertSANs: st.Infrastructure.APIServerCertSANs,
		MasterSecret: ms, Resuming: resuming, InitSecret: initSecret, ClusterName: cfg.Name, KubernetesVersion: version,
		Components: comps, Attestation: cfg.Attestation, KMSURI: cfg.KMS.URI(), KMSCredentials: kmsCreds,
		Validator: func(refs measurements.M) (attestation.Validator, error) { return e.validator(cfg, refs) },
	})
	if err != nil {
		return err
	}
	endpoint := r.Endpoint
	p.Step("Initializing the first control plane at %s (its attestation is checked first)", endpoint)
	r.Progress = func(step, msg string) { p.Detail("%s: %s", step, msg) }
	r.Notice = func(msg string) { p.Detail("%s", msg) }
	resp, err := clusterclient.Init(ctx, e.deps.initer, e.deps.booting, r)
	if err != nil {
		return e.initFailed(ctx, endpoint, err)
	}
	p.Done()
	if err := e.files.Write(AdminConfFile, resp.GetKubeconfig(), file.OptOverwrite, file.OptSecret); err != nil {
		return err
	}
	st.ClusterValues = state.ClusterValues{ClusterID: r.Identity.ClusterID, OwnerID: r.Identity.OwnerID, MeasurementSalt: ms.Salt}
	return st.Write(e.files, state.FileName)
}

func (e *env) initFailed(ctx context.Context, endpoint string, err error) error {
	var failed *clusterclient.InitFailedError
	if errors.As(err, &failed) {
		if werr := e.files.Write(ClusterLogFile, failed.Logs, file.OptOverwrite, file.OptSecret); werr != nil {
			return fmt.Errorf("initializing the cluster failed: %w (and writing its logs failed: %w)", err, werr)
		}
		return fmt.Errorf("initializing the cluster failed: %w\nThe node's logs are in %s. Fix the cause and re-run "+
			"'constellation apply', or remove the cluster with 'constellation terminate'", err, e.path(ClusterLogFile))
	}
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
		return fmt.Errorf("interrupted while initializing the cluster (the node carries on): re-run 'constellation apply' to continue")
	}
	if errors.Is(err, clusterclient.ErrInitCutOff) {
		return fmt.Errorf("initializing the cluster at %s failed: %w\nThe node restarted or lost power during its init "+
			"(or the network failed). Re-run 'constellation apply': it starts the node again if it is stopped, and "+
			"the node redoes the cut-off init on the same state disk", endpoint, err)
	}
	return fmt.Errorf("initializing the cluster at %s failed: %w\nIf the node failed attestation, nothing was sent to it: "+
		"check attestation.measurements (e.g. with 'constellation config fetch-measurements') and the node image", endpoint, err)
}

// validator returns the configuration's validator for refs.
func (e *env) validator(cfg *config.Config, refs measurements.M) (attestation.Validator, error) {
	return choose.ForConfig(cfg.Attestation, refs, e.log)
}

// components are what the first control plane installs: for local, the pinned Kubernetes set and the
// services' images, served by the provider's component server.
func (e *env) components(ctx context.Context, cfg *config.Config, infra infrastructure) ([]*components.Component, error) {
	if cfg.GetProvider() != cloudprovider.Local {
		return nil, fmt.Errorf("initializing %s clusters is not supported yet: only the local provider serves the "+
			"Kubernetes components to its nodes", cfg.GetProvider())
	}
	out, err := infra.Outputs(ctx)
	if err != nil {
		return nil, err
	}
	a, err := e.deps.artifacts()
	if err != nil {
		return nil, err
	}
	comps, notices, err := versions.ClusterComponents(out.ComponentURL, cfg.KubernetesVersion, a.ServicesDir())
	for _, n := range notices {
		fmt.Fprintf(e.errOut, "Notice: %s\n", n)
	}
	return comps, err
}

// mergeKubeconfig adds the admin kubeconfig's cluster, user and context to the user's kubeconfig and
// makes it the current context.
func (e *env) mergeKubeconfig() error {
	admin, err := e.files.Read(AdminConfFile)
	if err != nil {
		return err
	}
	adminCfg, err := clientcmd.Load(admin)
	if err != nil {
		return err
	}
	target := e.deps.kubeconfigPath()
	fh := file.NewHandler(e.osFs)
	existing, err := fh.Read(target)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	userCfg, err := clientcmd.Load(existing)
	if err != nil {
		return fmt.Errorf("parsing %s: %w", target, err)
	}
	for k, v := range adminCfg.Clusters {
		userCfg.Clusters[k] = v
	}
	for k, v := range adminCfg.AuthInfos {
		userCfg.AuthInfos[k] = v
	}
	for k, v := range adminCfg.Contexts {
		userCfg.Contexts[k] = v
	}
	userCfg.CurrentContext = adminCfg.CurrentContext
	data, err := clientcmd.Write(*userCfg)
	if err != nil {
		return err
	}
	if bytes.Equal(data, existing) {
		return nil
	}
	if err := e.osFs.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return err
	}
	if err := fh.Write(target, data, file.OptOverwrite, file.OptSecret); err != nil {
		return err
	}
	fmt.Fprintf(e.errOut, "Merged the cluster into %s (current context %s).\n", target, adminCfg.CurrentContext)
	return nil
}
