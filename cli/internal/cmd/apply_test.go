package cmd

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/cli/internal/cloudcmd"
	"github.com/constellation-go/constellation/cli/internal/terraform"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/versions"
)

type fakeInfra struct {
	applyErr   error
	destroyErr error
	applied    int
	destroyed  int
	// platformCA is what the provider reports; empty means the test nodes' CA (vtpmtest).
	platformCA string
	// images is the image each node runs; moved lists MoveNode's calls as node=image.
	images map[string]string
	moved  []string
	// loaded lists LoadImage's calls as node<archive-name; loadErr makes them fail.
	loaded  []string
	loadErr error
}

func (f *fakeInfra) LoadImage(_ context.Context, _ *config.Config, node, archive string) ([]string, error) {
	if f.loadErr != nil {
		return nil, f.loadErr
	}
	f.loaded = append(f.loaded, node+"<"+filepath.Base(archive))
	return []string{"docker.io/library/workload:v1"}, nil
}

func (f *fakeInfra) NodeImages() (map[string]string, error) {
	out := map[string]string{}
	for k, v := range f.images {
		out[k] = v
	}
	return out, nil
}

func (f *fakeInfra) MoveNode(ctx context.Context, _ *config.Config, node, image string) (terraform.Outputs, error) {
	if f.images == nil {
		f.images = map[string]string{}
	}
	f.images[node] = image
	f.moved = append(f.moved, node+"="+image)
	return f.Outputs(ctx)
}

func (f *fakeInfra) Apply(context.Context, *config.Config) (terraform.Outputs, error) {
	f.applied++
	if f.applyErr != nil {
		return terraform.Outputs{}, f.applyErr
	}
	return f.Outputs(context.Background())
}

func (f *fakeInfra) Outputs(context.Context) (terraform.Outputs, error) {
	ca := f.platformCA
	if ca == "" {
		ca = testPlatformCA
	}
	return terraform.Outputs{
		ClusterEndpoint: "10.42.0.2", InClusterEndpoint: "10.42.0.2", APIServerCertSANs: []string{"10.42.0.2"},
		IPCidrNode: "10.42.0.0/24", ComponentURL: "http://10.42.0.1:9081", PlatformCA: ca,
		Nodes: map[string]terraform.NodeOutput{
			"cp-0": {IP: "10.42.0.2", Role: "control-plane"}, "worker-0": {IP: "10.42.0.3", Role: "worker"},
		},
	}, nil
}

func (f *fakeInfra) Identity() (string, []byte, error) {
	return "uid1", bytes.Repeat([]byte{7}, 32), nil
}

func (f *fakeInfra) Destroy(context.Context) error {
	f.destroyed++
	return f.destroyErr
}

// testPlatformCA is the CA of the test nodes' vTPMs (vtpmtest), as the local provider reports its own.
var testPlatformCA = func() string {
	ca, err := vtpmtest.PlatformCAForProcess()
	if err != nil {
		panic(err)
	}
	return string(ca.CertificatePEM())
}()

// fakeIniter stands for the first control plane: like aTLS, it lets the validator check the node's
// attestation (from a real vTPM) before the request is "sent".
type fakeIniter struct {
	t    *testing.T
	node *vtpmtest.Node
	sent *initproto.InitRequest
	// fail makes the node report a failure with logs.
	fail bool
	// interrupt makes the call end as if the user pressed Ctrl-C after the node took its lock.
	interrupt bool
	calls     int
	// booting refuses connections this many times first.
	booting int
}

func (f *fakeIniter) Init(ctx context.Context, _ string, v attestation.Validator, req *initproto.InitRequest,
	progress func(string, string),
) (*initproto.InitSuccessResponse, error) {
	if f.booting > 0 {
		f.booting--
		return nil, status.Error(codes.Unavailable, "connection error: dial tcp 10.42.0.2:9000: connect: connection refused")
	}
	nonce := bytes.Repeat([]byte{1}, 32)
	doc, err := vtpm.NewIssuer(variant.QEMUVTPM, f.node.TPM, vtpm.WithEventLog(func() ([]byte, error) { return f.node.EventLog, nil })).
		Issue(ctx, nil, nonce)
	require.NoError(f.t, err)
	if _, err := v.Validate(ctx, doc, nonce); err != nil {
		return nil, err
	}
	f.calls++
	f.sent = req
	progress("kubeadm-init", "running kubeadm init")
	ms := crypto.MasterSecret{Key: req.GetMasterSecret(), Salt: req.GetSalt()}
	id, err := ms.Identity()
	require.NoError(f.t, err)
	clusterID, ownerID := id.ClusterID, id.OwnerID
	if f.interrupt {
		f.interrupt = false
		require.NoError(f.t, tpm.Extend(f.node.TPM, measurements.PCRClusterID, measurements.ClusterIDEvent(clusterID)))
		return nil, status.Error(codes.Canceled, "context canceled")
	}
	if f.fail {
		return nil, &clusterclient.InitFailedError{Message: "kubeadm init failed", Logs: []byte("kubelet: boom\n")}
	}
	return &initproto.InitSuccessResponse{Kubeconfig: []byte("apiVersion: v1\nkind: Config\n"), ClusterId: clusterID, OwnerId: ownerID}, nil
}

