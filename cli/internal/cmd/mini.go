package cmd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/state"
)

func newMiniCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mini",
		Short: "Run a small local cluster on this machine",
		Long: `A local cluster with one control plane and one worker: real kubeadm, real vTPM attestation,
each node in its own namespaces on this machine, booted from the node image beside the CLI.`,
	}
	up := &cobra.Command{
		Use:   "up",
		Short: "Create and initialize a local cluster (config generate local + apply)",
		Long: `Write a local configuration whose measurements are precomputed from the node image (unless the
workspace has one), create the nodes and initialize the cluster, in one command. The admin
kubeconfig is written to constellation-admin.conf.

--workers sizes the cluster (default: one control plane and one worker); it applies when the
configuration is written, so a workspace with a configuration keeps its own size. Re-running continues
an interrupted mini up; on a running cluster it changes nothing.`,
		Example: `  mkdir mycluster && cd mycluster
  constellation mini up
  constellation mini up --workers 4     # a control plane and four workers
  kubectl --kubeconfig constellation-admin.conf get nodes
  constellation verify
  constellation mini down`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			workers, err := cmd.Flags().GetInt(flagWorkers)
			if err != nil {
				return err
			}
			if workers < 0 || workers > maxMiniWorkers {
				return fmt.Errorf("--%s %d: a local cluster has 0 to %d workers (each takes about 250 MiB of memory)", flagWorkers, workers, maxMiniWorkers)
			}
			p := e.progress()
			if err := e.miniConfig(p, workers, cmd.Flags().Changed(flagWorkers)); err != nil {
				return err
			}
			return e.apply(cmd.Context(), p, false, true)
		},
	}
	up.Flags().Int(flagWorkers, 1, "number of worker nodes (the control plane is one node)")
	cmd.AddCommand(up)
	cmd.AddCommand(newMiniImageCmd(e))
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

