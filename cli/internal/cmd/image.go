package cmd

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/constellation-go/constellation/internal/cosign"
)

func newImageCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Measure node images and sign their measurements",
		Long: `Precompute the PCR values a node image produces when it boots, and sign them with a
cosign-compatible key so that cluster configurations can load them with
'constellation config fetch-measurements'.

Paths given to these commands are relative to the current directory; --workspace does not apply.`,
		Example: `  constellation image keygen
  constellation image measure out/uki.efi --sign-key cosign.key`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newImageKeygenCmd(e))
	cmd.AddCommand(newImageMeasureCmd(e))
	cmd.AddCommand(newImageCompareCmd(e))
	return cmd
}

// cosignPassword returns the private key's password from COSIGN_PASSWORD, as cosign does, or asks for it
// when standard input is a terminal. confirm asks twice, for a new key.
func (e *env) cosignPassword(confirm bool) ([]byte, error) {
	if pw, ok := os.LookupEnv(cosign.PasswordEnv); ok {
		return []byte(pw), nil
	}
	f, ok := e.in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, fmt.Errorf("no password for the private key: set %s (to an empty value for a key without a password)", cosign.PasswordEnv)
	}
	read := func(prompt string) ([]byte, error) {
		fmt.Fprint(e.errOut, prompt)
		pw, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.errOut)
		if err != nil {
			return nil, fmt.Errorf("reading the password: %w", err)
		}
		return pw, nil
	}
	pw, err := read("Enter password for private key: ")
	if err != nil || !confirm {
		return pw, err
	}
	again, err := read("Enter password for private key again: ")
	if err != nil {
		return nil, err
	}
	if string(pw) != string(again) {
		return nil, errors.New("the passwords do not match: run the command again")
	}
	return pw, nil
}