// testEnv returns an env on a memory file system with fakes, and a local configuration whose measurements
// are those of a vTPM node booted with vtpmtest.Boot.
func testEnv(t *testing.T, fs afero.Fs, infra *fakeInfra, in clusterclient.Initer, att clusterclient.Attester) (*env, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var out, errOut bytes.Buffer
	e := &env{osFs: fs, in: strings.NewReader(""), out: &out, errOut: &errOut, deps: deps{
		infra:      func(string, func(string)) (infrastructure, error) { return infra, nil },
		artifacts:  func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: t.TempDir()}, nil },
		initer:     in,
		attester:   att,
		isTerminal: func() bool { return false },
		booting:    clusterclient.Booting{Wait: 200 * time.Millisecond, Poll: time.Millisecond},
		services:   func([]byte) (servicesRelease, error) { return newFakeServices(), nil },
	}}
	return e, &out, &errOut
}

func writeLocalConfig(t *testing.T, fs afero.Fs, m measurements.M) {
	t.Helper()
	cfg, err := config.Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	if m != nil {
		data, err = config.SetMeasurements(data, m)
		require.NoError(t, err)
	}
	require.NoError(t, afero.WriteFile(fs, config.FileName, data, 0o644))
}

// writeCreatedConfig writes the local configuration of a created cluster: with the platform CA that
// create recorded.
func writeCreatedConfig(t *testing.T, fs afero.Fs, m measurements.M) {
	t.Helper()
	writeLocalConfig(t, fs, m)
	data, err := afero.ReadFile(fs, config.FileName)
	require.NoError(t, err)
	data, err = config.SetPlatformCA(data, testPlatformCA)
	require.NoError(t, err)
	require.NoError(t, afero.WriteFile(fs, config.FileName, data, 0o644))
}

