package tfprovider

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/clusterupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/kubeupgradetest"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

const testPCR = "1111111111111111111111111111111111111111111111111111111111111111"

// fakeValidator accepts documents "good:<node>" (bound to that node) and refuses every other one with a
// PCR mismatch.
type fakeValidator struct{}

func (fakeValidator) Variant() variant.Variant { return variant.QEMUVTPM }

func (fakeValidator) Validate(_ context.Context, doc, _ []byte) ([]byte, error) {
	if node, ok := strings.CutPrefix(string(doc), "good:"); ok {
		return verifyproto.Binding(node, nil), nil
	}
	return nil, &attestation.ValidationError{Variant: "qemu-vtpm", Mismatches: []attestation.PCRMismatch{{PCR: 4}}}
}

// fakeIniter answers as the node would: with the identity that follows from the master secret sent, or err.
type fakeIniter struct {
	requests []clusterclient.InitRequest
	secrets  []crypto.MasterSecret
	err      error
	lie      bool
}

func (f *fakeIniter) Init(_ context.Context, endpoint string, v attestation.Validator, req *initproto.InitRequest,
	progress func(step, message string),
) (*initproto.InitSuccessResponse, error) {
	f.requests = append(f.requests, clusterclient.InitRequest{Endpoint: endpoint, Request: req, Fresh: v})
	ms := crypto.MasterSecret{Key: req.GetMasterSecret(), Salt: req.GetSalt()}
	f.secrets = append(f.secrets, ms)
	if f.err != nil {
		return nil, f.err
	}
	progress("kubeadm", "init done")
	id, err := ms.Identity()
	if err != nil {
		return nil, err
	}
	if f.lie {
		id.ClusterID = bytes.Repeat([]byte{1}, len(id.ClusterID))
	}
	return &initproto.InitSuccessResponse{Kubeconfig: []byte("apiVersion: v1\nkind: Config\n"), ClusterId: id.ClusterID, OwnerId: id.OwnerID}, nil
}

// fakeAttester answers for every node with the document docs names for it; a missing one does not answer.
type fakeAttester map[string]string

func (f fakeAttester) GetAttestation(_ context.Context, endpoint string, _ []byte) ([]byte, string, error) {
	for node, doc := range f {
		if strings.HasPrefix(endpoint, node+":") {
			return []byte(doc), strings.TrimPrefix(doc, "good:"), nil
		}
	}
	return nil, "", errors.New("connection refused")
}

func testClusterResource(t *testing.T, initer clusterclient.Initer, attester clusterclient.Attester, logs *bytes.Buffer) *clusterResource {
	t.Helper()
	return &clusterResource{
		initer: initer, attester: attester, booting: clusterclient.Booting{Wait: 10 * time.Millisecond, Poll: time.Millisecond},
		fs: afero.NewOsFs(), stateRoot: t.TempDir(),
		logger: func(string) (*slog.Logger, func()) { return slog.New(slog.NewTextHandler(logs, nil)), func() {} },
		validator: func(config.AttestationConfig, measurements.M) (attestation.Validator, error) {
			return fakeValidator{}, nil
		},
		infra: func([]clusterclient.Target) (clusterInfra, error) { return &rolloutNodes{t: t}, nil },
	}
}

func servicesDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range versions.Services {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name+".tar"), []byte(name), 0o644))
	}
	return dir
}

func testAttestation(t *testing.T, expected, platformCA string) types.Object {
	t.Helper()
	m, d := types.MapValue(measurementType, map[string]attr.Value{
		"4": types.ObjectValueMust(measurementType.AttrTypes, map[string]attr.Value{
			"expected": types.StringValue(expected), "warn_only": types.BoolValue(false),
		}),
	})
	require.False(t, d.HasError())
	ca := types.StringNull()
	if platformCA != "" {
		ca = types.StringValue(platformCA)
	}
	return types.ObjectValueMust(clusterAttestationType.AttrTypes, map[string]attr.Value{
		"variant": types.StringValue("qemu-vtpm"), "measurements": m, "platform_ca_certificate": ca,
	})
}

