package cmd

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/constellation-go/constellation/cli/internal/cloudcmd"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/signed"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
	"github.com/constellation-go/constellation/verify/verifyproto"
	"github.com/constellation-go/constellation/verify/verifytest"
)

// fakeAttester answers for nodes by address from real vTPMs, through the real VerificationService.
type fakeAttester struct {
	t     *testing.T
	nodes map[string]*vtpmtest.Node
	// names are the nodes' names by address; default: by the test's cluster layout.
	names map[string]string
}

func (f *fakeAttester) GetAttestation(ctx context.Context, endpoint string, nonce []byte) ([]byte, string, error) {
	n, ok := f.nodes[endpoint]
	if !ok {
		return nil, "", errors.New("connection refused")
	}
	name := f.names[endpoint]
	if name == "" {
		name = map[string]string{"10.42.0.2:30081": "cp-0", "10.42.0.3:30081": "worker-0"}[endpoint]
	}
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, n.TPM, vtpm.WithEventLog(func() ([]byte, error) { return n.EventLog, nil }))
	defer issuer.Close()
	srv := verifytest.New(issuer, name)
	resp, err := srv.GetAttestation(ctx, &verifyproto.GetAttestationRequest{Nonce: nonce})
	if err != nil {
		return nil, "", err
	}
	return resp.GetAttestation(), resp.GetNodeName(), nil
}

// lockedNode is a node booted with events that took the node lock for clusterID (PCR 15).
func lockedNode(t *testing.T, events []vtpmtest.Event, clusterID []byte) *vtpmtest.Node {
	n := vtpmtest.NewNode(t, events)
	require.NoError(t, tpm.Extend(n.TPM, measurements.PCRClusterID, measurements.ClusterIDEvent(clusterID)))
	return n
}

func TestVerify(t *testing.T) {
	clusterID := bytes.Repeat([]byte{3}, 32)
	otherID := bytes.Repeat([]byte{4}, 32)
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: vtpmtest.Boot[3].Type, Data: "console=ttyS0 init=/bin/sh"})
	testCases := map[string]struct {
		cp, worker  *vtpmtest.Node
		names       map[string]string
		args        []string
		wantCode    int
		wantStdout  []string
		wantMissing []string
	}{
		"an answer relayed from another node": {
			// worker-0's address answers with cp-0's VerificationService (both genuine, same cluster).
			cp: lockedNode(t, vtpmtest.Boot, clusterID), worker: lockedNode(t, vtpmtest.Boot, clusterID),
			names: map[string]string{"10.42.0.3:30081": "cp-0"}, wantCode: 1,
			wantStdout: []string{"✓ cp-0", "✗ worker-0", "bound to another node", `it says "cp-0"`},
		},
		"every node verifies": {
			cp: lockedNode(t, vtpmtest.Boot, clusterID), worker: lockedNode(t, vtpmtest.Boot, clusterID),
			wantStdout: []string{"✓ cp-0", "✓ worker-0", "All 2 nodes verified"},
		},
		"a changed kernel command line is named": {
			cp: lockedNode(t, vtpmtest.Boot, clusterID), worker: lockedNode(t, tampered, clusterID), wantCode: 1,
			wantStdout: []string{"✓ cp-0", "✗ worker-0", "PCR 9 (enforced)", "init=/bin/sh"},
		},
		"a node of another cluster": {
			cp: lockedNode(t, vtpmtest.Boot, clusterID), worker: lockedNode(t, vtpmtest.Boot, otherID), wantCode: 1,
			wantStdout: []string{"✗ worker-0", "PCR 15", "does not belong to this cluster"},
		},
		"a node that never took the lock": {
			cp: lockedNode(t, vtpmtest.Boot, clusterID), worker: vtpmtest.NewNode(t, vtpmtest.Boot), wantCode: 1,
			wantStdout: []string{"✗ worker-0", "PCR 15"},
		},
		"an unreachable node fails": {
			cp: lockedNode(t, vtpmtest.Boot, clusterID), wantCode: 1,
			wantStdout: []string{"✗ worker-0", "connection refused"},
		},
		"one node by name": {
			cp: lockedNode(t, vtpmtest.Boot, clusterID), args: []string{"--node", "cp-0"},
			wantStdout: []string{"✓ cp-0", "All 1 nodes verified"}, wantMissing: []string{"worker-0"},
		},
		"unknown node": {
			cp: lockedNode(t, vtpmtest.Boot, clusterID), args: []string{"--node", "cp-9"}, wantCode: 1,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			writeCreatedConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
			writeInitializedState(t, fs, clusterID)
			att := &fakeAttester{t: t, nodes: map[string]*vtpmtest.Node{"10.42.0.2:30081": tc.cp}, names: tc.names}
			if tc.worker != nil {
				att.nodes["10.42.0.3:30081"] = tc.worker
			}
			e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, att)
			code := execute(context.Background(), append([]string{"verify"}, tc.args...), e)
			assert.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			for _, s := range tc.wantStdout {
				assert.Contains(t, out.String(), s)
			}
			for _, s := range tc.wantMissing {
				assert.NotContains(t, out.String(), s)
			}

			// The same result as JSON.
			out.Reset()
			code = execute(context.Background(), append([]string{"verify", "-o", "json"}, tc.args...), e)
			assert.Equal(t, tc.wantCode, code)
			if code == 0 || len(tc.wantStdout) > 0 {
				var res verifyResult
				require.NoError(t, json.Unmarshal(out.Bytes(), &res), out.String())
				assert.Equal(t, tc.wantCode == 0, res.Verified)
			}
		})
	}
}

