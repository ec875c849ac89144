package cmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/cli/internal/cloudcmd"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

// imageFixture is an artifacts directory with a node image (a test UKI) beside the CLI.
func imageFixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "image"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "image", "constellation.efi"), precomputetest.UKI(), 0o644))
	return dir
}

// clusterTrusting is a fake cluster whose JoinService enforces the workspace configuration's attestation
// section, with rollout if set.
func clusterTrusting(t *testing.T, fs afero.Fs, rollout *attestconfig.Rollout) *k8sfake.Clientset {
	t.Helper()
	var cfg config.Config
	require.NoError(t, file.NewHandler(fs).ReadYAML(config.FileName, &cfg))
	data, err := yaml.Marshal(attestconfig.File{AttestationConfig: cfg.Attestation, Rollout: rollout})
	require.NoError(t, err)
	k8s := k8sfake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: attestconfig.ConfigMapName, Namespace: metav1.NamespaceSystem},
		Data:       map[string]string{attestconfig.FileName: string(data)},
	}, keyServiceDaemonSet(cfg.KMS.URI()))
	k8s.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: cfg.KubernetesVersion}
	return k8s
}

// keyServiceDaemonSet is the cluster's KeyService with the key backend uri.
func keyServiceDaemonSet(uri string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: keyserviceproto.DaemonSetName, Namespace: metav1.NamespaceSystem},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: keyserviceproto.DaemonSetName, Args: []string{"--grpc-addr=unix:///run/x.sock", keyserviceproto.KMSURIFlag + uri},
		}}}}},
	}
}

// otherImage returns m with byte i of every value flipped: the measurements of another image.
func otherImage(m measurements.M, i int) measurements.M {
	out := measurements.M{}
	for idx, v := range m {
		v.Expected = append([]byte(nil), v.Expected...)
		v.Expected[i] ^= 0xff
		out[idx] = v
	}
	return out
}

// rolloutEnv is an env of an initialized local cluster k8s whose configuration trusts configured, with the
// test UKI beside the CLI (read through the env's memory file system).
func rolloutEnv(t *testing.T, fs afero.Fs, artifactsDir string, infra *fakeInfra, k8s kubernetes.Interface) (*env, *bytes.Buffer, *config.Config, *state.State) {
	t.Helper()
	e, _, errOut := testEnv(t, fs, infra, nil, nil)
	e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: artifactsDir}, nil }
	e.deps.kube = func([]byte) (kubernetes.Interface, error) { return k8s, nil }
	require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("apiVersion: v1\nkind: Config\n"), 0o600))
	e.files = file.NewHandler(fs)
	require.NoError(t, afero.WriteFile(fs, filepath.Join(artifactsDir, "image", "constellation.efi"), precomputetest.UKI(), 0o644))
	cfg, err := e.loadConfig()
	require.NoError(t, err)
	writeInitializedState(t, fs, make([]byte, 32))
	st, err := e.readState()
	require.NoError(t, err)
	return e, errOut, cfg, st
}