func TestApply(t *testing.T) {
	refs := vtpmtest.ReferenceValues(vtpmtest.Boot)
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 4, vtpmtest.Event{PCR: 11, Type: vtpmtest.Boot[4].Type, Data: ".linux-evil"})

	testCases := map[string]struct {
		boot         []vtpmtest.Event
		refs         measurements.M
		applyErr     error
		fail         bool
		wantCode     int
		wantStderr   []string
		wantSent     bool
		wantInit     bool
		wantLog      bool
		wantNoConfig bool
	}{
		"creates and initializes": {boot: vtpmtest.Boot, refs: refs, wantSent: true, wantInit: true},
		"a node that fails attestation gets nothing": {
			boot: tampered, refs: refs, wantCode: 1,
			wantStderr: []string{"PCR 11", "nothing was sent"},
		},
		"a failed init writes the node's logs": {
			boot: vtpmtest.Boot, refs: refs, fail: true, wantCode: 1, wantSent: true, wantLog: true,
			wantStderr: []string{"kubeadm init failed", ClusterLogFile},
		},
		"empty measurements are refused": {
			boot: vtpmtest.Boot, refs: measurements.M{}, wantCode: 1, wantStderr: []string{"attestation.measurements", "is empty"},
		},
		"missing config names the fix": {
			boot: vtpmtest.Boot, wantNoConfig: true, wantCode: 1, wantStderr: []string{"constellation config generate"},
		},
		"failed create says how to continue": {
			boot: vtpmtest.Boot, refs: refs, applyErr: errors.New("terraform apply failed"), wantCode: 1,
			wantStderr: []string{"terraform apply failed", "Re-run the command"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			if !tc.wantNoConfig {
				writeLocalConfig(t, fs, tc.refs)
			}
			infra := &fakeInfra{applyErr: tc.applyErr}
			in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, tc.boot), fail: tc.fail}
			e, out, errOut := testEnv(t, fs, infra, in, nil)
			e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: servicesFixture(t)}, nil }

			code := execute(context.Background(), []string{"apply"}, e)
			assert.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			for _, s := range tc.wantStderr {
				assert.Contains(t, errOut.String(), s)
			}
			assert.Equal(t, tc.wantSent, in.sent != nil, "whether the init request was sent")
			if in.sent != nil {
				assert.Equal(t, []string{"10.42.0.2"}, in.sent.GetApiserverCertSans())
				assert.Equal(t, bytes.Repeat([]byte{7}, 32), in.sent.GetInitSecret())
				assert.NotEmpty(t, in.sent.GetKubernetesComponents())
			}
			secretFile, err := fs.Stat(crypto.MasterSecretFileName)
			if tc.wantSent {
				require.NoError(t, err)
				assert.Equal(t, "-rw-------", secretFile.Mode().Perm().String())
				ms, err := crypto.ReadMasterSecret(e.files, crypto.MasterSecretFileName)
				require.NoError(t, err)
				assert.Equal(t, ms.Key, in.sent.GetMasterSecret())
				assert.NotContains(t, out.String()+errOut.String(), string(ms.Key))
			}
			logData, err := afero.ReadFile(fs, ClusterLogFile)
			if tc.wantLog {
				require.NoError(t, err)
				assert.Equal(t, "kubelet: boom\n", string(logData))
			} else {
				assert.Error(t, err)
			}
			st, err := state.Read(e.files, state.FileName)
			if !tc.wantInit {
				if err == nil {
					assert.False(t, st.IsInitialized())
				}
				return
			}
			require.NoError(t, err)
			assert.True(t, st.IsInitialized())
			assert.Len(t, st.Infrastructure.Nodes, 2)
			assert.Contains(t, out.String(), "is initialized")
			admin, err := afero.ReadFile(fs, AdminConfFile)
			require.NoError(t, err)
			assert.Contains(t, string(admin), "kind: Config")
			info, err := fs.Stat(AdminConfFile)
			require.NoError(t, err)
			assert.Equal(t, "-rw-------", info.Mode().Perm().String())

			// A second apply changes nothing: the cluster trusts the configured measurements.
			stateBefore, err := afero.ReadFile(fs, state.FileName)
			require.NoError(t, err)
			cluster := clusterTrusting(t, fs, nil)
			e.deps.kube = func([]byte) (kubernetes.Interface, error) { return cluster, nil }
			e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: imageFixture(t)}, nil }
			in.sent = nil
			out.Reset()
			require.Zero(t, execute(context.Background(), []string{"apply"}, e))
			assert.Contains(t, out.String(), "nothing to do")
			assert.Nil(t, in.sent)
			assert.Equal(t, 2, infra.applied, "the infrastructure is applied again: it starts nodes that stopped")
			stateAfter, err := afero.ReadFile(fs, state.FileName)
			require.NoError(t, err)
			assert.Equal(t, stateBefore, stateAfter)

			// A configuration with another node than the cluster has is refused before Terraform runs.
			var cfg config.Config
			require.NoError(t, e.files.ReadYAML(config.FileName, &cfg))
			g := cfg.NodeGroups[config.DefaultWorkerGroup]
			g.InitialCount++
			cfg.NodeGroups[config.DefaultWorkerGroup] = g
			data, err := cfg.Marshal()
			require.NoError(t, err)
			require.NoError(t, afero.WriteFile(fs, config.FileName, data, 0o644))
			errOut.Reset()
			assert.Equal(t, 1, execute(context.Background(), []string{"apply"}, e))
			assert.Contains(t, errOut.String(), "adding nodes to an initialized cluster is not supported yet")
			assert.Equal(t, 2, infra.applied)
		})
	}
}

// TestApplyReusesTheMasterSecret: an apply interrupted after the secret was written sends the same one.
func TestApplyReusesTheMasterSecret(t *testing.T) {
	fs := afero.NewMemMapFs()
	writeLocalConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
	in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot), fail: true}
	e, _, _ := testEnv(t, fs, &fakeInfra{}, in, nil)
	e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: servicesFixture(t)}, nil }
	require.Equal(t, 1, execute(context.Background(), []string{"apply"}, e))
	first := in.sent.GetMasterSecret()
	in.fail = false
	require.Equal(t, 0, execute(context.Background(), []string{"apply"}, e))
	assert.Equal(t, first, in.sent.GetMasterSecret())
}

