package cmd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
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
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// fakeRecoverer stands for restarted nodes: like aTLS, the validator checks the node's attestation (from a
// real vTPM) before the master secret is "sent". A missing node refuses the connection.
type fakeRecoverer struct {
	t     *testing.T
	nodes map[string]*vtpmtest.Node
	sent  map[string]*recoverproto.RecoverRequest
	// booting refuses connections this many times first.
	booting int
	// wrapped is what each node keeps beside its disk (user-managed keys).
	wrapped map[string][]byte
}

// recoverDiskUUID is every fake node's state disk.
const recoverDiskUUID = "6f1c7b0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"

func (f *fakeRecoverer) Recover(ctx context.Context, endpoint string, v attestation.Validator, prepare prepareRecovery) error {
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
	req, err := prepare(ctx, &recoverproto.DescribeResponse{DiskUuid: recoverDiskUUID, WrappedStateDiskKey: f.wrapped[endpoint]})
	if err != nil {
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

// TestRecoverUserManaged: with user-managed keys, recover has the KMS (a real local-kms) unwrap the disk key
// the attested node keeps wrapped, sends it with the master secret, and sends the blob re-wrapped by the key
// configured now: after the configuration moved to a new KMS key, the old one is needed once more, and
// never again for that node. The KMS down or refusing sends nothing and names the KMS.
func TestRecoverUserManaged(t *testing.T) {
	ms := crypto.MasterSecret{Key: bytes.Repeat([]byte{1}, 32), Salt: bytes.Repeat([]byte{2}, 32)}
	srv, err := localkms.Start("127.0.0.1:0", t.TempDir(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	ctx := context.Background()
	oldKey, err := localkms.EnsureKey(ctx, srv.Endpoint(), "alias/old")
	require.NoError(t, err)
	newKey, err := localkms.EnsureKey(ctx, srv.Endpoint(), "alias/new")
	require.NoError(t, err)
	// The node's disk key, generated by the KMS under the old key as the JoinService's KeyService would.
	backend, err := awskms.New(localkms.Client(srv.Endpoint()), oldKey, &oneBlob{})
	require.NoError(t, err)
	diskKey, blob, err := backend.DataKey(ctx, recoverDiskUUID, joinproto.StateDiskKeyLength)
	require.NoError(t, err)

	tests := map[string]struct {
		keyID, endpoint string
		noCredentials   bool
		wrapped         []byte
		wantCode        int
		wantStderr      string
	}{
		"the same key":                  {keyID: "alias/old", wrapped: blob},
		"after a move to another key":   {keyID: "alias/new", wrapped: blob},
		"a node keeping no key":         {keyID: "alias/old", wantCode: 1, wantStderr: "keeps no wrapped disk key"},
		"a blob that is not the disk's": {keyID: "alias/old", wrapped: []byte("garbage"), wantCode: 1, wantStderr: "unwrapping the node's disk key with your KMS"},
		"the KMS is down":               {keyID: "alias/old", wrapped: blob, endpoint: "http://127.0.0.1:1", wantCode: 1, wantStderr: "aws-kms: the KMS"},
		"no credentials file":           {keyID: "alias/old", wrapped: blob, noCredentials: true, wantCode: 1, wantStderr: "kms-credentials.json is missing"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			writeCreatedConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
			endpoint := srv.Endpoint()
			if tc.endpoint != "" {
				endpoint = tc.endpoint
			}
			cfgData, err := afero.ReadFile(fs, config.FileName)
			require.NoError(t, err)
			cfgData = bytes.Replace(cfgData, []byte("kms: {}\n"), []byte(fmt.Sprintf("kms:\n  awsKMS:\n    region: %s\n    keyID: %s\n    endpoint: %s\n    credentialsFile: kms-credentials.json\n",
				localkms.Region, tc.keyID, endpoint)), 1)
			require.NoError(t, afero.WriteFile(fs, config.FileName, cfgData, 0o644))
			if !tc.noCredentials {
				require.NoError(t, afero.WriteFile(fs, "kms-credentials.json", []byte(`{"Version":1,"AccessKeyId":"AKID","SecretAccessKey":"secret"}`), 0o600))
			}
			writeInitializedState(t, fs, bytes.Repeat([]byte{3}, 32))
			require.NoError(t, crypto.WriteMasterSecret(file.NewHandler(fs), crypto.MasterSecretFileName, ms))
			rec := &fakeRecoverer{t: t, nodes: map[string]*vtpmtest.Node{"10.42.0.2:9999": vtpmtest.NewNode(t, vtpmtest.Boot)},
				sent: map[string]*recoverproto.RecoverRequest{}, wrapped: map[string][]byte{"10.42.0.2:9999": tc.wrapped}}
			e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, nil)
			e.deps.recoverer = rec
			e.deps.reachable = func(context.Context, string) bool { return false }
			e.deps.kube = func([]byte) (kubernetes.Interface, error) { return k8sfake.NewClientset(), nil }
			require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("kubeconfig"), 0o600))

			code := execute(ctx, []string{"recover"}, e)
			require.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			assert.Contains(t, errOut.String(), tc.wantStderr)
			if tc.wantCode != 0 {
				assert.Empty(t, rec.sent, "nothing may be sent")
				return
			}
			sent := rec.sent["10.42.0.2:9999"]
			require.NotNil(t, sent)
			assert.Equal(t, diskKey, sent.GetStateDiskKey(), "the key the KMS generated for the disk")
			assert.Equal(t, ms.Key, sent.GetMasterSecret(), "the cluster ID still comes from the master secret")
			// The re-wrapped blob unwraps with the configured key alone.
			wantKey := map[string]string{"alias/old": oldKey, "alias/new": newKey}[tc.keyID]
			got, err := awskms.Unwrap(ctx, localkms.Client(srv.Endpoint()), wantKey, recoverDiskUUID, joinproto.StateDiskKeyLength, sent.GetWrappedStateDiskKey())
			require.NoError(t, err)
			assert.Equal(t, diskKey, got)
		})
	}
}

// oneBlob is an awskms.Store of one blob, as a node keeps beside its disk.
type oneBlob struct{ blob []byte }

func (s *oneBlob) Get(context.Context, string) ([]byte, error) {
	if s.blob == nil {
		return nil, awskms.ErrNotFound
	}
	return s.blob, nil
}
func (s *oneBlob) Create(_ context.Context, _ string, b []byte) error { s.blob = b; return nil }
func (s *oneBlob) Update(_ context.Context, _ string, b []byte) error { s.blob = b; return nil }
func (s *oneBlob) List(context.Context) ([]string, error)             { return nil, nil }
