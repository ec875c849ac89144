package cmd

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/file"
)

const flagOutputPrefix = "output-prefix"

func newImageKeygenCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create a key pair for signing measurements (cosign format)",
		Long: `Create an ECDSA P-256 key pair in cosign's format: <prefix>.key, the private key encrypted with
the password in COSIGN_PASSWORD (asked for on a terminal when unset; an empty value means no
password), written with mode 0600, and <prefix>.pub, the public key to hand to users.

The files have cosign's formats, so cosign can use the keys too, e.g. 'cosign verify-blob
--key cosign.pub --signature measurements.json.sig --insecure-ignore-tlog measurements.json'
checks a signature made with 'image measure' (it is in no transparency log).`,
		Example: `  COSIGN_PASSWORD=... constellation image keygen
  constellation image keygen --output-prefix release/cosign`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.imageKeygen(cmd)
		},
	}
	cmd.Flags().String(flagOutputPrefix, "cosign", "write <prefix>.key and <prefix>.pub")
	cmd.Flags().BoolP(flagForce, "f", false, "replace existing key files (signatures made with the old key no longer verify with the new public key)")
	return cmd
}

func (e *env) imageKeygen(cmd *cobra.Command) error {
	prefix, err := cmd.Flags().GetString(flagOutputPrefix)
	if err != nil {
		return err
	}
	if prefix == "" {
		return fmt.Errorf("--%s must not be empty", flagOutputPrefix)
	}
	force, err := cmd.Flags().GetBool(flagForce)
	if err != nil {
		return err
	}
	keyPath, pubPath := prefix+".key", prefix+".pub"
	fh := file.NewHandler(e.osFs)
	if !force {
		// Checked for both files before writing either, so a refusal leaves nothing half-written.
		for _, p := range []string{keyPath, pubPath} {
			exists, err := fh.Exists(p)
			if err != nil {
				return err
			}
			if exists {
				return fmt.Errorf("%s already exists: pass --%s to replace the key pair, or choose another --%s", p, flagForce, flagOutputPrefix)
			}
		}
	}

	password, err := e.cosignPassword(true)
	if err != nil {
		return err
	}
	privPEM, pubPEM, err := cosign.GenerateKeyPair(password)
	if err != nil {
		return err
	}
	opts := []file.Option{file.OptMkdirAll}
	if force {
		opts = append(opts, file.OptOverwrite)
	}
	if err := fh.Write(keyPath, privPEM, append(opts, file.OptSecret)...); err != nil {
		return existsHint(err, keyPath)
	}
	if err := fh.Write(pubPath, pubPEM, opts...); err != nil {
		if !force {
			// A private key without its public key is of no use; don't leave it behind.
			_ = fh.Remove(keyPath)
		}
		return existsHint(err, pubPath)
	}
	e.log.Debug("wrote key pair", "key", keyPath, "pub", pubPath)

	if len(password) == 0 {
		fmt.Fprintf(e.errOut, "Warning: %s is not protected by a password (%s is empty).\n", keyPath, cosign.PasswordEnv)
	}
	_, err = fmt.Fprintf(e.out, "Wrote the private key to %s (keep it secret) and the public key to %s.\n"+
		"Sign measurements with 'constellation image measure <uki> --sign-key %s'.\n", keyPath, pubPath, keyPath)
	return err
}

func existsHint(err error, path string) error {
	if errors.Is(err, file.ErrExists) {
		return fmt.Errorf("%s already exists: pass --%s to replace the key pair, or choose another --%s", path, flagForce, flagOutputPrefix)
	}
	return err
}
