package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-go/constellation/internal/audit"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func newAuditCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check the control planes' audit logs of attestation decisions",
	}
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check that no entry of the control planes' audit logs was altered or deleted",
		Long: `Each control plane's JoinService records every attestation decision (joins, rejoins, refused
handshakes, re-attestations of running nodes) in an append-only log whose entries are hash-chained.
audit verify fetches each control plane's log and checks every entry's hash and link: an altered,
deleted or reordered entry breaks the chain and is named. It also checks that the last entry an
earlier audit verify saw (kept in constellation-state.yaml) is still there, so that a log cut short or
replaced from its start is detected too; when every log verifies, it remembers their new ends.`,
		Example: `  constellation audit verify
  constellation audit verify -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := outputFormat(cmd)
			if err != nil {
				return err
			}
			return e.auditVerify(cmd.Context(), format)
		},
	}
	addOutputFlag(verify)
	cmd.AddCommand(verify)
	return cmd
}

type auditNodeResult struct {
	Node     string         `json:"node"`
	IP       string         `json:"ip"`
	Verified bool           `json:"verified"`
	Error    string         `json:"error,omitempty"`
	Entries  int            `json:"entries"`
	First    time.Time      `json:"first,omitzero"`
	Last     time.Time      `json:"last,omitzero"`
	Results  map[string]int `json:"results,omitempty"`
	anchor   state.AuditAnchor
}

// maxAuditLog bounds a fetched log (a few hundred bytes an entry).
const maxAuditLog = 1 << 30

func fetchAuditLog(ctx context.Context, ip string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	url := "http://" + net.JoinHostPort(ip, strconv.Itoa(joinproto.HTTPPort)) + joinproto.AuditPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAuditLog+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxAuditLog {
		return nil, fmt.Errorf("%s: the log is larger than %d bytes", url, maxAuditLog)
	}
	return data, nil
}

func (e *env) auditVerify(ctx context.Context, format string) error {
	_, st, err := e.loadInitialized("audit")
	if err != nil {
		return err
	}
	var names []string
	for name, n := range st.Infrastructure.Nodes {
		if n.Role == string(role.ControlPlane) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return errors.New("the state lists no control planes")
	}
	results := make([]auditNodeResult, 0, len(names))
	failed := 0
	for _, name := range names {
		r := e.auditNode(ctx, name, st.Infrastructure.Nodes[name].IP, st.AuditAnchors[name])
		if !r.Verified {
			failed++
		}
		results = append(results, r)
	}
	if failed == 0 {
		if st.AuditAnchors == nil {
			st.AuditAnchors = map[string]state.AuditAnchor{}
		}
		for _, r := range results {
			st.AuditAnchors[r.Node] = r.anchor
		}
		if err := st.Write(e.files, state.FileName); err != nil {
			return fmt.Errorf("remembering the logs' ends: %w", err)
		}
	}
	if format == outputJSON {
		if err := json.NewEncoder(e.out).Encode(map[string]any{"verified": failed == 0, "controlPlanes": results}); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			if !r.Verified {
				fmt.Fprintf(e.out, "✗ %s (%s): %s\n", r.Node, r.IP, r.Error)
				continue
			}
			fmt.Fprintf(e.out, "✓ %s (%s): %d entries, chain intact", r.Node, r.IP, r.Entries)
			if r.Entries > 0 {
				fmt.Fprintf(e.out, " (%s to %s; %d ok, %d refused, %d failed)", r.First.Format(time.RFC3339), r.Last.Format(time.RFC3339),
					r.Results["ok"]+r.Results["verified"], r.Results["refused"], r.Results["failed"])
			}
			fmt.Fprintln(e.out)
		}
	}
	if failed > 0 {
		err := fmt.Errorf("%d of %d audit logs failed verification", failed, len(results))
		if format == outputText {
			fmt.Fprintf(e.errOut, "Error: %v: entries were altered, deleted or the log was replaced; treat the decisions it records as untrusted\n", err)
		}
		return &exitError{code: 1, reported: true, err: err}
	}
	return nil
}

func (e *env) auditNode(ctx context.Context, name, ip string, anchor state.AuditAnchor) auditNodeResult {
	r := auditNodeResult{Node: name, IP: ip}
	data, err := e.deps.auditLog(ctx, ip)
	if err != nil {
		r.Error = fmt.Sprintf("fetching the audit log: %v", err)
		return r
	}
	var a *audit.Anchor
	if anchor.Seq > 0 {
		a = &audit.Anchor{Seq: anchor.Seq, Hash: anchor.Hash}
	}
	sum, err := audit.Verify(bytes.NewReader(data), a)
	r.Entries, r.Results = sum.Entries, sum.Results
	if sum.Entries > 0 {
		r.First, r.Last = sum.First.Time, sum.Last.Time
	}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Verified = true
	r.anchor = state.AuditAnchor{Seq: sum.Last.Seq, Hash: sum.Last.Hash}
	return r
}
