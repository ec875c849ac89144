package cmd

import (
	"github.com/spf13/cobra"
)

func newConfigCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Generate, check and describe the cluster configuration",
		Long:  "Work with constellation-conf.yaml, the configuration of the cluster in the workspace.",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newConfigGenerateCmd(e))
	cmd.AddCommand(newConfigValidateCmd(e))
	cmd.AddCommand(newConfigSchemaCmd(e))
	cmd.AddCommand(newConfigFetchMeasurementsCmd(e))
	return cmd
}
