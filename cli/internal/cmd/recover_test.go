package cmd

import (
	"bytes"
	"context"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
)

// fakeRecoverer stands for restarted nodes: like aTLS, the validator checks the node's attestation (from a
// real vTPM) before the master secret is "sent". A missing node refuses the connection.
type fakeRecoverer struct {
	t     *testing.T
	nodes map[string]*vtpmtest.Node
	sent  map[string]*recoverproto.RecoverRequest
	// booting refuses connections this many times first.
	booting int
}

func (f *fakeRecoverer) Recover(ctx context.Context, endpoint string, v attestation.Validator, req *recoverproto.RecoverRequest) error {
	n, ok := f.nodes[endpoint]
	if f.booting > 0 {
		f.booting--
		ok = false
	}
	if !ok {
		return status.Error(codes.Unavailable, "connection error: dial tcp "+endpoint+": connect: connection refused")
	}
	nonce := bytes.Repeat([]byte{2}, 32)
	doc, err := vtpm.NewIssuer(variant.QEMUVTPM, n.TPM, vtpm.WithEventLog(func() ([]byte, error) { return n.EventLog, nil })).Issue(ctx, nil, nonce)
	require.NoError(f.t, err)
	if _, err := v.Validate(ctx, doc, nonce); err != nil {
		return err
	}
	f.sent[endpoint] = req
	return nil
}

func TestRecover(t *testing.T) {
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 4, vtpmtest.Event{PCR: 11, Type: vtpmtest.Boot[4].Type, Data: ".linux-evil"})
	ms := crypto.MasterSecret{Key: bytes.Repeat([]byte{1}, 32), Salt: bytes.Repeat([]byte{2}, 32)}
	testCases := map[string]struct {
		cp         *vtpmtest.Node
		booting    int
		running    bool
		noSecret   bool
		args       []string
		wantCode   int
		wantSent   bool
		wantStdout string
		wantStderr string
	}{
		"a restarted control plane is recovered": {cp: vtpmtest.NewNode(t, vtpmtest.Boot), wantSent: true, wantStdout: "Recovered 1 control plane"},
		"a tampered node gets nothing": {
			cp: vtpmtest.NewNode(t, tampered), wantCode: 1, wantStderr: "PCR 11",
		},
		"a running node is left alone": {running: true, wantStdout: "Recovered 0 control plane", wantStderr: "runs normally"},
		"a booting node is waited for": {cp: vtpmtest.NewNode(t, vtpmtest.Boot), booting: 3, wantSent: true, wantStdout: "Recovered 1", wantStderr: "still booting"},
		"a node that never answers":    {wantCode: 1, wantStderr: "did not answer"},
		"no master secret":             {cp: vtpmtest.NewNode(t, vtpmtest.Boot), noSecret: true, wantCode: 1, wantStderr: "constellation-mastersecret.json is missing"},
		"unknown node":                 {cp: vtpmtest.NewNode(t, vtpmtest.Boot), args: []string{"--node", "cp-7"}, wantCode: 1, wantStderr: "no such node"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			writeCreatedConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
			writeInitializedState(t, fs, bytes.Repeat([]byte{3}, 32))
			if !tc.noSecret {
				require.NoError(t, crypto.WriteMasterSecret(file.NewHandler(fs), crypto.MasterSecretFileName, ms))
			}
			rec := &fakeRecoverer{t: t, nodes: map[string]*vtpmtest.Node{}, sent: map[string]*recoverproto.RecoverRequest{}, booting: tc.booting}
			if tc.cp != nil {
				rec.nodes["10.42.0.2:9999"] = tc.cp
			}
			// The worker is never asked: only control planes need the master secret.
			rec.nodes["10.42.0.3:9999"] = vtpmtest.NewNode(t, vtpmtest.Boot)
			e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, nil)
			e.deps.recoverer = rec
			e.deps.reachable = func(_ context.Context, addr string) bool { return tc.running && addr == "10.42.0.2:30081" }
			e.deps.kube = func([]byte) (kubernetes.Interface, error) { return k8sfake.NewClientset(), nil }
			require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("kubeconfig"), 0o600))

			code := execute(context.Background(), append([]string{"recover"}, tc.args...), e)
			assert.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			assert.Contains(t, out.String(), tc.wantStdout)
			assert.Contains(t, errOut.String(), tc.wantStderr)
			assert.NotContains(t, rec.sent, "10.42.0.3:9999")
			if tc.wantSent {
				require.Contains(t, rec.sent, "10.42.0.2:9999")
				assert.Equal(t, ms.Key, rec.sent["10.42.0.2:9999"].GetMasterSecret())
			} else {
				assert.Empty(t, rec.sent, "nothing may be sent")
			}
		})
	}
}