// TestApplyResumesAnInterruptedInit: Ctrl-C after the node took its lock; the node now shows this
// cluster's PCR 15, and a second apply resumes instead of failing.
func TestApplyResumesAnInterruptedInit(t *testing.T) {
	fs := afero.NewMemMapFs()
	writeLocalConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
	in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot), interrupt: true}
	e, out, errOut := testEnv(t, fs, &fakeInfra{}, in, nil)
	e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: servicesFixture(t)}, nil }
	require.Equal(t, 1, execute(context.Background(), []string{"apply"}, e))
	assert.Contains(t, errOut.String(), "re-run 'constellation apply' to continue")

	out.Reset()
	errOut.Reset()
	require.Equal(t, 0, execute(context.Background(), []string{"apply"}, e), errOut.String())
	assert.Contains(t, errOut.String(), "interrupted apply")
	assert.Contains(t, out.String(), "is initialized")
	assert.Equal(t, 2, in.calls, "the fresh-node check fails, the resumed one succeeds")

	// A node locked to another cluster is not taken for ours.
	other := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}
	require.NoError(t, tpm.Extend(other.node.TPM, measurements.PCRClusterID, measurements.ClusterIDEvent(bytes.Repeat([]byte{9}, 32))))
	fs2 := afero.NewMemMapFs()
	writeLocalConfig(t, fs2, vtpmtest.ReferenceValues(vtpmtest.Boot))
	e2, _, errOut2 := testEnv(t, fs2, &fakeInfra{}, other, nil)
	e2.deps.artifacts = e.deps.artifacts
	require.NoError(t, crypto.WriteMasterSecret(file.NewHandler(fs2), crypto.MasterSecretFileName, crypto.MasterSecret{
		Key: bytes.Repeat([]byte{1}, 32), Salt: bytes.Repeat([]byte{2}, 32),
	}))
	assert.Equal(t, 1, execute(context.Background(), []string{"apply"}, e2))
	assert.Contains(t, errOut2.String(), "PCR 15")
	assert.Zero(t, other.calls, "nothing is sent to a node of another cluster")
}

// TestApplyWaitsForABootingNode: the node's Init API does not listen yet right after create.
func TestApplyWaitsForABootingNode(t *testing.T) {
	fs := afero.NewMemMapFs()
	writeLocalConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
	in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot), booting: 3}
	e, out, errOut := testEnv(t, fs, &fakeInfra{}, in, nil)
	e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: servicesFixture(t)}, nil }
	require.Equal(t, 0, execute(context.Background(), []string{"apply"}, e), errOut.String())
	assert.Contains(t, errOut.String(), "still booting")
	assert.Contains(t, out.String(), "is initialized")
}

// servicesFixture is an artifacts directory with (fake) service image archives.
func servicesFixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	osFs := afero.NewOsFs()
	require.NoError(t, osFs.MkdirAll(dir+"/services", 0o755))
	for _, s := range versions.Services {
		require.NoError(t, afero.WriteFile(osFs, dir+"/services/"+s+".tar", []byte(s), 0o644))
	}
	return dir
}

