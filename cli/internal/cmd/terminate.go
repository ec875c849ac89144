package cmd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/state"
)

const flagYes = "yes"

func newTerminateCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "terminate",
		Short: "Destroy the cluster and all its infrastructure",
		Long: `Destroy every resource 'constellation create' made (nodes, their disks, the network) with
Terraform, then remove constellation-state.yaml and constellation-admin.conf from the workspace.

The cluster's data is gone afterwards. The master secret (constellation-mastersecret.json) is
kept: delete it yourself once you no longer need backups made with the cluster's keys.
Without --yes, terminate asks for confirmation, and refuses when it cannot ask (no terminal).`,
		Example: `  constellation terminate
  constellation terminate --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			yes, err := cmd.Flags().GetBool(flagYes)
			if err != nil {
				return err
			}
			return e.terminate(cmd.Context(), yes)
		},
	}
	cmd.Flags().BoolP(flagYes, "y", false, "do not ask for confirmation")
	return cmd
}

func (e *env) terminate(ctx context.Context, yes bool) error {
	st, err := e.readState()
	if err != nil {
		return err
	}
	name := st.Infrastructure.Name
	if name == "" {
		name = "the cluster in " + e.path(".")
	}
	if !yes {
		if !e.deps.isTerminal() {
			return fmt.Errorf("refusing to destroy %s without confirmation: pass --%s", name, flagYes)
		}
		fmt.Fprintf(e.errOut, "This destroys %s and all its data. Type 'yes' to continue: ", name)
		answer, _ := bufio.NewReader(e.in).ReadString('\n')
		if strings.TrimSpace(answer) != "yes" {
			return errors.New("terminate cancelled: nothing was changed")
		}
	}
	p := e.progress()
	infra, err := e.infra(p)
	if err != nil {
		return err
	}
	p.Step("Destroying the infrastructure of %s", name)
	if err := infra.Destroy(ctx); err != nil {
		return fmt.Errorf("destroying the infrastructure: %w\nRe-run 'constellation terminate' to continue", err)
	}
	p.Done()
	for _, f := range []string{state.FileName, AdminConfFile, ClusterLogFile} {
		if err := e.files.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	fmt.Fprintf(e.out, "Terminated %s (%s).", name, p.Total())
	if ok, _ := e.files.Exists(crypto.MasterSecretFileName); ok {
		fmt.Fprintf(e.out, " %s was kept.", e.path(crypto.MasterSecretFileName))
	}
	fmt.Fprintln(e.out)
	return nil
}