func testNodes(t *testing.T, names ...string) types.List {
	t.Helper()
	var nodes []attr.Value
	for i, n := range names {
		r := "worker"
		if i == 0 {
			r = "control-plane"
		}
		nodes = append(nodes, types.ObjectValueMust(clusterNodeType.AttrTypes, map[string]attr.Value{
			"name": types.StringValue(n), "ip": types.StringValue(n), "role": types.StringValue(r),
		}))
	}
	return types.ListValueMust(clusterNodeType, nodes)
}

func testClusterPlan(t *testing.T) clusterModel {
	return clusterModel{
		ID: types.StringUnknown(), Name: types.StringValue("tf"), Endpoint: types.StringValue("10.9.0.2"),
		APIServerCertSANs: types.ListNull(types.StringType), InitSecret: types.StringValue("0123456789abcdef0123"),
		KubernetesVersion: types.StringValue(versions.DefaultKubernetes), ComponentURL: types.StringValue("http://10.9.0.1:9000"),
		ServicesDir: types.StringValue(servicesDir(t)), Attestation: testAttestation(t, testPCR, "-----BEGIN CERTIFICATE-----"),
		Nodes: testNodes(t, "cp-0", "worker-0"), MasterSecret: types.StringUnknown(), MasterSecretSalt: types.StringUnknown(),
		Kubeconfig: types.StringUnknown(), ClusterID: types.StringUnknown(), OwnerID: types.StringUnknown(),
	}
}

func clusterSchema(t *testing.T, r *clusterResource) (tfsdk.Plan, tfsdk.State) {
	t.Helper()
	var resp resource.SchemaResponse
	r.Schema(context.Background(), resource.SchemaRequest{}, &resp)
	require.False(t, resp.Diagnostics.HasError())
	typ := resp.Schema.Type().TerraformType(context.Background())
	return tfsdk.Plan{Schema: resp.Schema, Raw: tftypes.NewValue(typ, nil)}, tfsdk.State{Schema: resp.Schema, Raw: tftypes.NewValue(typ, nil)}
}

func create(t *testing.T, r *clusterResource, m clusterModel) (clusterModel, diag.Diagnostics) {
	t.Helper()
	ctx := context.Background()
	plan, st := clusterSchema(t, r)
	require.False(t, plan.Set(ctx, &m).HasError())
	resp := &resource.CreateResponse{State: st}
	r.Create(ctx, resource.CreateRequest{Plan: plan}, resp)
	var got clusterModel
	if !resp.State.Raw.IsNull() {
		require.False(t, resp.State.Get(ctx, &got).HasError())
	}
	return got, resp.Diagnostics
}

func errorOn(d diag.Diagnostics, attribute string) bool {
	for _, e := range d.Errors() {
		if withPath, ok := e.(diag.DiagnosticWithPath); ok && withPath.Path().Equal(path.Root(attribute)) {
			return true
		}
	}
	return false
}

