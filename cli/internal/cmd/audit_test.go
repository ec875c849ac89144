package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/audit"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/state"
)

// auditLogOf returns a real audit log with n entries.
func auditLogOf(t *testing.T, n int) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "joinservice.log")
	l, err := audit.Open(path)
	require.NoError(t, err)
	for range n {
		require.NoError(t, l.Append(audit.Entry{Kind: audit.KindJoin, Node: "worker-0", Result: "ok"}))
	}
	require.NoError(t, l.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return data
}

func TestAuditVerify(t *testing.T) {
	fs := afero.NewMemMapFs()
	writeCreatedConfig(t, fs, nil)
	writeInitializedState(t, fs, bytes.Repeat([]byte{3}, 32))
	full := auditLogOf(t, 5)
	lines := strings.SplitAfter(string(full), "\n")

	var served []byte
	var fetchErr error
	auditRun := func(args ...string) (int, string, string) {
		e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, nil)
		e.deps.auditLog = func(_ context.Context, ip string) ([]byte, error) {
			assert.Equal(t, "10.42.0.2", ip, "only the control plane is asked")
			return served, fetchErr
		}
		code := execute(context.Background(), append([]string{"audit", "verify"}, args...), e)
		return code, out.String(), errOut.String()
	}

	// The first check of a log without an anchor: intact; its end is remembered.
	served = []byte(strings.Join(lines[:3], ""))
	code, out, errOut := auditRun()
	require.Zero(t, code, errOut)
	assert.Contains(t, out, "✓ cp-0 (10.42.0.2): 3 entries, chain intact")
	st, err := state.Read(file.NewHandler(fs), state.FileName)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), st.AuditAnchors["cp-0"].Seq)

	// It grew: fine, and the anchor moves on.
	served = full
	code, out, _ = auditRun("-o", "json")
	require.Zero(t, code)
	var res struct {
		Verified bool `json:"verified"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	assert.True(t, res.Verified)

	testCases := map[string]struct {
		log     string
		err     error
		wantOut string
	}{
		"cut short":       {log: strings.Join(lines[:4], ""), wantOut: "the log was cut short"},
		"an entry gone":   {log: lines[0] + lines[1] + strings.Join(lines[3:], ""), wantOut: "entry 4 (line 3) does not follow entry 2"},
		"an entry edited": {log: strings.Replace(string(full), `"result":"ok"`, `"result":"refused"`, 1), wantOut: "entry 1 (line 1) was altered"},
		"unreachable":     {err: errors.New("connection refused"), wantOut: "fetching the audit log: connection refused"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			served, fetchErr = []byte(tc.log), tc.err
			code, out, errOut := auditRun()
			assert.Equal(t, 1, code)
			assert.Contains(t, out, "✗ cp-0")
			assert.Contains(t, out, tc.wantOut)
			assert.Contains(t, errOut, "1 of 1 audit logs failed verification")
			st, err := state.Read(file.NewHandler(fs), state.FileName)
			require.NoError(t, err)
			assert.Equal(t, uint64(5), st.AuditAnchors["cp-0"].Seq, "a failed check keeps the anchor")
		})
	}
}
