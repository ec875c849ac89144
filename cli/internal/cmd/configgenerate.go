package cmd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/versions"
)

const (
	flagKubernetes = "kubernetes"
	flagName       = "name"
	flagForce      = "force"
)

func newConfigGenerateCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "generate {" + strings.Join(cloudprovider.Names(), "|") + "}",
		Short: "Write a commented default configuration for a provider",
		Long: `Write constellation-conf.yaml with defaults for the given provider, every field explained.

For local and qemu the file is ready to use. For aws, gcp and azure, fill in the
account-specific fields (region, project, identities, zones) before creating the cluster;
'constellation config validate' lists what is missing.`,
		Example: `  constellation config generate local
  constellation config generate aws --kubernetes v1.33 --name prod
  constellation config generate local --kms aws-kms   # user-managed keys: fill in kms.awsKMS`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: cloudprovider.Names(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.configGenerate(cmd, args[0])
		},
	}
	cmd.Flags().String(flagKubernetes, versions.DefaultKubernetes, "Kubernetes version (e.g. v1.33 or "+versions.DefaultKubernetes+")")
	cmd.Flags().String(flagName, "", "cluster name (default: constell)")
	cmd.Flags().BoolP(flagForce, "f", false, "overwrite an existing configuration")
	cmd.Flags().String(flagKMS, kmsConstellationManaged, "key backend of the state disks: "+kmsConstellationManaged+" or "+kmsuri.AWSKMS+" (user-managed; fill in kms.awsKMS)")
	_ = cmd.RegisterFlagCompletionFunc(flagKMS, cobra.FixedCompletions([]string{kmsConstellationManaged, kmsuri.AWSKMS}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc(flagKubernetes, cobra.FixedCompletions(versions.SupportedKubernetes(), cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// flagKMS chooses the key backend; kmsConstellationManaged is the default.
const (
	flagKMS                 = "kms"
	kmsConstellationManaged = "constellation-managed"
)

func (e *env) configGenerate(cmd *cobra.Command, providerName string) error {
	provider, err := cloudprovider.Parse(providerName)
	if err != nil {
		return err
	}
	cfg, err := config.Default(provider)
	if err != nil {
		return err
	}
	k8s, err := cmd.Flags().GetString(flagKubernetes)
	if err != nil {
		return err
	}
	if cfg.KubernetesVersion, err = versions.ResolveKubernetes(k8s); err != nil {
		return fmt.Errorf("--%s: %w", flagKubernetes, err)
	}
	if name, _ := cmd.Flags().GetString(flagName); name != "" {
		cfg.Name = name
	}
	force, err := cmd.Flags().GetBool(flagForce)
	if err != nil {
		return err
	}
	kms, err := cmd.Flags().GetString(flagKMS)
	if err != nil {
		return err
	}
	switch kms {
	case kmsConstellationManaged:
	case kmsuri.AWSKMS:
		cfg.KMS.AWSKMS = &config.AWSKMSConfig{}
	default:
		return fmt.Errorf("--%s: %q is not one of %s, %s", flagKMS, kms, kmsConstellationManaged, kmsuri.AWSKMS)
	}

	// Cloud defaults and a KMS section leave account fields empty on purpose; everything else must
	// already be valid.
	if err := cfg.Validate(); err != nil && !provider.IsCloud() && cfg.KMS.AWSKMS == nil {
		return fmt.Errorf("the generated configuration does not validate: %w", err)
	}
	data, err := cfg.Marshal()
	if err != nil {
		return err
	}
	opts := []file.Option{file.OptMkdirAll}
	if force {
		opts = append(opts, file.OptOverwrite)
	}
	if err := e.files.Write(config.FileName, data, opts...); err != nil {
		if errors.Is(err, file.ErrExists) {
			return fmt.Errorf("%s already exists: pass --%s to replace it, or use another --%s",
				e.path(config.FileName), flagForce, flagWorkspace)
		}
		return err
	}
	e.log.Debug("wrote configuration", "path", e.path(config.FileName), "provider", provider)

	fmt.Fprintf(e.out, "Wrote %s for provider %s (Kubernetes %s, attestation %s).\n",
		e.path(config.FileName), provider, cfg.KubernetesVersion, cfg.Attestation.Variant)
	if provider.IsCloud() || cfg.KMS.AWSKMS != nil {
		fmt.Fprintf(e.out, "Fill in the account-specific fields, then check them with 'constellation config validate'.\n")
	}
	return nil
}