func TestClusterCreate(t *testing.T) {
	var logs bytes.Buffer
	initer := &fakeIniter{}
	r := testClusterResource(t, initer, fakeAttester{}, &logs)

	// The first attempt fails after the secret was generated: the second sends the same one, as a resume.
	initer.err = errors.New("connection reset")
	_, d := create(t, r, testClusterPlan(t))
	require.True(t, d.HasError())
	assert.Contains(t, d.Errors()[0].Detail(), "Run terraform apply again")
	pending := filepath.Join(r.stateRoot, "tf", pendingSecretFile)
	info, err := os.Stat(pending)
	require.NoError(t, err, "the generated secret is kept for the next attempt")
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	initer.err = nil
	got, d := create(t, r, testClusterPlan(t))
	require.False(t, d.HasError(), "%v", d)
	require.Len(t, initer.secrets, 2)
	assert.Equal(t, initer.secrets[0], initer.secrets[1], "the second apply sends the first one's secret")
	assert.Equal(t, hex.EncodeToString(initer.secrets[1].Key), got.MasterSecret.ValueString())
	assert.Equal(t, hex.EncodeToString(initer.secrets[1].Salt), got.MasterSecretSalt.ValueString())
	id, err := initer.secrets[1].Identity()
	require.NoError(t, err)
	assert.Equal(t, hex.EncodeToString(id.ClusterID), got.ClusterID.ValueString())
	assert.Equal(t, got.ClusterID, got.ID)
	assert.Equal(t, hex.EncodeToString(id.OwnerID), got.OwnerID.ValueString())
	assert.Equal(t, "apiVersion: v1\nkind: Config\n", got.Kubeconfig.ValueString())

	req := initer.requests[1]
	assert.Equal(t, "10.9.0.2:9000", req.Endpoint)
	assert.Equal(t, []byte("0123456789abcdef0123"), req.Request.GetInitSecret())
	assert.Equal(t, "tf", req.Request.GetClusterName())
	assert.Contains(t, req.Request.GetApiserverCertSans(), "10.9.0.2")
	var names []string
	for _, c := range req.Request.GetKubernetesComponents() {
		names = append(names, c.GetUrl())
	}
	assert.Contains(t, strings.Join(names, " "), "http://10.9.0.1:9000/", "components come from the component server")
	assert.Contains(t, logs.String(), "init done", "the node's progress is logged")
	for _, secret := range []string{got.MasterSecret.ValueString(), got.MasterSecretSalt.ValueString(), "0123456789abcdef0123"} {
		assert.NotContains(t, logs.String(), secret, "secrets are never logged")
	}
}

func TestClusterCreateGivenSecret(t *testing.T) {
	initer := &fakeIniter{}
	r := testClusterResource(t, initer, fakeAttester{}, &bytes.Buffer{})
	m := testClusterPlan(t)
	key, salt := strings.Repeat("ab", crypto.MasterSecretLength), strings.Repeat("cd", crypto.SaltLength)
	m.MasterSecret, m.MasterSecretSalt = types.StringValue(key), types.StringValue(salt)
	initer.err = errors.New("connection reset")
	_, d := create(t, r, m)
	require.True(t, d.HasError())
	require.Len(t, initer.secrets, 2, "a secret the admin gave existed before: a node of this cluster is accepted too")
	assert.Equal(t, key, hex.EncodeToString(initer.secrets[0].Key))
	_, err := os.Stat(filepath.Join(r.stateRoot, "tf", pendingSecretFile))
	assert.ErrorIs(t, err, os.ErrNotExist, "a given secret is not written anywhere")
}

func TestClusterCreateInvalid(t *testing.T) {
	testCases := map[string]struct {
		edit      func(*clusterModel)
		attribute string
		initer    *fakeIniter
	}{
		"no platform CA": {
			edit: func(m *clusterModel) { m.Attestation = testAttestation(t, testPCR, "") }, attribute: "attestation",
		},
		"bad measurement": {
			edit: func(m *clusterModel) { m.Attestation = testAttestation(t, "11", "ca") }, attribute: "attestation",
		},
		"short master secret": {
			edit: func(m *clusterModel) {
				m.MasterSecret, m.MasterSecretSalt = types.StringValue("abcd"), types.StringValue(strings.Repeat("cd", crypto.SaltLength))
			},
			attribute: "master_secret",
		},
		"salt without secret": {
			edit:      func(m *clusterModel) { m.MasterSecretSalt = types.StringValue(strings.Repeat("cd", crypto.SaltLength)) },
			attribute: "master_secret",
		},
		"unknown Kubernetes version": {
			edit: func(m *clusterModel) { m.KubernetesVersion = types.StringValue("v1.20.0") }, attribute: "kubernetes_version",
		},
		"a node that lies about its identity": {initer: &fakeIniter{lie: true}},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			initer := tc.initer
			if initer == nil {
				initer = &fakeIniter{}
			}
			r := testClusterResource(t, initer, fakeAttester{}, &bytes.Buffer{})
			m := testClusterPlan(t)
			if tc.edit != nil {
				tc.edit(&m)
			}
			got, d := create(t, r, m)
			require.True(t, d.HasError())
			assert.True(t, got.ID.IsNull(), "no state for a cluster that was not initialized")
			if tc.attribute != "" {
				assert.True(t, errorOn(d, tc.attribute), "the error names %s: %v", tc.attribute, d)
				assert.Empty(t, initer.requests, "nothing is sent for an invalid configuration")
			}
		})
	}
}