func newMiniImageCmd(e *env) *cobra.Command {
	image := &cobra.Command{
		Use:   "image",
		Short: "Container images on the local cluster's nodes",
		Args:  cobra.NoArgs,
	}
	load := &cobra.Command{
		Use:   "load ARCHIVE",
		Short: "Load a container image archive into every node's containerd (local nodes reach no registry)",
		Long: `Import a container image archive (docker-archive or OCI image layout tarball, e.g. from
'docker save' or a Bazel image rule) into the containerd of every node of the local cluster, or of the
nodes named with --node, under the references it carries. Pods use it with imagePullPolicy: Never or
IfNotPresent.

A local node keeps its images in memory: after it restarts they are gone. The archive is recorded in
constellation-state.yaml, and 'constellation apply' loads it into each node an image roll-out moves
(if the file is still the one loaded); after any other restart, run this command again.`,
		Example: `  constellation mini image load ./myapp.tar
  kubectl --kubeconfig constellation-admin.conf create deployment myapp --image docker.io/library/myapp:v1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes, err := cmd.Flags().GetStringSlice(flagNode)
			if err != nil {
				return err
			}
			return e.miniImageLoad(cmd.Context(), args[0], nodes)
		},
	}
	load.Flags().StringSlice(flagNode, nil, "node to load the image into, by name or address (repeatable; default: every node)")
	_ = load.RegisterFlagCompletionFunc(flagNode, e.completeNodes)
	image.AddCommand(load)
	return image
}

// miniImageLoad loads a container image archive into the nodes and records it in the state.
func (e *env) miniImageLoad(ctx context.Context, archive string, only []string) error {
	cfg, st, err := e.loadCluster()
	if err != nil {
		return err
	}
	if cfg.GetProvider() != cloudprovider.Local {
		return fmt.Errorf("mini image load is for local clusters; %s nodes pull from a registry", cfg.GetProvider())
	}
	abs, err := filepath.Abs(archive)
	if err != nil {
		return err
	}
	digest, err := file.NewHandler(e.osFs).SHA256(abs)
	if err != nil {
		return fmt.Errorf("reading the image archive: %w", err)
	}
	targets, err := selectNodes(st, only)
	if err != nil {
		return err
	}
	p := e.progress()
	infra, err := e.infra(p)
	if err != nil {
		return err
	}
	var refs []string
	for _, t := range targets {
		p.Step("Loading %s into %s", filepath.Base(abs), t.name)
		if refs, err = infra.LoadImage(ctx, cfg, t.name, abs); err != nil {
			return fmt.Errorf("loading %s into %s: %w\nIs the node running? 'constellation status' shows the nodes; "+
				"re-running loads it into every node again", abs, t.name, err)
		}
		p.Done()
	}
	loaded := state.LoadedImage{Path: abs, SHA256: digest, Refs: refs}
	st.LoadedImages = slices.DeleteFunc(st.LoadedImages, func(l state.LoadedImage) bool { return l.Path == abs })
	st.LoadedImages = append(st.LoadedImages, loaded)
	if err := st.Write(e.files, state.FileName); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "Loaded %s into %d node(s): %s\nUse it with imagePullPolicy: Never or IfNotPresent.\n",
		filepath.Base(abs), len(targets), strings.Join(refs, ", "))
	return nil
}

// reloadImages loads the recorded image archives into a node that restarted (and so lost them); a file that
// changed or went away since it was loaded is reported, not loaded.
func (e *env) reloadImages(ctx context.Context, cfg *config.Config, st *state.State, infra infrastructure, node string, p *progress) {
	fh := file.NewHandler(e.osFs)
	for _, l := range st.LoadedImages {
		digest, err := fh.SHA256(l.Path)
		if err == nil && digest != l.SHA256 {
			err = errors.New("its content changed")
		}
		if err != nil {
			fmt.Fprintf(e.errOut, "Notice: %s is no longer the archive loaded before (%v), so %s does not have %s after its "+
				"restart: load it with 'constellation mini image load'\n", l.Path, err, node, strings.Join(l.Refs, ", "))
			continue
		}
		if _, err := infra.LoadImage(ctx, cfg, node, l.Path); err != nil {
			fmt.Fprintf(e.errOut, "Notice: loading %s into %s again failed: %v; load it with 'constellation mini image load'\n", l.Path, node, err)
			continue
		}
		p.Detail("loaded %s into %s again", filepath.Base(l.Path), node)
	}
}

const (
	flagWorkers = "workers"
	// maxMiniWorkers keeps a local cluster within what one machine runs.
	maxMiniWorkers = 20
)

// miniConfig writes a local configuration with workers worker nodes, measured from the image beside the
// CLI, or checks that the existing one is local (and, if workersSet, has that many workers).
func (e *env) miniConfig(p *progress, workers int, workersSet bool) error {
	cfg, err := config.Load(e.files, config.FileName)
	switch {
	case err == nil:
		if cfg.GetProvider() != cloudprovider.Local {
			return fmt.Errorf("%s is for provider %s; mini up needs a local configuration (use another workspace with -C)",
				e.path(config.FileName), cfg.GetProvider())
		}
		if g, ok := cfg.NodeGroups[config.DefaultWorkerGroup]; workersSet && ok && g.InitialCount != workers {
			return fmt.Errorf("%s has %d workers (nodeGroups.%s.initialCount), not the %d of --%s: the workspace's "+
				"configuration decides; change it there before the cluster is created, or use another workspace with -C",
				e.path(config.FileName), g.InitialCount, config.DefaultWorkerGroup, workers, flagWorkers)
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
	g := cfg.NodeGroups[config.DefaultWorkerGroup]
	g.InitialCount = workers
	cfg.NodeGroups[config.DefaultWorkerGroup] = g
	a, err := e.deps.artifacts()
	if err != nil {
		return err
	}
	img, err := a.ImageDir(cfg)
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
