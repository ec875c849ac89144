package cmd

import (
	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/config"
)

func newConfigSchemaCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "schema",
		Short: "Print the JSON Schema of constellation-conf.yaml",
		Long: `Print the JSON Schema of constellation-conf.yaml, generated from the CLI's own types.
Editors with a YAML language server can use it for completion and checks.`,
		Example: `  constellation config schema > constellation-conf.schema.json`,
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			schema, err := config.Schema()
			if err != nil {
				return err
			}
			_, err = e.out.Write(schema)
			return err
		},
	}
}