func TestClusterRead(t *testing.T) {
	testCases := map[string]struct {
		attester     fakeAttester
		wantErrors   []string
		wantWarnings []string
	}{
		"every node verifies": {attester: fakeAttester{"cp-0": "good:cp-0", "worker-0": "good:worker-0"}},
		"a tampered node": {
			attester:   fakeAttester{"cp-0": "good:cp-0", "worker-0": "evil"},
			wantErrors: []string{"Node worker-0 no longer verifies"},
		},
		"another node's answer": {
			attester:   fakeAttester{"cp-0": "good:cp-0", "worker-0": "good:cp-0"},
			wantErrors: []string{"Node worker-0 no longer verifies"},
		},
		"a stopped node": {
			attester:     fakeAttester{"cp-0": "good:cp-0"},
			wantWarnings: []string{"Node worker-0 did not answer"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r := testClusterResource(t, &fakeIniter{}, tc.attester, &bytes.Buffer{})
			created, d := create(t, r, testClusterPlan(t))
			require.False(t, d.HasError(), "%v", d)
			_, st := clusterSchema(t, r)
			require.False(t, st.Set(ctx, &created).HasError())
			resp := &resource.ReadResponse{State: st}
			r.Read(ctx, resource.ReadRequest{State: st}, resp)
			var errs, warnings []string
			for _, e := range resp.Diagnostics.Errors() {
				errs = append(errs, e.Summary())
				assert.Contains(t, e.Detail(), "-refresh=false", "the error says how to destroy anyway")
			}
			for _, w := range resp.Diagnostics.Warnings() {
				warnings = append(warnings, w.Summary())
			}
			assert.Equal(t, tc.wantErrors, errs)
			assert.Equal(t, tc.wantWarnings, warnings)
		})
	}
}