// TestPlanRollout: what apply decides for an initialized local cluster, from the configuration, the
// cluster's attestation config and the image each node runs.
func TestPlanRollout(t *testing.T) {
	artifactsDir := imageFixture(t)
	image := filepath.Join(artifactsDir, "image")
	uki, err := measureImage(file.NewHandler(afero.NewOsFs()), image)
	require.NoError(t, err)
	old := otherImage(uki, 0)
	other := otherImage(old, 1)

	testCases := map[string]struct {
		// configured are the configuration's measurements; cluster the JoinService's.
		configured, cluster measurements.M
		rollout             *attestconfig.Rollout
		images              map[string]string
		wantPlan            bool
		wantNotice          []string
		wantErr             []string
	}{
		"up to date": {
			configured: uki, cluster: uki, images: map[string]string{"cp-0": image, "worker-0": image},
		},
		"a new image is rolled out": {
			configured: uki, cluster: old, images: map[string]string{"cp-0": "/old", "worker-0": "/old"}, wantPlan: true,
		},
		"an interrupted roll-out continues": {
			configured: uki, cluster: uki, rollout: &attestconfig.Rollout{PreviousMeasurements: old},
			images: map[string]string{"cp-0": image, "worker-0": "/old"}, wantPlan: true,
		},
		"nodes on another directory of the same image move too": {
			configured: uki, cluster: uki, images: map[string]string{"cp-0": image, "worker-0": "/copy"}, wantPlan: true,
		},
		"a rebuilt image the configuration does not trust yet stays a notice": {
			configured: old, cluster: old, images: map[string]string{"cp-0": "/old", "worker-0": "/old"},
			wantNotice: []string{"Notice: the node image", "keep their image", "upgrade check --image"},
		},
		"measurements that are not the image's are refused": {
			configured: other, cluster: old, images: map[string]string{"cp-0": "/old"},
			wantErr: []string{"does not boot to attestation.measurements", "upgrade check --image"},
		},
		"a roll-out to a third image is refused": {
			configured: uki, cluster: other, rollout: &attestconfig.Rollout{PreviousMeasurements: old},
			images:  map[string]string{"cp-0": "/old"},
			wantErr: []string{"a roll-out to another image runs", "finish it first"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			writeCreatedConfig(t, fs, tc.cluster)
			k8s := clusterTrusting(t, fs, tc.rollout)
			writeCreatedConfig(t, fs, tc.configured)
			e, errOut, cfg, st := rolloutEnv(t, fs, artifactsDir, &fakeInfra{images: tc.images}, k8s)
			r, err := e.planRollout(context.Background(), cfg, st, e.progress())
			if len(tc.wantErr) > 0 {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantPlan, r != nil)
			for _, n := range tc.wantNotice {
				assert.Contains(t, errOut.String(), n)
			}
			if len(tc.wantNotice) == 0 {
				assert.NotContains(t, errOut.String(), "Notice")
			}
		})
	}
}

// TestRolloutRecord: a roll-out is recorded in the admin's state (so that `verify` accepts both images) once,
// with the image the nodes ran, and its end removes the record; the cluster's side is imagerollout's.
func TestRolloutRecord(t *testing.T) {
	artifactsDir := imageFixture(t)
	image := filepath.Join(artifactsDir, "image")
	uki, err := measureImage(file.NewHandler(afero.NewOsFs()), image)
	require.NoError(t, err)
	old := otherImage(uki, 0)
	fs := afero.NewMemMapFs()
	writeCreatedConfig(t, fs, old)
	k8s := clusterTrusting(t, fs, nil)
	writeCreatedConfig(t, fs, uki)
	e, errOut, cfg, st := rolloutEnv(t, fs, artifactsDir, &fakeInfra{images: map[string]string{"cp-0": "/old"}}, k8s)
	ctx := context.Background()

	r, err := e.planRollout(ctx, cfg, st, e.progress())
	require.NoError(t, err)
	require.NotNil(t, r)
	rec := stateRecord{e: e, st: r.st}
	require.NoError(t, rec.Begin(old, image))
	assert.Contains(t, errOut.String(), "Roll-out started")
	var saved state.State
	require.NoError(t, file.NewHandler(fs).ReadYAML(state.FileName, &saved))
	require.NotNil(t, saved.Rollout, "verify must accept the old image too")
	assert.True(t, imagerollout.Same(old, saved.Rollout.PreviousMeasurements))
	assert.Equal(t, image, saved.Rollout.Image)

	// A re-run finds the record and leaves it.
	errOut.Reset()
	require.NoError(t, stateRecord{e: e, st: &saved}.Begin(uki, image))
	assert.NotContains(t, errOut.String(), "Roll-out started")
	require.NoError(t, file.NewHandler(fs).ReadYAML(state.FileName, &saved))
	assert.True(t, imagerollout.Same(old, saved.Rollout.PreviousMeasurements))

	require.NoError(t, stateRecord{e: e, st: &saved}.Finish())
	require.NoError(t, file.NewHandler(fs).ReadYAML(state.FileName, &saved))
	assert.Nil(t, saved.Rollout)
}