// The platform's CA becomes the configuration's trust root at create; a configuration that trusts another
// platform is not silently rewritten, and no node of this platform is trusted under it.
func TestApplyRecordsThePlatformCA(t *testing.T) {
	artifactsFn := func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: servicesFixture(t)}, nil }

	fs := afero.NewMemMapFs()
	writeLocalConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
	in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}
	e, _, errOut := testEnv(t, fs, &fakeInfra{}, in, nil)
	e.deps.artifacts = artifactsFn
	require.Equal(t, 0, execute(context.Background(), []string{"apply"}, e), errOut.String())
	assert.Contains(t, errOut.String(), "to attestation.platformCA")
	cfg, err := config.Load(file.NewHandler(fs), config.FileName)
	require.NoError(t, err)
	assert.Equal(t, testPlatformCA, cfg.Attestation.PlatformCA)
	var sent config.AttestationConfig
	require.NoError(t, yaml.Unmarshal(in.sent.GetAttestationConfig(), &sent))
	assert.Equal(t, testPlatformCA, sent.PlatformCA, "the JoinService gets the same trust root")
	assert.Equal(t, cfg.Attestation.Measurements.Indices(), sent.Measurements.Indices())

	// Another platform (say, re-created after terminate): refused, config untouched, nothing sent.
	other, err := manufacturer.NewCA("other platform CA")
	require.NoError(t, err)
	fs2 := afero.NewMemMapFs()
	writeCreatedConfig(t, fs2, vtpmtest.ReferenceValues(vtpmtest.Boot))
	before, err := afero.ReadFile(fs2, config.FileName)
	require.NoError(t, err)
	in2 := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}
	e2, _, errOut2 := testEnv(t, fs2, &fakeInfra{platformCA: string(other.CertificatePEM())}, in2, nil)
	e2.deps.artifacts = artifactsFn
	require.Equal(t, 1, execute(context.Background(), []string{"apply"}, e2))
	assert.Contains(t, errOut2.String(), "names another CA than the one the provider's platform certifies")
	after, err := afero.ReadFile(fs2, config.FileName)
	require.NoError(t, err)
	assert.Equal(t, before, after)
	assert.Nil(t, in2.sent)

	// A node whose vTPM another CA certified is refused before anything is sent.
	fs3 := afero.NewMemMapFs()
	writeLocalConfig(t, fs3, vtpmtest.ReferenceValues(vtpmtest.Boot))
	in3 := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}
	e3, _, errOut3 := testEnv(t, fs3, &fakeInfra{platformCA: string(other.CertificatePEM())}, in3, nil)
	e3.deps.artifacts = artifactsFn
	require.Equal(t, 1, execute(context.Background(), []string{"apply"}, e3))
	assert.Contains(t, errOut3.String(), "attestation key is not trusted")
	assert.Nil(t, in3.sent)
}

// TestApplyUserManagedKeys: the init request names the KMS key and carries the cluster's credentials from
// the file the configuration names (never the configuration itself); without that file nothing is sent.
func TestApplyUserManagedKeys(t *testing.T) {
	tests := map[string]struct {
		credentialsFile, credentials string
		wantCode                     int
		wantStderr                   string
		wantCredentials              bool
	}{
		"credentials from the file":  {credentialsFile: "kms-creds.json", credentials: `{"Version":1,"AccessKeyId":"AKID","SecretAccessKey":"top-secret"}`, wantCredentials: true},
		"the nodes' own environment": {},
		"a missing file":             {credentialsFile: "kms-creds.json", wantCode: 1, wantStderr: "aws configure export-credentials"},
		"a file of another format":   {credentialsFile: "kms-creds.json", credentials: "[default]\n", wantCode: 1, wantStderr: "not the JSON of"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			cfg, err := config.Default(cloudprovider.Local)
			require.NoError(t, err)
			cfg.KMS.AWSKMS = &config.AWSKMSConfig{Region: "eu-west-1", KeyID: "alias/c", CredentialsFile: tc.credentialsFile}
			data, err := cfg.Marshal()
			require.NoError(t, err)
			data, err = config.SetMeasurements(data, vtpmtest.ReferenceValues(vtpmtest.Boot))
			require.NoError(t, err)
			require.NoError(t, afero.WriteFile(fs, config.FileName, data, 0o644))
			if tc.credentials != "" {
				require.NoError(t, afero.WriteFile(fs, tc.credentialsFile, []byte(tc.credentials), 0o600))
			}
			in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}
			e, out, errOut := testEnv(t, fs, &fakeInfra{}, in, nil)
			e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: servicesFixture(t)}, nil }
			require.Equal(t, tc.wantCode, execute(context.Background(), []string{"apply"}, e), "stdout: %s\nstderr: %s", out, errOut)
			assert.Contains(t, errOut.String(), tc.wantStderr)
			assert.NotContains(t, out.String()+errOut.String(), "top-secret", "the secret is never printed")
			if tc.wantCode != 0 {
				assert.Zero(t, in.calls, "nothing was sent to the node")
				return
			}
			require.NotNil(t, in.sent)
			assert.Equal(t, "kms://aws-kms?key-id=alias%2Fc&region=eu-west-1", in.sent.GetKmsUri())
			if tc.wantCredentials {
				assert.Equal(t, "AKID", in.sent.GetKmsCredentials().GetAccessKeyId())
				assert.Equal(t, "top-secret", in.sent.GetKmsCredentials().GetSecretAccessKey())
			} else {
				assert.Nil(t, in.sent.GetKmsCredentials())
			}
			cfgText, err := afero.ReadFile(fs, config.FileName)
			require.NoError(t, err)
			assert.NotContains(t, string(cfgText), "top-secret")
		})
	}
}