// upgradeCluster is a cluster whose API server and kubelets run from, and whose upgrade controller reports
// result once it sees a target.
func upgradeCluster(t *testing.T, r *clusterResource, from string, built bool, result kubeupgrade.Progress) client.Client {
	t.Helper()
	k8s := k8sfake.NewClientset(kubeupgradetest.Node("cp-0", from, true), kubeupgradetest.Node("worker-0", from, false))
	k8s.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: from}
	scheme := runtime.NewScheme()
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	cr := crfake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&v1alpha1.KubernetesUpgrade{}).Build()
	r.kube = func([]byte) (kubernetes.Interface, error) { return k8s, nil }
	r.upgrades = func([]byte) (client.Client, error) { return cr, nil }
	r.built = func(string) bool { return built }
	r.follow = clusterupgrade.Options{Poll: time.Millisecond, StepWait: 5 * time.Second, JoinWait: 50 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var u v1alpha1.KubernetesUpgrade
			if err := cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u); err == nil {
				u.Status.ObservedGeneration = u.Generation
				u.Status.SetProgress(result)
				if cr.Status().Update(ctx, &u) == nil {
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return cr
}

func TestClusterUpdate(t *testing.T) {
	ctx := context.Background()
	attester := fakeAttester{"cp-0": "good:cp-0", "worker-0": "good:worker-0", "worker-1": "good:worker-1"}
	done := kubeupgrade.Progress{Phase: kubeupgrade.PhaseDone, Finished: []string{"cp-0", "worker-0"}}

	testCases := map[string]struct {
		edit        func(*clusterModel)
		from        string
		notBuilt    bool
		result      kubeupgrade.Progress
		attribute   string
		errContains string
		submitted   bool
	}{
		"an upgrade to the next minor version": {
			edit: func(m *clusterModel) { m.KubernetesVersion = types.StringValue("v1.34.10") }, from: "v1.33.13", result: done,
			submitted: true,
		},
		"a failed step": {
			edit: func(m *clusterModel) { m.KubernetesVersion = types.StringValue("v1.34.10") }, from: "v1.33.13",
			result:      kubeupgrade.Progress{Phase: kubeupgrade.PhaseFailed, Node: "worker-0", Step: agentapi.StepNode, Waiting: "exit status 1"},
			errContains: "worker-0 failed 'kubeadm upgrade node' to v1.34.10: exit status 1", submitted: true,
		},
		"a downgrade": {
			edit: func(m *clusterModel) { m.KubernetesVersion = types.StringValue("v1.33.13") }, from: "v1.34.10",
			attribute: "kubernetes_version", errContains: "back to v1.34.10",
		},
		"components not built": {
			edit: func(m *clusterModel) { m.KubernetesVersion = types.StringValue("v1.34.10") }, from: "v1.33.13", notBuilt: true,
			attribute: "kubernetes_version", errContains: "bazel/kubernetes/build.sh --version v1.34.10 all",
		},
		"new measurements without their image": {
			edit: func(m *clusterModel) {
				m.Attestation = testAttestation(t, strings.Repeat("22", 32), "-----BEGIN CERTIFICATE-----")
			}, attribute: "image_dir",
		},
		"a node more": {edit: func(m *clusterModel) { m.Nodes = testNodes(t, "cp-0", "worker-0", "worker-1") }},
		"an upgrade while a node is not a Ready member": {
			edit: func(m *clusterModel) {
				m.KubernetesVersion = types.StringValue("v1.34.10")
				m.Nodes = testNodes(t, "cp-0", "worker-0", "worker-1")
			},
			from: "v1.33.13", errContains: "worker-1 did not become a Ready node of the cluster",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			r := testClusterResource(t, &fakeIniter{}, attester, &bytes.Buffer{})
			created, d := create(t, r, testClusterPlan(t))
			require.False(t, d.HasError(), "%v", d)
			if tc.from != "" {
				created.KubernetesVersion = types.StringValue(tc.from)
			}
			cr := upgradeCluster(t, r, tc.from, !tc.notBuilt, tc.result)
			plan, st := clusterSchema(t, r)
			require.False(t, st.Set(ctx, &created).HasError())
			next := created
			tc.edit(&next)
			require.False(t, plan.Set(ctx, &next).HasError())
			resp := &resource.UpdateResponse{State: st}
			r.Update(ctx, resource.UpdateRequest{Plan: plan, State: st}, resp)

			var u v1alpha1.KubernetesUpgrade
			err := cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u)
			assert.Equal(t, tc.submitted, err == nil, "whether the target went to the upgrade controller")
			if tc.attribute != "" || tc.errContains != "" {
				require.True(t, resp.Diagnostics.HasError())
				if tc.attribute != "" {
					assert.True(t, errorOn(resp.Diagnostics, tc.attribute), "%v", resp.Diagnostics)
				}
				assert.Contains(t, diagText(resp.Diagnostics), tc.errContains)
				return
			}
			require.False(t, resp.Diagnostics.HasError(), "%v", resp.Diagnostics)
			var got clusterModel
			require.False(t, resp.State.Get(ctx, &got).HasError())
			assert.Equal(t, next.Nodes, got.Nodes)
			assert.Equal(t, next.KubernetesVersion, got.KubernetesVersion)
			assert.Equal(t, created.MasterSecret, got.MasterSecret)
			if tc.submitted {
				spec, err := u.Spec.Decode()
				require.NoError(t, err)
				assert.Equal(t, "v1.34.10", spec.Version)
				assert.NotEmpty(t, spec.JoinComponents)
				assert.Less(t, len(spec.Components), len(spec.JoinComponents), "the nodes get the version's components only")
			}
		})
	}
}

