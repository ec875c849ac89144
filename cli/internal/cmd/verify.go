package cmd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

const flagNode = "node"

func newVerifyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check that the cluster's nodes run exactly the configured image",
		Long: `Ask each node's VerificationService for an attestation bound to a fresh random nonce and check it:
the TPM quote's signature and nonce, the event log against the quoted PCRs, every measurement in
attestation.measurements, and PCR 15 against the cluster ID (the node belongs to this cluster).

For a node that fails, every differing PCR is listed with the expected and the actual value and the
events the node's log shows for it (which boot component was measured). The exit code is 0 only if
every checked node verified.`,
		Example: `  constellation verify                      # every node
  constellation verify --node worker-0      # one node, by name or address
  constellation verify -o json`,
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
			return e.verify(cmd.Context(), nodes, format)
		},
	}
	cmd.Flags().StringSlice(flagNode, nil, "node name or address to verify (repeatable; default: every node)")
	_ = cmd.RegisterFlagCompletionFunc(flagNode, e.completeNodes)
	addOutputFlag(cmd)
	return cmd
}

// nodeResult is one node's verification.
type nodeResult struct {
	Name       string                    `json:"name"`
	IP         string                    `json:"ip"`
	Role       string                    `json:"role"`
	Verified   bool                      `json:"verified"`
	Error      string                    `json:"error,omitempty"`
	Mismatches []attestation.PCRMismatch `json:"mismatches,omitempty"`
	Failures   []string                  `json:"failures,omitempty"`
	Took       string                    `json:"took"`
}

type verifyResult struct {
	Cluster   string       `json:"cluster"`
	ClusterID string       `json:"clusterID,omitempty"`
	PCRs      []uint32     `json:"pcrs"`
	Verified  bool         `json:"verified"`
	Nodes     []nodeResult `json:"nodes"`
}

func (e *env) verify(ctx context.Context, only []string, format string) error {
	cfg, err := e.loadConfig()
	if err != nil {
		return err
	}
	st, err := e.requireState()
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
	targets, err := selectNodes(st, only)
	if err != nil {
		return err
	}

	res := verifyResult{Cluster: st.Infrastructure.Name, Verified: true, Nodes: make([]nodeResult, len(targets))}
	if st.IsInitialized() {
		res.ClusterID = st.ClusterValues.ClusterID.String()
	}
	for idx := range refs {
		res.PCRs = append(res.PCRs, idx)
	}
	slices.Sort(res.PCRs)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res.Nodes[i] = e.verifyNode(ctx, t, validator)
		}()
	}
	wg.Wait()
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

type target struct {
	name, ip, role string
}

// endpointTarget names the cluster endpoint when the state lists no nodes.
const endpointTarget = "endpoint"

// selectNodes picks the nodes to verify from the state: all, or those named (by name or address).
func selectNodes(st *state.State, only []string) ([]target, error) {
	var all []target
	for name, n := range st.Infrastructure.Nodes {
		all = append(all, target{name: name, ip: n.IP, role: n.Role})
	}
	if len(all) == 0 {
		all = append(all, target{name: endpointTarget, ip: st.Infrastructure.ClusterEndpoint})
	}
	slices.SortFunc(all, func(a, b target) int { return strings.Compare(a.name, b.name) })
	if len(only) == 0 {
		return all, nil
	}
	var out []target
	for _, want := range only {
		i := slices.IndexFunc(all, func(t target) bool { return t.name == want || t.ip == want })
		if i < 0 {
			var names []string
			for _, t := range all {
				names = append(names, t.name)
			}
			return nil, fmt.Errorf("--%s %q: no such node; the cluster has %s", flagNode, want, strings.Join(names, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

func (e *env) verifyNode(ctx context.Context, t target, validator attestation.Validator) nodeResult {
	start := time.Now()
	r := nodeResult{Name: t.name, IP: t.ip, Role: t.role}
	defer func() { r.Took = time.Since(start).Round(time.Millisecond).String() }()
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		r.Error = err.Error()
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	doc, answered, err := e.deps.attester.GetAttestation(ctx, net.JoinHostPort(t.ip, strconv.Itoa(verifyproto.Port)), nonce)
	if err != nil {
		r.Error = fmt.Sprintf("getting an attestation from the VerificationService: %v", err)
		return r
	}
	userData, err := validator.Validate(ctx, doc, nonce)
	if err != nil {
		var verr *attestation.ValidationError
		if errors.As(err, &verr) {
			r.Mismatches, r.Failures = verr.Mismatches, verr.Failures
		}
		r.Error = err.Error()
		return r
	}
	// The answer must come from the node asked: its document is bound to the answering node's name.
	node := t.name
	if t.name == endpointTarget {
		node = answered // no node list in the state: the endpoint's node, whichever it is
	}
	if !bytes.Equal(userData, verifyproto.Binding(node, nil)) {
		r.Error = fmt.Sprintf("the answer is not %s's own: its attestation is bound to another node (it says %q); "+
			"the address answered with another node's attestation, so this node is not verified", t.name, answered)
		return r
	}
	r.Verified = true
	return r
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