func writeInitializedState(t *testing.T, fs afero.Fs, clusterID []byte) {
	t.Helper()
	st := state.New()
	st.Infrastructure = state.Infrastructure{
		UID: "uid1", Provider: "local", Name: "constell", ClusterEndpoint: "10.42.0.2",
		InitSecretHash: bytes.Repeat([]byte{1}, 32),
		Nodes: map[string]state.Node{
			"cp-0": {IP: "10.42.0.2", Role: "control-plane"}, "worker-0": {IP: "10.42.0.3", Role: "worker"},
		},
	}
	st.ClusterValues = state.ClusterValues{ClusterID: clusterID, OwnerID: bytes.Repeat([]byte{5}, 32), MeasurementSalt: bytes.Repeat([]byte{6}, 32)}
	require.NoError(t, st.Write(file.NewHandler(fs), state.FileName))
}

func TestTerminate(t *testing.T) {
	testCases := map[string]struct {
		args       []string
		terminal   bool
		answer     string
		destroyErr error
		wantCode   int
		wantGone   bool
		wantStderr string
	}{
		"--yes":                            {args: []string{"--yes"}, wantGone: true},
		"confirmed":                        {terminal: true, answer: "yes\n", wantGone: true},
		"not confirmed":                    {terminal: true, answer: "no\n", wantCode: 1, wantStderr: "nothing was changed"},
		"no terminal and no --yes":         {wantCode: 1, wantStderr: "pass --yes"},
		"a failed destroy keeps the state": {args: []string{"-y"}, destroyErr: errors.New("boom"), wantCode: 1, wantStderr: "Re-run"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			writeInitializedState(t, fs, bytes.Repeat([]byte{3}, 32))
			require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("x"), 0o600))
			require.NoError(t, afero.WriteFile(fs, "constellation-mastersecret.json", []byte("{}"), 0o600))
			infra := &fakeInfra{destroyErr: tc.destroyErr}
			e, out, errOut := testEnv(t, fs, infra, nil, nil)
			e.deps.isTerminal = func() bool { return tc.terminal }
			e.in = bytes.NewBufferString(tc.answer)
			code := execute(context.Background(), append([]string{"terminate"}, tc.args...), e)
			assert.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			assert.Contains(t, errOut.String(), tc.wantStderr)
			for _, f := range []string{state.FileName, AdminConfFile} {
				exists, err := afero.Exists(fs, f)
				require.NoError(t, err)
				assert.Equal(t, !tc.wantGone, exists, f)
			}
			kept, err := afero.Exists(fs, "constellation-mastersecret.json")
			require.NoError(t, err)
			assert.True(t, kept, "terminate never deletes the master secret")
			if tc.wantCode == 1 && tc.destroyErr == nil {
				assert.Zero(t, infra.destroyed, "nothing may be destroyed without confirmation")
			}
		})
	}
}