func TestImmutableString(t *testing.T) {
	ctx := context.Background()
	r := testClusterResource(t, &fakeIniter{}, fakeAttester{}, &bytes.Buffer{})
	plan, st := clusterSchema(t, r)
	m := testClusterPlan(t)
	require.False(t, plan.Set(ctx, &m).HasError())
	require.False(t, st.Set(ctx, &m).HasError())
	testCases := map[string]struct {
		state, plan types.String
		wantErr     bool
	}{
		"changed":        {state: types.StringValue("10.9.0.2"), plan: types.StringValue("10.9.0.3"), wantErr: true},
		"unchanged":      {state: types.StringValue("10.9.0.2"), plan: types.StringValue("10.9.0.2")},
		"set at import":  {state: types.StringNull(), plan: types.StringValue("10.9.0.2")},
		"known at apply": {state: types.StringValue("10.9.0.2"), plan: types.StringUnknown()},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			resp := &planmodifier.StringResponse{PlanValue: tc.plan}
			immutableString{}.PlanModifyString(ctx, planmodifier.StringRequest{
				Path: path.Root("endpoint"), State: st, Plan: plan, StateValue: tc.state, PlanValue: tc.plan,
			}, resp)
			assert.Equal(t, tc.wantErr, resp.Diagnostics.HasError())
			if tc.wantErr {
				assert.True(t, errorOn(resp.Diagnostics, "endpoint"))
			}
		})
	}
}

func TestClusterImport(t *testing.T) {
	ctx := context.Background()
	fs := afero.NewMemMapFs()
	fh := file.NewHandler(afero.NewBasePathFs(fs, "/ws"))
	ms := crypto.MasterSecret{Key: bytes.Repeat([]byte{7}, crypto.MasterSecretLength), Salt: bytes.Repeat([]byte{8}, crypto.SaltLength)}
	id, err := ms.Identity()
	require.NoError(t, err)
	cfg, err := config.Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	refs := measurements.M{4: {Expected: bytes.Repeat([]byte{1}, 32)}}
	data, err = config.SetMeasurements(data, refs)
	require.NoError(t, err)
	ca, err := manufacturer.LoadOrCreateCA(t.TempDir(), "test platform CA")
	require.NoError(t, err)
	data, err = config.SetPlatformCA(data, string(ca.CertificatePEM()))
	require.NoError(t, err)

	r := testClusterResource(t, &fakeIniter{}, fakeAttester{}, &bytes.Buffer{})
	r.fs = fs
	_, err = r.importWorkspace(ctx, "/ws")
	assert.ErrorIs(t, err, os.ErrNotExist, "no workspace")

	require.NoError(t, fh.Write(config.FileName, data))
	st := state.New()
	st.Infrastructure = state.Infrastructure{
		Name: "cli", Provider: "local", ClusterEndpoint: "10.42.0.2", UID: "u", InitSecretHash: make([]byte, 32),
		Nodes: map[string]state.Node{"worker-0": {IP: "10.42.0.3", Role: "worker"}, "cp-0": {IP: "10.42.0.2", Role: "control-plane"}},
	}
	require.NoError(t, st.Write(fh, state.FileName))
	_, err = r.importWorkspace(ctx, "/ws")
	assert.ErrorContains(t, err, "not initialized")

	st.ClusterValues = state.ClusterValues{ClusterID: id.ClusterID, OwnerID: id.OwnerID, MeasurementSalt: ms.Salt}
	require.NoError(t, st.Write(fh, state.FileName))
	require.NoError(t, crypto.WriteMasterSecret(fh, crypto.MasterSecretFileName, ms))
	require.NoError(t, fh.Write(state.AdminConfFileName, []byte("kubeconfig"), file.OptSecret))

	m, err := r.importWorkspace(ctx, "/ws")
	require.NoError(t, err)
	assert.Equal(t, "cli", m.Name.ValueString())
	assert.Equal(t, "10.42.0.2", m.Endpoint.ValueString())
	assert.Equal(t, hex.EncodeToString(id.ClusterID), m.ClusterID.ValueString())
	assert.Equal(t, m.ClusterID, m.ID)
	assert.Equal(t, hex.EncodeToString(ms.Key), m.MasterSecret.ValueString())
	assert.Equal(t, "kubeconfig", m.Kubeconfig.ValueString())
	assert.Equal(t, testNodes(t, "cp-0", "worker-0").Elements()[0].(types.Object).Attributes()["name"],
		m.Nodes.Elements()[0].(types.Object).Attributes()["name"], "nodes in name order")
	att, err := m.attestationConfig(ctx)
	require.NoError(t, err, "the imported attestation is valid")
	assert.Equal(t, refs, att.Measurements)

	// Through the framework: the state it sets is the model.
	_, tfState := clusterSchema(t, r)
	resp := &resource.ImportStateResponse{State: tfState}
	r.ImportState(ctx, resource.ImportStateRequest{ID: "/ws"}, resp)
	require.False(t, resp.Diagnostics.HasError(), "%v", resp.Diagnostics)
	var got clusterModel
	require.False(t, resp.State.Get(ctx, &got).HasError())
	assert.Equal(t, m.ClusterID, got.ClusterID)
}

