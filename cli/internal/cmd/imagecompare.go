package cmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

const (
	flagMeasurements = "measurements"
	flagSignature    = "signature"
)

// errMeasurementsDiffer is returned (after the report) when a UKI does not reproduce a measurements file.
var errMeasurementsDiffer = errors.New("the UKI does not reproduce the published measurements")

func newImageCompareCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "compare <uki>",
		Short: "Check that a UKI reproduces a published measurements.json",
		Long: `Precompute the PCR values of a UKI, as 'constellation image measure' does, and compare them with
a published measurements.json. The exit code is 0 only if every PCR of the file and of the
precomputation is present in both with the same value; otherwise each differing PCR is named.

This is how an auditor checks a published image: rebuild the image from the release's source tree
(image/reproduce.sh does the whole rebuild and then runs this command), then compare. With
--public-key, the file's cosign signature (--signature, default <file>.sig) is verified first and
a file that is not signed by that key is refused.`,
		Example: `  constellation image compare out/image/constellation.efi --measurements measurements.json
  constellation image compare constellation.efi --measurements measurements.json --public-key cosign.pub -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.imageCompare(cmd, args[0])
		},
	}
	addBootFlags(cmd)
	cmd.Flags().String(flagMeasurements, "", "the published measurements.json (required)")
	cmd.Flags().String(flagSignature, "", "its cosign signature (default: <measurements>.sig; read only with --public-key)")
	cmd.Flags().String(flagPublicKey, "", "verify the file's signature with this cosign public key")
	addOutputFlag(cmd)
	_ = cmd.MarkFlagRequired(flagMeasurements)
	return cmd
}

// compareRow is one PCR of the comparison.
type compareRow struct {
	PCR         uint32 `json:"pcr"`
	Published   string `json:"published"`
	Reproduced  string `json:"reproduced"`
	Match       bool   `json:"match"`
	Description string `json:"description"`
}

type compareResult struct {
	UKI               string       `json:"uki"`
	Measurements      string       `json:"measurements"`
	Image             string       `json:"image"`
	Variant           string       `json:"variant"`
	SignatureVerified bool         `json:"signatureVerified"`
	PublicKey         string       `json:"publicKey,omitempty"`
	UKIImageRef       string       `json:"ukiImageRef"`
	Platform          string       `json:"platform"`
	BootPath          string       `json:"bootPath"`
	Match             bool         `json:"match"`
	Differing         []uint32     `json:"differing"`
	PCRs              []compareRow `json:"pcrs"`
}

func (e *env) imageCompare(cmd *cobra.Command, ukiPath string) error {
	format, err := outputFormat(cmd)
	if err != nil {
		return err
	}
	o, err := bootFlags(cmd)
	if err != nil {
		return err
	}
	flags := cmd.Flags()
	mPath, err := flags.GetString(flagMeasurements)
	if err != nil {
		return err
	}
	sigPath, err := flags.GetString(flagSignature)
	if err != nil {
		return err
	}
	keyPath, err := flags.GetString(flagPublicKey)
	if err != nil {
		return err
	}
	if sigPath != "" && keyPath == "" {
		return fmt.Errorf("--%s needs --%s: a signature is only checked against a key", flagSignature, flagPublicKey)
	}
	fh := file.NewHandler(e.osFs)

	published, err := e.readPublished(fh, mPath, sigPath, keyPath)
	if err != nil {
		return err
	}
	ukiData, _, reproduced, err := precomputeUKI(fh, ukiPath, o)
	if err != nil {
		return err
	}

	res := compareResult{
		UKI: ukiPath, Measurements: mPath, Image: published.Image, Variant: published.Variant,
		SignatureVerified: keyPath != "", PublicKey: keyPath, UKIImageRef: precompute.ImageRef(ukiData),
		Platform: o.platform.Name, BootPath: o.pathName, Differing: []uint32{},
	}
	union := measurements.M{}
	for idx, m := range published.Measurements {
		union[idx] = m
	}
	for idx, m := range reproduced {
		union[idx] = m
	}
	for _, idx := range union.Indices() {
		row := compareRow{PCR: idx, Description: pcrDescription(idx, o.path)}
		p, inPublished := published.Measurements[idx]
		r, inReproduced := reproduced[idx]
		if inPublished {
			row.Published = p.Expected.String()
		}
		if inReproduced {
			row.Reproduced = r.Expected.String()
		}
		row.Match = inPublished && inReproduced && bytes.Equal(p.Expected, r.Expected)
		if !row.Match {
			res.Differing = append(res.Differing, idx)
		}
		res.PCRs = append(res.PCRs, row)
	}
	res.Match = len(res.Differing) == 0

	if format == outputJSON {
		enc := json.NewEncoder(e.out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else if err := e.printCompareResult(res); err != nil {
		return err
	}
	if !res.Match {
		return &exitError{code: 1, reported: true, err: errMeasurementsDiffer}
	}
	return nil
}

// readPublished reads the measurements file; with a key, only if its signature verifies.
func (e *env) readPublished(fh file.Handler, mPath, sigPath, keyPath string) (*signed.File, error) {
	data, err := fh.Read(mPath)
	if err != nil {
		return nil, err
	}
	if keyPath == "" {
		mf, err := signed.Parse(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", mPath, err)
		}
		return mf, nil
	}
	verifier, err := e.publicKey(keyPath)
	if err != nil {
		return nil, err
	}
	if sigPath == "" {
		sigPath = mPath + signed.SignatureSuffix
	}
	sig, err := fh.Read(sigPath)
	if err != nil {
		return nil, fmt.Errorf("%w: pass the file's signature with --%s", err, flagSignature)
	}
	mf, err := signed.Verify(data, sig, verifier)
	switch {
	case errors.Is(err, cosign.ErrInvalidSignature) || errors.Is(err, cosign.ErrMalformed):
		return nil, fmt.Errorf("%s is not signed by %s: %w; nothing was compared", mPath, keyPath, err)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", mPath, err)
	}
	return mf, nil
}

func (e *env) printCompareResult(r compareResult) error {
	signature := "signature NOT checked (pass --public-key)"
	if r.SignatureVerified {
		signature = "signature verified with " + r.PublicKey
	}
	fmt.Fprintf(e.out, "Compared %s (boot path %s, firmware profile %s)\nwith %s (image %s, variant %s, %s).\n\n",
		r.UKI, r.BootPath, r.Platform, r.Measurements, r.Image, r.Variant, signature)
	tw := tabwriter.NewWriter(e.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PCR\tPUBLISHED\tREPRODUCED\tRESULT")
	for _, row := range r.PCRs {
		result := "match"
		if !row.Match {
			result = "DIFFERS: " + row.Description
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", row.PCR, orNone(row.Published), orNone(row.Reproduced), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(e.out)
	if r.Match {
		_, err := fmt.Fprintf(e.out, "All %d PCRs match: %s reproduces the published measurements.\n", len(r.PCRs), r.UKI)
		return err
	}
	names := make([]string, len(r.Differing))
	for i, idx := range r.Differing {
		names[i] = fmt.Sprintf("%d", idx)
	}
	fmt.Fprintf(e.out, "%d of %d PCRs differ (PCR %s): %s is not the image these measurements describe.\n",
		len(r.Differing), len(r.PCRs), strings.Join(names, ", "), r.UKI)
	if strings.HasPrefix(r.Image, "sha256:") && r.Image != r.UKIImageRef {
		fmt.Fprintf(e.out, "The file names the UKI %s; this one is %s.\n", r.Image, r.UKIImageRef)
	}
	_, err := fmt.Fprintln(e.out, "Check that the image was rebuilt from the release's source tree and package bundle, and the boot flags.")
	return err
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