func TestStatus(t *testing.T) {
	fs := afero.NewMemMapFs()
	writeCreatedConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
	writeInitializedState(t, fs, bytes.Repeat([]byte{3}, 32))
	require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("kubeconfig"), 0o600))
	ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue}
	notReady := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady"}
	k8s := k8sfake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp-0"}, Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{ready, {Type: joinproto.AttestedCondition, Status: corev1.ConditionTrue, Reason: "Verified"}},
			NodeInfo:   corev1.NodeSystemInfo{KubeletVersion: "v1.33.13", OSImage: "Debian"},
		}},
		// Re-attestation refused worker-0 and cordoned it.
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-0"}, Spec: corev1.NodeSpec{Unschedulable: true}, Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{notReady, {
				Type: joinproto.AttestedCondition, Status: corev1.ConditionFalse, Reason: "MeasurementsDiffer", Message: "measurements differ: PCR 12 ...",
			}},
		}},
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: keyserviceproto.DaemonSetName, Namespace: "kube-system"},
			Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Args: []string{"--grpc-addr=x", keyserviceproto.KMSURIFlag + kmsuri.AWSKMSURI("eu-west-1", "alias/c", "")},
			}}}}}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: attestationConfigMap, Namespace: "kube-system"},
			Data: map[string]string{attestationConfigKey: "variant: qemu-vtpm\nmeasurements:\n  4:\n    expected: \"" +
				strings.Repeat("00", 32) + "\"\n  12:\n    expected: \"" + strings.Repeat("11", 32) + "\"\n    warnOnly: true\n"}},
	)
	e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, nil)
	var gotKubeconfig []byte
	e.deps.kube = func(kubeconfig []byte) (kubernetes.Interface, error) {
		gotKubeconfig = kubeconfig
		return k8s, nil
	}
	// The upgrade controller is moving the cluster.
	scheme := runtime.NewScheme()
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	upgrade := &v1alpha1.KubernetesUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name}, Spec: v1alpha1.KubernetesUpgradeSpec{Version: "v1.34.10"},
		Status: v1alpha1.KubernetesUpgradeStatus{Phase: "Upgrading", Node: "worker-0", Waiting: "worker-0: kubeadm upgrade node"},
	}
	cr := crfake.NewClientBuilder().WithScheme(scheme).WithObjects(upgrade).Build()
	e.deps.upgrades = func([]byte) (client.Client, error) { return cr, nil }
	require.Zero(t, execute(context.Background(), []string{"status"}, e), errOut.String())
	assert.Equal(t, "kubeconfig", string(gotKubeconfig))
	assert.Contains(t, out.String(), "Upgrade controller: Kubernetes v1.34.10, Upgrading at worker-0: worker-0: kubeadm upgrade node")
	assert.Regexp(t, `cp-0\s+control-plane\s+10.42.0.2\s+yes\s+yes\s+v1.33.13\s+Debian`, out.String())
	assert.Regexp(t, `worker-0\s+worker\s+10.42.0.3\s+no \(KubeletNotReady\)\s+no \(cordoned\)`, out.String())
	assert.Contains(t, out.String(), "worker-0 failed re-attestation: MeasurementsDiffer: measurements differ: PCR 12")
	assert.Contains(t, out.String(), "enforced PCRs [4], warn-only [12]")
	assert.Contains(t, out.String(), "State disk keys: user-managed: aws-kms (key-id=alias/c, region=eu-west-1)", "as the cluster runs it")
	assert.NotContains(t, out.String(), "a roll-out runs")
	assert.Contains(t, out.String(), "Kubernetes target v1.33.13 (constellation-conf.yaml): 1 of 2 nodes at target",
		"worker-0 reports no kubelet version")

	out.Reset()
	require.Zero(t, execute(context.Background(), []string{"status", "-o", "json"}, e))
	var res statusResult
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	require.Len(t, res.Nodes, 2)
	assert.True(t, res.Nodes[0].Ready)
	assert.False(t, res.Nodes[1].Ready)
	assert.Equal(t, []uint32{4}, res.Attestation.PCRs)
	assert.False(t, res.Attestation.Rollout)
	require.NotNil(t, res.Target)
	assert.Equal(t, statusTarget{Kubernetes: "v1.33.13", AtTarget: 1, Nodes: 2}, *res.Target)

	// During a roll-out the JoinService's config says so.
	cm, err := k8s.CoreV1().ConfigMaps("kube-system").Get(context.Background(), attestationConfigMap, metav1.GetOptions{})
	require.NoError(t, err)
	cm.Data[attestationConfigKey] += "rollout:\n  previousMeasurements:\n    4:\n      expected: \"" + strings.Repeat("01", 32) + "\"\n"
	_, err = k8s.CoreV1().ConfigMaps("kube-system").Update(context.Background(), cm, metav1.UpdateOptions{})
	require.NoError(t, err)
	// One node moved to the configured image already, the other still runs the previous one.
	artifactsDir := imageFixture(t)
	target := filepath.Join(artifactsDir, "image")
	e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: artifactsDir}, nil }
	e.deps.infra = func(string, func(string)) (infrastructure, error) {
		return &fakeInfra{images: map[string]string{"cp-0": target, "worker-0": "/images/a"}}, nil
	}
	out.Reset()
	require.Zero(t, execute(context.Background(), []string{"status"}, e))
	assert.Contains(t, out.String(), "a roll-out runs: the previous image's measurements are trusted too")
	assert.Contains(t, out.String(), "Node image target "+target+" (constellation-conf.yaml): 1 of 2 nodes run it")
	assert.Contains(t, out.String(), "worker-0 runs /images/a")
	out.Reset()
	require.Zero(t, execute(context.Background(), []string{"status", "-o", "json"}, e))
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	assert.Equal(t, statusImageTarget{Image: target, AtTarget: 1, Nodes: 2}, *res.ImageTarget)
	assert.Equal(t, "/images/a", res.Nodes[1].Image)

	// Without a cluster: what to do.
	empty, out2, errOut2 := testEnv(t, afero.NewMemMapFs(), &fakeInfra{}, nil, nil)
	assert.Equal(t, 1, execute(context.Background(), []string{"status"}, empty), out2.String())
	assert.Contains(t, errOut2.String(), "constellation apply")
}

