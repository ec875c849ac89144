package cmd

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/buildinfo"
)

func newVersionCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's version, commit and Go version",
		Example: `  constellation version
  constellation version -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := outputFormat(cmd)
			if err != nil {
				return err
			}
			info := buildinfo.Get()
			if format == outputJSON {
				enc := json.NewEncoder(e.out)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			commit := info.Commit
			if commit == "" {
				commit = "unknown"
			}
			if info.Modified {
				commit += " (modified)"
			}
			_, err = fmt.Fprintf(e.out, "Version:\t%s\nCommit:\t\t%s\nGo version:\t%s\nPlatform:\t%s\n",
				info.Version, commit, info.GoVersion, info.Platform)
			return err
		},
	}
	addOutputFlag(cmd)
	return cmd
}
