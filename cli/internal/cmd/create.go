package cmd

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/cli/internal/terraform"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/state"
)

func newCreateCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "create",
		Short: "Create the cluster's infrastructure (nodes, network) with Terraform",
		Long: `Create the infrastructure that constellation-conf.yaml describes: the provider's Terraform
module is rendered into constellation-terraform/ and applied; what it created is recorded in
constellation-state.yaml. Nodes boot and wait for 'constellation apply'.

Re-running continues an interrupted create; on an existing infrastructure it changes nothing
that still matches the configuration.`,
		Example: `  constellation config generate local
  constellation create
  constellation apply`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := e.loadConfig()
			if err != nil {
				return err
			}
			p := e.progress()
			st, err := e.create(cmd.Context(), cfg, p, false)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.out, "Created the infrastructure of %s (%d nodes, endpoint %s) in %s. Next: constellation apply\n",
				cfg.Name, len(st.Infrastructure.Nodes), st.Infrastructure.ClusterEndpoint, p.Total())
			return nil
		},
	}
}

// loadConfig reads and validates the workspace's configuration.
func (e *env) loadConfig() (*config.Config, error) {
	cfg, err := config.Load(e.files, config.FileName)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no %s: write one with 'constellation config generate <provider>' (or pass the workspace with -C)",
			e.path(config.FileName))
	}
	if err != nil {
		return nil, fmt.Errorf("%w\nFix the fields above, then check with 'constellation config validate'", err)
	}
	return cfg, nil
}

// readState returns the workspace's state, or a new one if there is none.
func (e *env) readState() (*state.State, error) {
	st, err := state.Read(e.files, state.FileName)
	if errors.Is(err, fs.ErrNotExist) {
		return state.New(), nil
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

// requireState reads the state of a created cluster.
func (e *env) requireState() (*state.State, error) {
	st, err := e.readState()
	if err != nil {
		return nil, err
	}
	if !st.HasInfrastructure() {
		return nil, fmt.Errorf("no cluster in %s: create one with 'constellation apply' (or pass its workspace with -C)",
			e.path(state.FileName))
	}
	return st, nil
}

// loadCluster reads the configuration and the state of a created cluster.
func (e *env) loadCluster() (*config.Config, *state.State, error) {
	cfg, err := e.loadConfig()
	if err != nil {
		return nil, nil, err
	}
	st, err := e.requireState()
	return cfg, st, err
}

// loadInitialized is loadCluster for commands that need an initialized cluster; what names what they do.
func (e *env) loadInitialized(what string) (*config.Config, *state.State, error) {
	cfg, st, err := e.loadCluster()
	if err != nil {
		return nil, nil, err
	}
	if !st.IsInitialized() {
		return nil, nil, fmt.Errorf("the cluster was never initialized: there is nothing to %s (initialize it with 'constellation apply')", what)
	}
	return cfg, st, nil
}

// workspaceDir is the absolute path of the workspace, for the tools that run in it.
func (e *env) workspaceDir() (string, error) {
	ws := e.workspace
	if ws == "" {
		ws = "."
	}
	return filepath.Abs(ws)
}

func (e *env) infra(p *progress) (infrastructure, error) {
	ws, err := e.workspaceDir()
	if err != nil {
		return nil, err
	}
	if err := e.osFs.MkdirAll(ws, 0o755); err != nil {
		return nil, err
	}
	return e.deps.infra(ws, func(line string) { p.Detail("%s", line) })
}

// checkingInfrastructure is the step of an apply that runs Terraform on infrastructure that exists (provider,
// number of nodes).
const checkingInfrastructure = "Checking the infrastructure (%s, %d nodes); stopped nodes are started again"

// create applies the infrastructure and records it in the state.
func (e *env) create(ctx context.Context, cfg *config.Config, p *progress, replaceCA bool) (*state.State, error) {
	st, err := e.readState()
	if err != nil {
		return nil, err
	}
	infra, err := e.infra(p)
	if err != nil {
		return nil, err
	}
	if st.HasInfrastructure() {
		p.Step(checkingInfrastructure, cfg.GetProvider(), len(terraform.Nodes(cfg)))
	} else {
		p.Step("Creating the infrastructure (%s, %d nodes)", cfg.GetProvider(), len(terraform.Nodes(cfg)))
	}
	out, err := infra.Apply(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the infrastructure: %w\nRe-run the command to continue; 'constellation terminate' removes what was created", err)
	}
	uid, secret, err := infra.Identity()
	if err != nil {
		return nil, err
	}
	hash := sha256.Sum256(secret)
	st.Infrastructure = state.Infrastructure{
		UID: uid, Provider: cfg.GetProvider().String(), Name: cfg.Name,
		ClusterEndpoint: out.ClusterEndpoint, InClusterEndpoint: out.InClusterEndpoint, InitSecretHash: hash[:],
		APIServerCertSANs: out.APIServerCertSANs, IPCidrNode: out.IPCidrNode, Nodes: map[string]state.Node{},
	}
	for name, n := range out.Nodes {
		st.Infrastructure.Nodes[name] = state.Node{IP: n.IP, Role: n.Role}
	}
	if err := st.Write(e.files, state.FileName); err != nil {
		return nil, err
	}
	if err := e.trustPlatformCA(cfg, out.PlatformCA, replaceCA, p); err != nil {
		return nil, err
	}
	p.Done()
	return st, nil
}

// trustPlatformCA records the CA that certifies the nodes' vTPMs (reported by the provider) in the
// configuration's attestation.platformCA, the trust root of qemu-vtpm attestation keys. An empty field is
// filled in; a different CA is refused unless replace is set (mini up, which owns its configuration): the
// configured CA is the admin's statement of which platform to trust. cfg is updated in place.
func (e *env) trustPlatformCA(cfg *config.Config, pemCert string, replace bool, p *progress) error {
	if pemCert == "" || cfg.Attestation.PlatformCA == pemCert {
		return nil
	}
	certs, err := akcert.ParseCertificates([]byte(pemCert))
	if err != nil {
		return fmt.Errorf("the provider reported a platform CA that is not a PEM certificate: %w", err)
	}
	fingerprint := sha256.Sum256(certs[0].Raw)
	if cfg.Attestation.PlatformCA != "" && !replace {
		return fmt.Errorf("attestation.platformCA in %s names another CA than the one the provider's platform certifies "+
			"its vTPMs with (SHA-256 fingerprint %x): nodes would be refused. If the platform was re-created (e.g. after "+
			"'constellation terminate') and you trust it, remove attestation.platformCA and re-run the command",
			e.path(config.FileName), fingerprint)
	}
	data, err := e.files.Read(config.FileName)
	if err != nil {
		return err
	}
	if data, err = config.SetPlatformCA(data, pemCert); err != nil {
		return fmt.Errorf("writing attestation.platformCA: %w", err)
	}
	if err := e.files.Write(config.FileName, data, file.OptOverwrite); err != nil {
		return err
	}
	cfg.Attestation.PlatformCA = pemCert
	p.Detail("wrote the platform's CA (SHA-256 fingerprint %x) to attestation.platformCA in %s: only vTPMs it certified are trusted",
		fingerprint, e.path(config.FileName))
	return nil
}