// TestVerifyWithoutWorkspace: an auditor with no workspace verifies nodes by address against the
// publisher's signed measurements, the cluster ID and the platform CA.
func TestVerifyWithoutWorkspace(t *testing.T) {
	clusterID := bytes.Repeat([]byte{3}, 32)
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: vtpmtest.Boot[3].Type, Data: "console=ttyS0 init=/bin/sh"})
	data, sig := signFile(t, &signed.File{
		Version: signed.Version2, Image: "constellation-node-v1.0.0", Variant: "qemu-vtpm", Issued: fileIssued,
		Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot),
	})
	_, pub := testKeys(t)
	otherKeyFile := func(fs afero.Fs) {
		_, otherPub, err := cosign.GenerateKeyPair([]byte("another password"))
		require.NoError(t, err)
		require.NoError(t, afero.WriteFile(fs, "cosign.pub", otherPub, 0o644))
	}
	id := hex.EncodeToString(clusterID)
	base := []string{"verify", "--endpoint", "10.42.0.2", "--endpoint", "10.42.0.3", "--cluster-id", id,
		"--measurements", "measurements.json", "--platform-ca", "ca.pem"}
	testCases := map[string]struct {
		worker     *vtpmtest.Node
		args       []string
		edit       func(fs afero.Fs)
		wantCode   int
		wantStdout []string
		wantStderr string
	}{
		"every node verifies": {
			worker: lockedNode(t, vtpmtest.Boot, clusterID), args: base,
			wantStdout: []string{"✓ cp-0 (10.42.0.2)", "✓ worker-0 (10.42.0.3)", "All 2 nodes verified"},
		},
		"a changed kernel command line is named": {
			worker: lockedNode(t, tampered, clusterID), args: base, wantCode: 1,
			wantStdout: []string{"✓ cp-0", "✗ worker-0", "PCR 9 (enforced)", "init=/bin/sh"},
		},
		"another cluster's ID": {
			worker: lockedNode(t, vtpmtest.Boot, clusterID), wantCode: 1,
			args:       []string{"verify", "--endpoint", "10.42.0.2", "--cluster-id", strings.Repeat("44", 32), "--measurements", "measurements.json", "--platform-ca", "ca.pem"},
			wantStdout: []string{"✗ cp-0", "PCR 15", "does not belong to this cluster"},
		},
		"measurements signed by another key": {
			worker: lockedNode(t, vtpmtest.Boot, clusterID), args: base, edit: otherKeyFile, wantCode: 1,
			wantStderr: "Only measurements signed by the publisher's key (--public-key) are trusted",
		},
		"no platform CA": {
			args: []string{"verify", "--endpoint", "10.42.0.2", "--cluster-id", id, "--measurements", "measurements.json"}, wantCode: 1,
			wantStderr: "pass it with --platform-ca",
		},
		"no cluster ID": {
			args: []string{"verify", "--endpoint", "10.42.0.2", "--measurements", "measurements.json"}, wantCode: 1,
			wantStderr: "needs --cluster-id",
		},
		"a malformed cluster ID": {
			args: []string{"verify", "--endpoint", "10.42.0.2", "--cluster-id", "xyz", "--measurements", "measurements.json"}, wantCode: 1,
			wantStderr: "expected the cluster ID as 64 hex digits",
		},
		"an address with a port": {
			args: append(slices.Clone(base), "--endpoint", "10.42.0.4:30081"), wantCode: 1, wantStderr: "without a port",
		},
		"with --node": {
			args: append(slices.Clone(base), "--node", "cp-0"), wantCode: 1, wantStderr: "exclude each other",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs() // no workspace: no configuration, no state
			require.NoError(t, afero.WriteFile(fs, "measurements.json", data, 0o644))
			require.NoError(t, afero.WriteFile(fs, "measurements.json.sig", sig, 0o644))
			require.NoError(t, afero.WriteFile(fs, "cosign.pub", pub, 0o644))
			require.NoError(t, afero.WriteFile(fs, "ca.pem", vtpmtest.PlatformCA(t).CertificatePEM(), 0o644))
			if tc.edit != nil {
				tc.edit(fs)
			}
			att := &fakeAttester{t: t, nodes: map[string]*vtpmtest.Node{"10.42.0.2:30081": lockedNode(t, vtpmtest.Boot, clusterID)}}
			if tc.worker != nil {
				att.nodes["10.42.0.3:30081"] = tc.worker
			}
			e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, att)
			code := execute(context.Background(), tc.args, e)
			assert.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			for _, s := range tc.wantStdout {
				assert.Contains(t, out.String(), s)
			}
			assert.Contains(t, errOut.String(), tc.wantStderr)
		})
	}
}

// TestVerifyDuringRollout: while the state records a roll-out, a node still on the previous image verifies
// with that image's measurements; without the record (the roll-out finished) it fails, and an image that is
// neither never verifies.
func TestVerifyDuringRollout(t *testing.T) {
	clusterID := bytes.Repeat([]byte{3}, 32)
	imageB := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: vtpmtest.Boot[3].Type, Data: "console=ttyS0 image=b"})
	imageC := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: vtpmtest.Boot[3].Type, Data: "console=ttyS0 image=c"})
	testCases := map[string]struct {
		worker     []vtpmtest.Event
		rollout    bool
		wantCode   int
		wantStdout []string
	}{
		"the previous image during the roll-out": {worker: vtpmtest.Boot, rollout: true, wantStdout: []string{"✓ worker-0"}},
		"the previous image after the roll-out":  {worker: vtpmtest.Boot, wantCode: 1, wantStdout: []string{"✗ worker-0", "PCR 9"}},
		"a third image during the roll-out": {
			worker: imageC, rollout: true, wantCode: 1,
			wantStdout: []string{"✗ worker-0", "PCR 9", "image=c"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			writeCreatedConfig(t, fs, vtpmtest.ReferenceValues(imageB))
			writeInitializedState(t, fs, clusterID)
			if tc.rollout {
				st, err := state.Read(file.NewHandler(fs), state.FileName)
				require.NoError(t, err)
				st.Rollout = &state.Rollout{PreviousMeasurements: vtpmtest.ReferenceValues(vtpmtest.Boot), Image: "/images/b"}
				require.NoError(t, st.Write(file.NewHandler(fs), state.FileName))
			}
			att := &fakeAttester{t: t, nodes: map[string]*vtpmtest.Node{
				"10.42.0.2:30081": lockedNode(t, imageB, clusterID), "10.42.0.3:30081": lockedNode(t, tc.worker, clusterID),
			}}
			e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, att)
			code := execute(context.Background(), []string{"verify"}, e)
			assert.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			assert.Contains(t, out.String(), "✓ cp-0")
			for _, s := range tc.wantStdout {
				assert.Contains(t, out.String(), s)
			}
			if tc.rollout {
				assert.Contains(t, errOut.String(), "A roll-out to the image /images/b runs")
			}
		})
	}
}
