// Package cmd implements the constellation commands, one file each. Every command does its file I/O
// through an afero file system so that tests run on memory.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/afero"
	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/file"
)

// Flags shared by every command.
const (
	flagWorkspace = "workspace"
	flagDebug     = "debug"
	flagOutput    = "output"
)

// Output formats for -o.
const (
	outputText = "text"
	outputJSON = "json"
)

// env is what the commands share: the workspace's files, the logger and the output streams. It is built
// by the root command before any sub-command runs.
type env struct {
	osFs      afero.Fs
	workspace string
	files     file.Handler
	log       *slog.Logger
	in        io.Reader
	out       io.Writer
	errOut    io.Writer
	deps      deps
}

// path returns how to show a workspace file to the user.
func (e *env) path(name string) string {
	if e.workspace == "" {
		return name
	}
	return filepath.Join(e.workspace, name)
}

// NewRootCmd returns the constellation command tree working on fs.
func NewRootCmd(fs afero.Fs, in io.Reader, out, errOut io.Writer) *cobra.Command {
	return newRootCmd(&env{osFs: fs, in: in, out: out, errOut: errOut, deps: defaultDeps()})
}

func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "constellation",
		Short: "Manage confidential Kubernetes clusters whose nodes prove what they run",
		Long: `constellation creates and manages Kubernetes clusters whose nodes attest their boot
measurements (TPM PCRs) before they receive keys or join the cluster.

A workspace directory holds a cluster's files: constellation-conf.yaml (configuration),
constellation-state.yaml (state), constellation-mastersecret.json (the master secret) and
constellation-admin.conf (the admin kubeconfig).`,
		Example: `  # Write a configuration for a local cluster into ./mycluster
  constellation -C mycluster config generate local`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return e.setup(cmd)
		},
	}
	root.SetIn(e.in)
	root.SetOut(e.out)
	root.SetErr(e.errOut)
	root.PersistentFlags().StringP(flagWorkspace, "C", "", "workspace directory holding the cluster's files (default: the current directory)")
	root.PersistentFlags().Bool(flagDebug, false, "log debug information to stderr")
	_ = root.MarkPersistentFlagDirname(flagWorkspace)

	root.AddCommand(newVersionCmd(e))
	root.AddCommand(newConfigCmd(e))
	root.AddCommand(newImageCmd(e))
	root.AddCommand(newCreateCmd(e))
	root.AddCommand(newApplyCmd(e))
	root.AddCommand(newVerifyCmd(e))
	root.AddCommand(newStatusCmd(e))
	root.AddCommand(newAuditCmd(e))
	root.AddCommand(newRecoverCmd(e))
	root.AddCommand(newTerminateCmd(e))
	root.AddCommand(newMiniCmd(e))
	root.AddCommand(newUpgradeCmd(e))
	return root
}

func (e *env) setup(cmd *cobra.Command) error {
	debug, err := cmd.Flags().GetBool(flagDebug)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	e.log = slog.New(slog.NewTextHandler(e.errOut, &slog.HandlerOptions{Level: level}))

	ws, err := cmd.Flags().GetString(flagWorkspace)
	if err != nil {
		return err
	}
	e.workspace = ws
	if ws == "" {
		e.files = file.NewHandler(e.osFs)
		return nil
	}
	info, err := e.osFs.Stat(ws)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Commands that write create it; commands that read report the missing file.
	case err != nil:
		return fmt.Errorf("checking workspace %s: %w", ws, err)
	case !info.IsDir():
		return fmt.Errorf("workspace %s is not a directory: pass a directory to --%s", ws, flagWorkspace)
	}
	e.files = file.NewHandler(afero.NewBasePathFs(e.osFs, ws))
	e.log.Debug("using workspace", "path", ws)
	return nil
}

// addOutputFlag adds -o/--output with text and JSON formats.
func addOutputFlag(cmd *cobra.Command) {
	cmd.Flags().StringP(flagOutput, "o", outputText, "output format: text or json")
	_ = cmd.RegisterFlagCompletionFunc(flagOutput, cobra.FixedCompletions([]string{outputText, outputJSON}, cobra.ShellCompDirectiveNoFileComp))
}

func outputFormat(cmd *cobra.Command) (string, error) {
	format, err := cmd.Flags().GetString(flagOutput)
	if err != nil {
		return "", err
	}
	if format != outputText && format != outputJSON {
		return "", fmt.Errorf("unknown output format %q: use text or json", format)
	}
	return format, nil
}

// Execute runs the CLI with args and returns the process exit code. SIGINT and SIGTERM cancel the
// command's context so that it can stop cleanly.
func Execute(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer, fs afero.Fs) int {
	return execute(ctx, args, &env{osFs: fs, in: in, out: out, errOut: errOut, deps: defaultDeps()})
}

func execute(ctx context.Context, args []string, e *env) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	errOut := e.errOut
	root := newRootCmd(e)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var silent *exitError
		if !errors.As(err, &silent) || !silent.reported {
			fmt.Fprintf(errOut, "Error: %v\n", err)
		}
		if errors.As(err, &silent) {
			return silent.code
		}
		return 1
	}
	return 0
}

// exitError carries an exit code; reported means the command already told the user what went wrong.
type exitError struct {
	code     int
	reported bool
	err      error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }
