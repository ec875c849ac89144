package cmd

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

const (
	flagPlatform   = "platform"
	flagBootPath   = "boot-path"
	flagBootLoader = "boot-loader"
	flagImageRef   = "image-ref"
	flagVariant    = "variant"
	flagOut        = "out"
	flagSignKey    = "sign-key"
	flagIssued     = "issued"
)

// platformProfiles maps --platform names to the firmware profiles of package measurements; the first is
// the default. A new profile only needs a line here.
var platformProfiles = []struct {
	name     string
	platform *precompute.Platform
}{
	{name: "ovmf", platform: &precompute.OVMF},
	{name: "generic", platform: &precompute.GenericUEFI},
}

func platformNames() []string {
	names := make([]string, len(platformProfiles))
	for i, p := range platformProfiles {
		names[i] = p.name
	}
	return names
}

func platformByName(name string) (*precompute.Platform, error) {
	for _, p := range platformProfiles {
		if p.name == name {
			return p.platform, nil
		}
	}
	return nil, fmt.Errorf("unknown --%s %q: choose one of %s", flagPlatform, name, strings.Join(platformNames(), ", "))
}

// bootPaths maps --boot-path names to boot paths.
var bootPaths = []struct {
	name string
	path precompute.BootPath
}{
	{name: "direct", path: precompute.BootDirect},
	{name: "systemd-boot", path: precompute.BootSystemdBoot},
}

func bootPathNames() []string {
	names := make([]string, len(bootPaths))
	for i, p := range bootPaths {
		names[i] = p.name
	}
	return names
}

func newImageMeasureCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "measure <uki>",
		Short: "Precompute a node image's PCR values and write measurements.json",
		Long: `Parse a Unified Kernel Image (UKI), precompute the PCR values a node that boots it reaches, and
write them as measurements.json, optionally signed (measurements.json.sig, cosign's format).

PCR 4 holds the EFI applications the firmware loads, PCR 9 the kernel command line and initrd,
PCR 11 the UKI's sections followed by systemd-pcrphase's enter-initrd, leave-initrd, sysinit and
ready, and PCR 12 command lines passed in by a boot loader (zero on the direct path). A node is
attested after it has booted, so PCR 11 is expected with all phases; its value right after
systemd-stub is shown for information.

The private key's password comes from COSIGN_PASSWORD (asked for on a terminal when unset).`,
		Example: `  constellation image measure out/uki.efi
  constellation image measure out/uki.efi --image-ref constellation-node-v1.2.0 --sign-key cosign.key
  constellation image measure out/uki.efi --boot-path systemd-boot --boot-loader systemd-bootx64.efi -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.imageMeasure(cmd, args[0])
		},
	}
	addBootFlags(cmd)
	cmd.Flags().String(flagImageRef, "", "image reference recorded in the file (default: sha256:<hex of the UKI>)")
	cmd.Flags().String(flagVariant, variant.QEMUVTPM.String(), "attestation variant the measurements are for: "+strings.Join(variant.Names(), ", "))
	cmd.Flags().String(flagOut, signed.FileName, "where to write the measurements; the signature goes to <out>.sig")
	cmd.Flags().String(flagIssued, "", "issue time recorded in the file, RFC 3339 in UTC (default: now; set it for a reproducible file). 'config fetch-measurements' refuses a file issued before the one a configuration holds")
	cmd.Flags().String(flagSignKey, "", "sign with this cosign private key (see 'constellation image keygen')")
	addOutputFlag(cmd)
	_ = cmd.RegisterFlagCompletionFunc(flagVariant, cobra.FixedCompletions(variant.Names(), cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// addBootFlags adds the flags that say how a UKI is booted, which decide its PCRs.
func addBootFlags(cmd *cobra.Command) {
	cmd.Flags().String(flagPlatform, platformProfiles[0].name, "firmware profile for PCR 4: "+strings.Join(platformNames(), ", "))
	cmd.Flags().String(flagBootPath, bootPaths[0].name, "how the UKI is started: "+strings.Join(bootPathNames(), ", "))
	cmd.Flags().String(flagBootLoader, "", "the systemd-boot EFI binary, for --boot-path systemd-boot")
	_ = cmd.RegisterFlagCompletionFunc(flagPlatform, cobra.FixedCompletions(platformNames(), cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc(flagBootPath, cobra.FixedCompletions(bootPathNames(), cobra.ShellCompDirectiveNoFileComp))
}

// bootOptions are the parsed boot flags.
type bootOptions struct {
	platform   *precompute.Platform
	path       precompute.BootPath
	pathName   string
	bootLoader string
}

type measureOptions struct {
	bootOptions
	issued   time.Time
	imageRef string
	variant  variant.Variant
	out      string
	signKey  string
}

func measureFlags(cmd *cobra.Command) (measureOptions, error) {
	var o measureOptions
	var err error
	if o.bootOptions, err = bootFlags(cmd); err != nil {
		return o, err
	}
	flags := cmd.Flags()
	if o.imageRef, err = flags.GetString(flagImageRef); err != nil {
		return o, err
	}
	issued, err := flags.GetString(flagIssued)
	if err != nil {
		return o, err
	}
	o.issued = time.Now().UTC().Truncate(time.Second)
	if issued != "" {
		if o.issued, err = signed.ParseIssued(issued); err != nil {
			return o, fmt.Errorf("--%s: %w", flagIssued, err)
		}
	}
	name, err := flags.GetString(flagVariant)
	if err != nil {
		return o, err
	}
	if o.variant, err = variant.FromString(name); err != nil {
		return o, fmt.Errorf("--%s: %w", flagVariant, err)
	}
	if o.out, err = flags.GetString(flagOut); err != nil {
		return o, err
	}
	if o.out == "" {
		return o, fmt.Errorf("--%s must not be empty", flagOut)
	}
	if o.signKey, err = flags.GetString(flagSignKey); err != nil {
		return o, err
	}
	return o, nil
}

func bootFlags(cmd *cobra.Command) (bootOptions, error) {
	var o bootOptions
	flags := cmd.Flags()
	platform, err := flags.GetString(flagPlatform)
	if err != nil {
		return o, err
	}
	if o.platform, err = platformByName(platform); err != nil {
		return o, err
	}
	if o.pathName, err = flags.GetString(flagBootPath); err != nil {
		return o, err
	}
	for _, p := range bootPaths {
		if p.name == o.pathName {
			o.path = p.path
		}
	}
	if o.path == 0 {
		return o, fmt.Errorf("unknown --%s %q: choose one of %s", flagBootPath, o.pathName, strings.Join(bootPathNames(), ", "))
	}
	if o.bootLoader, err = flags.GetString(flagBootLoader); err != nil {
		return o, err
	}
	switch {
	case o.path == precompute.BootSystemdBoot && o.bootLoader == "":
		return o, fmt.Errorf("--%s systemd-boot measures the boot loader too: pass its EFI binary with --%s (e.g. systemd-bootx64.efi)", flagBootPath, flagBootLoader)
	case o.path != precompute.BootSystemdBoot && o.bootLoader != "":
		return o, fmt.Errorf("--%s only applies to --%s systemd-boot", flagBootLoader, flagBootPath)
	}
	return o, nil
}

// precomputeUKI reads a UKI and returns its bytes, the precomputation and the measurements a fresh node
// shows: the predicted PCRs after the boot phases, and PCR 15 zero.
func precomputeUKI(fh file.Handler, ukiPath string, o bootOptions) ([]byte, *precompute.Result, measurements.M, error) {
	ukiData, err := fh.Read(ukiPath)
	if err != nil {
		return nil, nil, nil, err
	}
	opts := precompute.Options{Platform: o.platform, Path: o.path}
	if o.bootLoader != "" {
		if opts.BootLoader, err = fh.Read(o.bootLoader); err != nil {
			return nil, nil, nil, err
		}
	}
	res, m, err := precompute.FreshNode(ukiData, opts)
	if errors.Is(err, precompute.ErrNotUKI) {
		return nil, nil, nil, fmt.Errorf("%s is %w", ukiPath, err)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", ukiPath, err)
	}
	return ukiData, res, m, nil
}

// pcrRow is one line of the measure command's output.
type pcrRow struct {
	PCR         uint32 `json:"pcr"`
	Expected    string `json:"expected"`
	Description string `json:"description"`
}

type measureResult struct {
	UKI              string   `json:"uki"`
	Image            string   `json:"image"`
	Variant          string   `json:"variant"`
	Issued           string   `json:"issued"`
	Platform         string   `json:"platform"`
	PlatformVerified bool     `json:"platformVerified"`
	BootPath         string   `json:"bootPath"`
	PCRs             []pcrRow `json:"pcrs"`
	PCR11AfterStub   string   `json:"pcr11AfterStub"`
	File             string   `json:"file"`
	Signature        string   `json:"signature,omitempty"`
	RemovedSignature string   `json:"removedStaleSignature,omitempty"`
}

func (e *env) imageMeasure(cmd *cobra.Command, ukiPath string) error {
	format, err := outputFormat(cmd)
	if err != nil {
		return err
	}
	o, err := measureFlags(cmd)
	if err != nil {
		return err
	}
	fh := file.NewHandler(e.osFs)

	// The key comes first: a wrong password should not cost a precomputation.
	var signer *cosign.Signer
	if o.signKey != "" {
		if signer, err = e.loadSigningKey(fh, o.signKey); err != nil {
			return err
		}
	}

	ukiData, res, m, err := precomputeUKI(fh, ukiPath, o.bootOptions)
	if err != nil {
		return err
	}
	if o.imageRef == "" {
		o.imageRef = precompute.ImageRef(ukiData)
	}
	mf := &signed.File{Version: signed.Version2, Image: o.imageRef, Variant: o.variant.String(), Issued: o.issued, Measurements: m}
	data, err := mf.Marshal()
	if err != nil {
		return fmt.Errorf("--%s: %w", flagImageRef, err)
	}
	var sig []byte
	if signer != nil {
		if sig, err = signer.SignBlob(data); err != nil {
			return err
		}
	}

	result := measureResult{
		UKI: ukiPath, Image: o.imageRef, Variant: o.variant.String(), Issued: o.issued.Format(time.RFC3339),
		Platform: o.platform.Name, PlatformVerified: o.platform.Verified, BootPath: o.pathName,
		PCR11AfterStub: hex.EncodeToString(res.PCRs(false)[precompute.PCRUKI]),
		File:           o.out,
	}
	for _, idx := range mf.Measurements.Indices() {
		result.PCRs = append(result.PCRs, pcrRow{PCR: idx, Expected: mf.Measurements[idx].Expected.String(), Description: pcrDescription(idx, o.path)})
	}

	sigPath := o.out + signed.SignatureSuffix
	if err := fh.Write(o.out, data, file.OptOverwrite, file.OptMkdirAll); err != nil {
		return err
	}
	if sig != nil {
		if err := fh.Write(sigPath, sig, file.OptOverwrite); err != nil {
			return fmt.Errorf("%w (%s was written; run the command again)", err, o.out)
		}
		result.Signature = sigPath
	} else if exists, err := fh.Exists(sigPath); err != nil {
		return err
	} else if exists {
		// It signed the previous content; kept, it would only make verification fail later.
		if err := fh.Remove(sigPath); err != nil {
			return fmt.Errorf("%w: it no longer matches %s; delete it", err, o.out)
		}
		result.RemovedSignature = sigPath
	}
	e.log.Debug("wrote measurements", "path", o.out, "signed", sig != nil)

	if format == outputJSON {
		enc := json.NewEncoder(e.out)
		enc.SetIndent("", "  ")
		return enc.Encode(result)
	}
	return e.printMeasureResult(result)
}

func (e *env) loadSigningKey(fh file.Handler, path string) (*cosign.Signer, error) {
	keyPEM, err := fh.Read(path)
	if err != nil {
		return nil, fmt.Errorf("%w (create a key pair with 'constellation image keygen')", err)
	}
	password, err := e.cosignPassword(false)
	if err != nil {
		return nil, err
	}
	signer, err := cosign.LoadPrivateKey(keyPEM, password)
	if errors.Is(err, cosign.ErrWrongPassword) {
		return nil, fmt.Errorf("%s: %w: check %s", path, err, cosign.PasswordEnv)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return signer, nil
}

func pcrDescription(idx uint32, path precompute.BootPath) string {
	switch idx {
	case measurements.PCRBootChain:
		if path == precompute.BootSystemdBoot {
			return "boot chain: firmware events, systemd-boot, UKI, kernel"
		}
		return "boot chain: firmware events, UKI, kernel"
	case measurements.PCRKernel:
		return "kernel command line and initrd"
	case measurements.PCRUKI:
		return "UKI sections, then the boot phases up to ready"
	case measurements.PCRBootLoader:
		if path == precompute.BootSystemdBoot {
			return "command line passed by systemd-boot"
		}
		return "command line from a boot loader (none: zero)"
	case measurements.PCRSystemd:
		return "system extension images (none: zero)"
	case measurements.PCRClusterID:
		return "cluster ID (zero until the node initializes or joins a cluster)"
	}
	return ""
}

func (e *env) printMeasureResult(r measureResult) error {
	fmt.Fprintf(e.out, "Measured %s (boot path %s, firmware profile %s).\n\n", r.UKI, r.BootPath, r.Platform)
	tw := tabwriter.NewWriter(e.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PCR\tEXPECTED\tMEASURES")
	for _, row := range r.PCRs {
		fmt.Fprintf(tw, "%d\t%s\t%s\n", row.PCR, row.Expected, row.Description)
		if row.PCR == measurements.PCRUKI {
			fmt.Fprintf(tw, "\t%s\t(informative) PCR 11 right after systemd-stub, before the boot phases\n", r.PCR11AfterStub)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(e.out)
	if r.Signature != "" {
		fmt.Fprintf(e.out, "Wrote %s (image %s, variant %s, issued %s) and its signature %s.\n", r.File, r.Image, r.Variant, r.Issued, r.Signature)
	} else {
		fmt.Fprintf(e.out, "Wrote %s (image %s, variant %s, issued %s), unsigned.\n", r.File, r.Image, r.Variant, r.Issued)
	}
	if r.RemovedSignature != "" {
		fmt.Fprintf(e.out, "Removed %s: it signed the previous content.\n", r.RemovedSignature)
	}
	if !r.PlatformVerified {
		fmt.Fprintf(e.out, "Note: the firmware profile %q has not been checked against a real boot; PCR 4 may differ on real firmware.\n", r.Platform)
	}
	if r.Signature != "" {
		fmt.Fprintf(e.out, "Hint: publish %s together with %s; a cluster's configuration takes them with\n"+
			"  constellation config fetch-measurements --url <URL or path of %s> --public-key <your cosign.pub>\n", r.File, r.Signature, r.File)
	} else {
		fmt.Fprintf(e.out, "Hint: sign the measurements with --%s (create a key with 'constellation image keygen'), then load them\n"+
			"into a configuration with 'constellation config fetch-measurements --url %s'.\n", flagSignKey, r.File)
	}
	return nil
}
