package cmd

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/afero"
	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/choose"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/signed"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

const (
	flagNode       = "node"
	flagEndpoint   = "endpoint"
	flagClusterID  = "cluster-id"
	flagPlatformCA = "platform-ca"
)

func newVerifyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check that the cluster's nodes run exactly the configured image",
		Long: `Ask each node's VerificationService for an attestation bound to a fresh random nonce and check it:
the TPM quote's signature and nonce, the event log against the quoted PCRs, every measurement in
attestation.measurements, and PCR 15 against the cluster ID (the node belongs to this cluster).

For a node that fails, every differing PCR is listed with the expected and the actual value and the
events the node's log shows for it (which boot component was measured). The exit code is 0 only if
every checked node verified.

Without a workspace (for an auditor, say), --endpoint names the nodes and the trust comes from the flags:
the cluster ID the nodes must be locked to, a measurements.json with its cosign signature and the
publisher's public key (an unsigned file is refused), and for qemu-vtpm the platform CA that certifies
the nodes' vTPMs.`,
		Example: `  constellation verify                      # every node
  constellation verify --node worker-0      # one node, by name or address
  constellation verify -o json
  constellation verify --endpoint 10.42.0.2 --endpoint 10.42.0.3 --cluster-id <hex> \
    --measurements https://example.com/measurements.json --public-key cosign.pub --platform-ca ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nodes, err := cmd.Flags().GetStringSlice(flagNode)
			if err != nil {
				return err
			}
			format, err := outputFormat(cmd)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed(flagEndpoint) {
				if len(nodes) > 0 {
					return fmt.Errorf("--%s and --%s exclude each other: --%s names the nodes without a workspace", flagNode, flagEndpoint, flagEndpoint)
				}
				return e.verifyWithoutWorkspace(cmd, format)
			}
			return e.verify(cmd.Context(), nodes, format)
		},
	}
	cmd.Flags().StringSlice(flagNode, nil, "node name or address to verify (repeatable; default: every node)")
	cmd.Flags().StringSlice(flagEndpoint, nil, "without a workspace: address of a node to verify (repeatable)")
	cmd.Flags().String(flagClusterID, "", "with --endpoint: the cluster ID (hex) the nodes must be locked to")
	cmd.Flags().String(flagMeasurements, "", "with --endpoint: http(s) URL or path of the published measurements.json")
	cmd.Flags().String(flagSignatureURL, "", "with --endpoint: URL or path of its signature (default: --measurements with .sig appended)")
	cmd.Flags().String(flagPublicKey, "cosign.pub", "with --endpoint: the publisher's cosign public key (PEM), or \""+builtInKey+"\"")
	cmd.Flags().String(flagPlatformCA, "", "with --endpoint: PEM certificate of the platform CA that certifies the nodes' vTPMs (qemu-vtpm)")
	cmd.Flags().Duration(flagTimeout, 30*time.Second, "with --endpoint: time limit for the downloads")
	_ = cmd.RegisterFlagCompletionFunc(flagNode, e.completeNodes)
	addOutputFlag(cmd)
	return cmd
}

type verifyResult struct {
	Cluster string `json:"cluster,omitempty"`
	// Image is the image the measurements file names, when verifying without a workspace.
	Image     string                     `json:"image,omitempty"`
	ClusterID string                     `json:"clusterID,omitempty"`
	PCRs      []uint32                   `json:"pcrs"`
	Verified  bool                       `json:"verified"`
	Nodes     []clusterclient.NodeResult `json:"nodes"`
}

func (e *env) verify(ctx context.Context, only []string, format string) error {
	cfg, st, err := e.loadCluster()
	if err != nil {
		return err
	}
	refs := cfg.Attestation.Measurements.WithFreshNode()
	if st.IsInitialized() {
		if refs, err = cfg.Attestation.Measurements.WithClusterID(st.ClusterValues.ClusterID); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(e.errOut, "The cluster is not initialized: expecting PCR 15 zero (a node that never took a cluster's lock).")
	}
	validator, err := e.validator(cfg, refs)
	if err != nil {
		return err
	}
	if st.IsInitialized() && st.Rollout != nil {
		// The previous image's measurements come from the admin's own state, recorded when the roll-out began.
		previous, err := st.Rollout.PreviousMeasurements.WithClusterID(st.ClusterValues.ClusterID)
		if err != nil {
			return err
		}
		if validator, err = choose.ForRollout(cfg.Attestation, refs, previous, e.log); err != nil {
			return err
		}
		fmt.Fprintf(e.errOut, "A roll-out to the image %s runs: a node still on the previous image is accepted with that "+
			"image's measurements until 'constellation apply' finishes it.\n", st.Rollout.Image)
	}
	targets, err := selectNodes(st, only)
	if err != nil {
		return err
	}

	res := verifyResult{Cluster: st.Infrastructure.Name}
	if st.IsInitialized() {
		res.ClusterID = st.ClusterValues.ClusterID.String()
	}
	return e.runVerify(ctx, res, targets, refs, validator, format)
}

// runVerify verifies targets with validator and reports the result.
func (e *env) runVerify(ctx context.Context, res verifyResult, targets []clusterclient.Target, refs measurements.M, validator attestation.Validator, format string) error {
	for idx := range refs {
		res.PCRs = append(res.PCRs, idx)
	}
	slices.Sort(res.PCRs)
	res.Verified, res.Nodes = true, clusterclient.VerifyNodes(ctx, e.deps.attester, targets, validator)
	for _, n := range res.Nodes {
		res.Verified = res.Verified && n.Verified
	}
	if format == outputJSON {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(e.out, string(data))
	} else {
		printVerify(e, res)
	}
	if !res.Verified {
		failed := 0
		for _, n := range res.Nodes {
			if !n.Verified {
				failed++
			}
		}
		err := fmt.Errorf("%d of %d nodes failed verification", failed, len(res.Nodes))
		if format == outputText {
			fmt.Fprintf(e.errOut, "Error: %v: do not trust them; compare the PCRs above with the image's published measurements\n", err)
		}
		return &exitError{code: 1, reported: true, err: err}
	}
	return nil
}

// verifyWithoutWorkspace verifies the nodes --endpoint names against the trust the flags give.
func (e *env) verifyWithoutWorkspace(cmd *cobra.Command, format string) error {
	flags := cmd.Flags()
	endpoints, _ := flags.GetStringSlice(flagEndpoint)
	idHex, _ := flags.GetString(flagClusterID)
	src, _ := flags.GetString(flagMeasurements)
	sigSrc, _ := flags.GetString(flagSignatureURL)
	keySrc, _ := flags.GetString(flagPublicKey)
	caPath, _ := flags.GetString(flagPlatformCA)
	timeout, _ := flags.GetDuration(flagTimeout)
	var missing []string
	for name, v := range map[string]string{flagClusterID: idHex, flagMeasurements: src} {
		if v == "" {
			missing = append(missing, "--"+name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("verifying without a workspace needs %s: the cluster's ID and its published measurements are the trust", strings.Join(missing, " and "))
	}
	clusterID, err := hex.DecodeString(idHex)
	if err != nil || len(clusterID) != 32 {
		return fmt.Errorf("--%s %q: expected the cluster ID as 64 hex digits ('constellation status' shows it)", flagClusterID, idHex)
	}
	if sigSrc == "" {
		sigSrc = src + signed.SignatureSuffix
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
	if err != nil {
		return fmt.Errorf("%s: %w\nOnly measurements signed by the publisher's key (--%s) are trusted", src, err, flagPublicKey)
	}
	att := config.AttestationConfig{Variant: mf.Variant, Measurements: mf.Measurements}
	if caPath != "" {
		pemData, err := afero.ReadFile(e.osFs, caPath)
		if err != nil {
			return fmt.Errorf("--%s: %w", flagPlatformCA, err)
		}
		att.PlatformCA = string(pemData)
	}
	if mf.Variant == variant.QEMUVTPM.String() && att.PlatformCA == "" {
		return fmt.Errorf("%s is for %s, whose nodes' vTPMs are trusted through their platform's CA: pass it with --%s (the cluster's attestation.platformCA)",
			src, mf.Variant, flagPlatformCA)
	}
	refs, err := mf.Measurements.WithClusterID(clusterID)
	if err != nil {
		return err
	}
	validator, err := choose.ForConfig(att, refs, e.log)
	if err != nil {
		return fmt.Errorf("building the validator for %s: %w (SEV-SNP variants need their policy: verify from the cluster's workspace)", mf.Variant, err)
	}
	targets := make([]clusterclient.Target, len(endpoints))
	for i, ep := range endpoints {
		if _, _, err := net.SplitHostPort(ep); err == nil {
			return fmt.Errorf("--%s %q: pass the node's address without a port (the VerificationService listens on %d)", flagEndpoint, ep, verifyproto.Port)
		}
		// The answer's binding names the node that answered: an auditor's address list has no names.
		targets[i] = clusterclient.Target{Name: endpointTarget, IP: ep, AnyNode: true}
	}
	res := verifyResult{Image: mf.Image, ClusterID: hex.EncodeToString(clusterID)}
	return e.runVerify(cmd.Context(), res, targets, refs, validator, format)
}

// endpointTarget names the cluster endpoint when the state lists no nodes.
const endpointTarget = "endpoint"

// selectNodes picks the nodes to verify from the state: all, or those named (by name or address).
func selectNodes(st *state.State, only []string) ([]clusterclient.Target, error) {
	var all []clusterclient.Target
	for name, n := range st.Infrastructure.Nodes {
		all = append(all, clusterclient.Target{Name: name, IP: n.IP, Role: n.Role})
	}
	if len(all) == 0 {
		all = append(all, clusterclient.Target{Name: endpointTarget, IP: st.Infrastructure.ClusterEndpoint, AnyNode: true})
	}
	slices.SortFunc(all, func(a, b clusterclient.Target) int { return strings.Compare(a.Name, b.Name) })
	if len(only) == 0 {
		return all, nil
	}
	var out []clusterclient.Target
	for _, want := range only {
		i := slices.IndexFunc(all, func(t clusterclient.Target) bool { return t.Name == want || t.IP == want })
		if i < 0 {
			var names []string
			for _, t := range all {
				names = append(names, t.Name)
			}
			return nil, fmt.Errorf("--%s %q: no such node; the cluster has %s", flagNode, want, strings.Join(names, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

func printVerify(e *env, res verifyResult) {
	var pcrs []string
	for _, p := range res.PCRs {
		pcrs = append(pcrs, strconv.Itoa(int(p)))
	}
	for _, n := range res.Nodes {
		who := fmt.Sprintf("%s (%s", n.Name, n.IP)
		if n.Role != "" {
			who += ", " + n.Role
		}
		who += ")"
		if n.Verified {
			fmt.Fprintf(e.out, "✓ %s: verified; PCRs %s match\n", who, strings.Join(pcrs, ", "))
			continue
		}
		fmt.Fprintf(e.out, "✗ %s: FAILED\n", who)
		switch {
		case len(n.Mismatches) > 0 || len(n.Failures) > 0:
			for _, f := range n.Failures {
				fmt.Fprintf(e.out, "    %s\n", f)
			}
			for _, m := range n.Mismatches {
				fmt.Fprintf(e.out, "    %s\n", strings.ReplaceAll(m.String(), "\n", "\n    "))
				if m.PCR == measurements.PCRClusterID {
					fmt.Fprintln(e.out, "    (PCR 15 holds the cluster ID the node locked itself to: this node does not belong to this cluster)")
				}
			}
		default:
			fmt.Fprintf(e.out, "    %s\n", n.Error)
		}
	}
	if res.Verified {
		fmt.Fprintf(e.out, "All %d nodes verified.\n", len(res.Nodes))
	}
}

// completeNodes completes node names from the state.
func (e *env) completeNodes(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
	if err := e.setup(cmd); err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	st, err := e.readState()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for name := range st.Infrastructure.Nodes {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, cobra.ShellCompDirectiveNoFileComp
}
