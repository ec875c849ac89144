package cmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

const (
	flagURL          = "url"
	flagSignatureURL = "signature-url"
	flagPublicKey    = "public-key"
	flagTimeout      = "timeout"
	flagAllowOlder   = "allow-older"
	flagAllowOther   = "allow-other-image"

	// builtInKey selects releasePublicKey for --public-key.
	builtInKey = "built-in"
)

// releasePublicKey is the cosign.pub of the project's release signing key, which --public-key built-in
// selects. The project publishes no signed images yet, so there is none; a release build sets it.
var releasePublicKey []byte

func newConfigFetchMeasurementsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fetch-measurements",
		Short: "Load signed measurements into constellation-conf.yaml",
		Long: `Download (or read) a measurements.json and its signature, verify the signature with a cosign
public key, check that the measurements are for the configuration's attestation variant, and
replace attestation.measurements in constellation-conf.yaml with them. The rest of the file,
comments included, is kept as it is.

The file must be for the configuration's image (local, qemu: sha256 of the image's UKI; clouds: the
'image' field) and, if the configuration already holds fetched measurements, issued no earlier than
those (attestation.measurementsSource records the image and issue time): a validly signed but older
file could bring back measurements the publisher has since replaced. --allow-older and
--allow-other-image lift these checks when that is what you mean to do.

--url and --signature-url take an http(s) URL or a file path (relative to the current directory,
not the workspace). Nothing is written unless every check passes.`,
		Example: `  constellation config fetch-measurements --url measurements.json --public-key cosign.pub
  constellation -C mycluster config fetch-measurements --url https://example.com/v1.2.0/measurements.json \
    --public-key cosign.pub -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.configFetchMeasurements(cmd)
		},
	}
	cmd.Flags().String(flagURL, signed.FileName, "http(s) URL or path of measurements.json")
	cmd.Flags().String(flagSignatureURL, "", "http(s) URL or path of the signature (default: --url with .sig appended)")
	cmd.Flags().String(flagPublicKey, "cosign.pub", "cosign public key (PEM) to verify the signature with, or \""+builtInKey+"\" for the release key")
	cmd.Flags().Duration(flagTimeout, 30*time.Second, "time limit for the downloads")
	cmd.Flags().Bool(flagAllowOlder, false, "accept a file issued before the measurements the configuration holds, or one without an issue time (v1)")
	cmd.Flags().Bool(flagAllowOther, false, "accept a file for another image than the configuration's")
	addOutputFlag(cmd)
	return cmd
}

type fetchedPCR struct {
	PCR      uint32 `json:"pcr"`
	Expected string `json:"expected"`
	WarnOnly bool   `json:"warnOnly"`
	// Change is added, changed, unchanged or removed, compared with the configuration before.
	Change string `json:"change"`
}

type fetchResult struct {
	Config       string `json:"config"`
	URL          string `json:"url"`
	SignatureURL string `json:"signatureUrl"`
	PublicKey    string `json:"publicKey"`
	Image        string `json:"image"`
	Variant      string `json:"variant"`
	Issued       string `json:"issued,omitempty"`
	// PreviousIssued is the issue time of the measurements the configuration held before, if recorded.
	PreviousIssued string       `json:"previousIssued,omitempty"`
	Changed        bool         `json:"changed"`
	Measurements   []fetchedPCR `json:"measurements"`
}

func (e *env) configFetchMeasurements(cmd *cobra.Command) error {
	format, err := outputFormat(cmd)
	if err != nil {
		return err
	}
	flags := cmd.Flags()
	src, err := flags.GetString(flagURL)
	if err != nil {
		return err
	}
	sigSrc, err := flags.GetString(flagSignatureURL)
	if err != nil {
		return err
	}
	if sigSrc == "" {
		sigSrc = src + signed.SignatureSuffix
	}
	keySrc, err := flags.GetString(flagPublicKey)
	if err != nil {
		return err
	}
	timeout, err := flags.GetDuration(flagTimeout)
	if err != nil {
		return err
	}
	allowOlder, err := flags.GetBool(flagAllowOlder)
	if err != nil {
		return err
	}
	allowOther, err := flags.GetBool(flagAllowOther)
	if err != nil {
		return err
	}

	cfgPath := e.path(config.FileName)
	cfgData, err := e.files.Read(config.FileName)
	if err != nil {
		return fmt.Errorf("reading the configuration: %w (create one with 'constellation config generate <provider>')", err)
	}
	cfg, err := config.Parse(cfgData)
	if err != nil {
		return fmt.Errorf("%s: %w\nFix the configuration first; 'constellation config validate' lists the problems", cfgPath, err)
	}
	verifier, err := e.publicKey(keySrc)
	if err != nil {
		return err
	}

	data, sig, err := signed.Fetch(cmd.Context(), e.osFs, src, sigSrc, timeout)
	if err != nil {
		return err
	}

	mf, err := signed.Verify(data, sig, verifier)
	switch {
	case errors.Is(err, cosign.ErrInvalidSignature) || errors.Is(err, cosign.ErrMalformed):
		return fmt.Errorf("%s is not signed by %s: %w\nThe file was changed after signing, or signed with another key: check --%s and --%s. %s is unchanged",
			src, keySrc, err, flagPublicKey, flagSignatureURL, cfgPath)
	case err != nil:
		return fmt.Errorf("%s: %w\nIts signature is valid, so the publisher made this file: ask them for a corrected one. %s is unchanged", src, err, cfgPath)
	}
	if mf.Variant != cfg.Attestation.Variant {
		return fmt.Errorf("%s holds measurements for attestation variant %s, but %s uses %s: fetch the measurements published for %s. %s is unchanged",
			src, mf.Variant, cfgPath, cfg.Attestation.Variant, cfg.Attestation.Variant, cfgPath)
	}

	if !allowOther {
		want, err := e.configuredImageRef(cfg)
		if err != nil {
			return fmt.Errorf("checking that %s is for the configuration's image: %w\nPass --%s to skip this check. %s is unchanged", src, err, flagAllowOther, cfgPath)
		}
		if mf.Image != want {
			return fmt.Errorf("%s holds measurements for image %s, but the image %s configures is %s: fetch the measurements published for that image, or pass --%s if you are changing images. %s is unchanged",
				src, mf.Image, cfgPath, want, flagAllowOther, cfgPath)
		}
	}
	var previous time.Time
	if held := cfg.Attestation.MeasurementsSource; held != nil {
		if previous, err = held.IssuedTime(); err != nil {
			return err
		}
	}
	if !allowOlder {
		switch {
		case mf.Issued.IsZero():
			return fmt.Errorf("%s has no issue time (format %s), so a rollback to older measurements could not be noticed: ask the publisher for a %s file, or pass --%s. %s is unchanged",
				src, mf.Version, signed.Version2, flagAllowOlder, cfgPath)
		case mf.Issued.Before(previous):
			return fmt.Errorf("%s was issued %s, before the measurements %s holds (issued %s): a validly signed but older file can bring back measurements the publisher has since replaced. Fetch the current file, or pass --%s if you mean to go back. %s is unchanged",
				src, mf.Issued.Format(time.RFC3339), cfgPath, previous.Format(time.RFC3339), flagAllowOlder, cfgPath)
		}
	}

	newData, err := config.SetMeasurements(cfgData, mf.Measurements)
	if err != nil {
		return fmt.Errorf("%s: %w. %s is unchanged", cfgPath, err, cfgPath)
	}
	if !mf.Issued.IsZero() {
		source := config.MeasurementsSource{Image: mf.Image, Issued: mf.Issued.UTC().Format(time.RFC3339)}
		if newData, err = config.SetMeasurementsSource(newData, source); err != nil {
			return fmt.Errorf("%s: recording where the measurements came from: %w. %s is unchanged", cfgPath, err, cfgPath)
		}
	}
	result := fetchResult{
		Config: cfgPath, URL: src, SignatureURL: sigSrc, PublicKey: keySrc,
		Image: mf.Image, Variant: mf.Variant, Changed: !bytes.Equal(newData, cfgData),
		Measurements: measurementChanges(cfg.Attestation.Measurements, mf.Measurements),
	}
	if !mf.Issued.IsZero() {
		result.Issued = mf.Issued.UTC().Format(time.RFC3339)
	}
	if !previous.IsZero() {
		result.PreviousIssued = previous.UTC().Format(time.RFC3339)
	}
	if result.Changed {
		if err := e.files.Write(config.FileName, newData, file.OptOverwrite); err != nil {
			return err
		}
	}
	e.log.Debug("fetched measurements", "url", src, "image", mf.Image, "changed", result.Changed)

	if format == outputJSON {
		enc := json.NewEncoder(e.out)
		enc.SetIndent("", "  ")
		return enc.Encode(result)
	}
	issued := "no issue time"
	if result.Issued != "" {
		issued = "issued " + result.Issued
	}
	fmt.Fprintf(e.out, "Verified %s with %s: image %s, variant %s, %s.\n", src, keySrc, mf.Image, mf.Variant, issued)
	if !result.Changed {
		_, err := fmt.Fprintf(e.out, "%s already has these measurements; nothing changed.\n", cfgPath)
		return err
	}
	fmt.Fprintf(e.out, "Updated attestation.measurements in %s:\n", cfgPath)
	for _, m := range result.Measurements {
		suffix := ""
		if m.WarnOnly {
			suffix = " (warn only)"
		}
		fmt.Fprintf(e.out, "  PCR %-2d  %-9s  %s%s\n", m.PCR, m.Change, m.Expected, suffix)
	}
	return nil
}

// configuredImageRef is the image reference a measurements file for the configuration's image carries: for
// local and qemu, sha256:<hex> of the UKI in the configured image directory (as 'image measure' writes it);
// for the clouds, the configured image ID.
func (e *env) configuredImageRef(cfg *config.Config) (string, error) {
	switch cfg.GetProvider() {
	case cloudprovider.Local, cloudprovider.QEMU:
	default:
		return cfg.Image, nil
	}
	a, err := e.deps.artifacts()
	if err != nil {
		return "", err
	}
	uki, err := file.NewHandler(e.osFs).Read(filepath.Join(a.ConfiguredImageDir(cfg), "constellation.efi"))
	if err != nil {
		return "", fmt.Errorf("reading the configured image's UKI: %w (build the image with 'make image', or set 'image' in %s)", err, config.FileName)
	}
	return precompute.ImageRef(uki), nil
}

// publicKey reads the verification key from a file, or the built-in release key.
func (e *env) publicKey(src string) (*cosign.Verifier, error) {
	var pemData []byte
	if src == builtInKey {
		if len(releasePublicKey) == 0 {
			return nil, fmt.Errorf("this CLI has no built-in release key: pass the publisher's key with --%s <cosign.pub>", flagPublicKey)
		}
		pemData = releasePublicKey
	} else {
		var err error
		if pemData, err = file.NewHandler(e.osFs).Read(src); err != nil {
			return nil, fmt.Errorf("%w: pass the publisher's cosign public key with --%s", err, flagPublicKey)
		}
	}
	v, err := cosign.ParsePublicKey(pemData)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flagPublicKey, src, err)
	}
	return v, nil
}

// measurementChanges lists the new measurements, and the old ones they drop, with what changed.
func measurementChanges(old, fetched measurements.M) []fetchedPCR {
	var out []fetchedPCR
	all := measurements.M{}
	for idx, m := range old {
		all[idx] = m
	}
	for idx, m := range fetched {
		all[idx] = m
	}
	for _, idx := range all.Indices() {
		o, hadOld := old[idx]
		n, hasNew := fetched[idx]
		row := fetchedPCR{PCR: idx, Expected: n.Expected.String(), WarnOnly: n.WarnOnly}
		switch {
		case !hasNew:
			row = fetchedPCR{PCR: idx, Expected: o.Expected.String(), WarnOnly: o.WarnOnly, Change: "removed"}
		case !hadOld:
			row.Change = "added"
		case !bytes.Equal(o.Expected, n.Expected) || o.WarnOnly != n.WarnOnly:
			row.Change = "changed"
		default:
			row.Change = "unchanged"
		}
		out = append(out, row)
	}
	return out
}