// TestClusterModifyPlan: a Kubernetes version the cluster cannot move to is an error in the plan, naming
// the attribute; one it can move to plans normally.
func TestClusterModifyPlan(t *testing.T) {
	ctx := context.Background()
	testCases := map[string]struct {
		from, to  string
		notBuilt  bool
		wantError string
	}{
		"the next minor version": {from: "v1.33.13", to: "v1.34.10"},
		"unchanged":              {from: "v1.33.13", to: "v1.33.13"},
		"a downgrade":            {from: "v1.34.10", to: "v1.33.13", wantError: "back to v1.34.10"},
		"not built here":         {from: "v1.33.13", to: "v1.34.10", notBuilt: true, wantError: "build.sh --version v1.34.10"},
		"unknown version":        {from: "v1.33.13", to: "v1.20.0", wantError: "v1.20.0"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			r := testClusterResource(t, &fakeIniter{}, fakeAttester{}, &bytes.Buffer{})
			created, d := create(t, r, testClusterPlan(t))
			require.False(t, d.HasError(), "%v", d)
			created.KubernetesVersion = types.StringValue(tc.from)
			upgradeCluster(t, r, tc.from, !tc.notBuilt, kubeupgrade.Progress{})
			plan, st := clusterSchema(t, r)
			require.False(t, st.Set(ctx, &created).HasError())
			next := created
			next.KubernetesVersion = types.StringValue(tc.to)
			require.False(t, plan.Set(ctx, &next).HasError())
			resp := &resource.ModifyPlanResponse{Plan: plan}
			r.ModifyPlan(ctx, resource.ModifyPlanRequest{Plan: plan, State: st}, resp)
			if tc.wantError == "" {
				assert.False(t, resp.Diagnostics.HasError(), "%v", resp.Diagnostics)
				return
			}
			assert.True(t, errorOn(resp.Diagnostics, "kubernetes_version"), "%v", resp.Diagnostics)
			assert.Contains(t, diagText(resp.Diagnostics), tc.wantError)
		})
	}
}
