package cmd

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
)

func newMiniCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mini",
		Short: "Run a small local cluster on this machine",
		Long: `A local cluster with one control plane and one worker: real kubeadm, real vTPM attestation,
each node in its own namespaces on this machine, booted from the node image beside the CLI.`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "up",
		Short: "Create and initialize a local cluster (config generate local + apply)",
		Long: `Write a local configuration whose measurements are precomputed from the node image (unless the
workspace has one), create the nodes and initialize the cluster, in one command. The admin
kubeconfig is written to constellation-admin.conf.

Re-running continues an interrupted mini up; on a running cluster it changes nothing.`,
		Example: `  mkdir mycluster && cd mycluster
  constellation mini up
  kubectl --kubeconfig constellation-admin.conf get nodes
  constellation verify
  constellation mini down`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := e.progress()
			if err := e.miniConfig(p); err != nil {
				return err
			}
			return e.apply(cmd.Context(), p, false, true)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:     "down",
		Short:   "Destroy the local cluster (terminate --yes)",
		Example: "  constellation mini down",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.terminate(cmd.Context(), true)
		},
	})
	return cmd
}

// miniConfig writes a local configuration measured from the image beside the CLI, or checks that the
// existing one is local.
func (e *env) miniConfig(p *progress) error {
	cfg, err := config.Load(e.files, config.FileName)
	switch {
	case err == nil:
		if cfg.GetProvider() != cloudprovider.Local {
			return fmt.Errorf("%s is for provider %s; mini up needs a local configuration (use another workspace with -C)",
				e.path(config.FileName), cfg.GetProvider())
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w\nFix the fields above, or use another workspace with -C", err)
	}
	p.Step("Writing a local configuration measured from the node image")
	cfg, err = config.Default(cloudprovider.Local)
	if err != nil {
		return err
	}
	a, err := e.deps.artifacts()
	if err != nil {
		return err
	}
	img, err := a.imageDir(cfg)
	if err != nil {
		return err
	}
	m, err := measureImage(file.NewHandler(e.osFs), img)
	if err != nil {
		return err
	}
	data, err := cfg.Marshal()
	if err != nil {
		return err
	}
	if data, err = config.SetMeasurements(data, m); err != nil {
		return err
	}
	if err := e.files.Write(config.FileName, data, file.OptMkdirAll); err != nil {
		return err
	}
	p.Detail("wrote %s (PCRs precomputed from %s)", e.path(config.FileName), filepath.Join(img, "constellation.efi"))
	p.Done()
	return nil
}

// measureImage precomputes the PCRs a node booted from the image directly by the local provider's launcher
// (which models a generic UEFI firmware, precompute.Options' default) shows, and PCR 15 zero.
func measureImage(fh file.Handler, img string) (measurements.M, error) {
	_, _, m, err := precomputeUKI(fh, filepath.Join(img, "constellation.efi"),
		bootOptions{platform: &precompute.GenericUEFI, path: precompute.BootDirect})
	return m, err
}
