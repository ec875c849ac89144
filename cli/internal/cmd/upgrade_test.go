package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/cli/internal/cloudcmd"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
)

// upgradeFixture is a workspace with a local configuration (with a comment of the user's) and, beside the
// CLI, an image whose measurements the configuration does not trust yet.
func upgradeFixture(t *testing.T) (ws afero.Fs, artifactsDir string) {
	t.Helper()
	artifactsDir = t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(artifactsDir, "image"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(artifactsDir, "image", "constellation.efi"), precomputetest.UKI(), 0o644))
	ws = afero.NewMemMapFs()
	cfg, err := config.Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	require.NoError(t, afero.WriteFile(ws, config.FileName, append([]byte("# the admin's note\n"), data...), 0o644))
	return ws, artifactsDir
}

// clusterAt is a fake cluster running Kubernetes v and the services with tag servicesTag.
func clusterAt(v, servicesTag string) kubernetes.Interface {
	k8s := k8sfake.NewClientset(&appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "joinservice", Namespace: metav1.NamespaceSystem},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "joinservice", Image: "docker.io/constellation/joinservice:" + servicesTag}},
		}}},
	})
	k8s.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: v}
	return k8s
}

func TestUpgradeCheck(t *testing.T) {
	tests := map[string]struct {
		args []string
		// cluster, if set, is the running (initialized) cluster.
		cluster    kubernetes.Interface
		wantCode   int
		wantOut    []string
		wantErr    string
		wantK8s    string // the configuration's kubernetesVersion afterwards
		wantPCRs   bool   // the configuration trusts the new image's measurements afterwards
		wantSource string
	}{
		"before init: the configuration's version": {
			args:    []string{"upgrade", "check"},
			wantOut: []string{"Kubernetes: v1.33.13 (from the configuration)", "can move to v1.34.10 (minor)", "PCRs 4, 9, 11", "differ from the configured measurements", "Write the targets into constellation-conf.yaml with --update-config"},
			wantK8s: "v1.33.13",
		},
		"a running cluster's version and services": {
			args: []string{"upgrade", "check"}, cluster: clusterAt("v1.33.13", "v0.0.9"),
			wantOut: []string{"Kubernetes: v1.33.13 (from the cluster)", "can move to v1.34.10 (minor)", "Services: v0.1.0-dev beside the CLI, v0.0.9 in the cluster"},
			wantK8s: "v1.33.13",
		},
		"a cluster at the newest version": {
			args: []string{"upgrade", "check"}, cluster: clusterAt("v1.34.10", "v0.1.0-dev"),
			wantOut: []string{"Kubernetes: v1.34.10 (from the cluster)", "up to date"},
			wantK8s: "v1.33.13",
		},
		"update the configuration": {
			args: []string{"upgrade", "check", "--update-config"}, cluster: clusterAt("v1.33.13", "v0.1.0-dev"),
			wantOut: []string{"Wrote kubernetesVersion, attestation.measurements into constellation-conf.yaml", "constellation upgrade apply"},
			wantK8s: "v1.34.10", wantPCRs: true,
		},
		"update to a chosen version": {
			args:    []string{"upgrade", "check", "--update-config", "--kubernetes", "1.34"},
			wantOut: []string{"Wrote kubernetesVersion"}, wantK8s: "v1.34.10", wantPCRs: true,
		},
		"no downgrade": {
			args: []string{"upgrade", "check", "--update-config", "--kubernetes", "v1.33.13"}, cluster: clusterAt("v1.34.10", "v0.1.0-dev"),
			wantCode: 1, wantErr: "kubernetes downgrades are not supported: the cluster runs v1.34.10, the target is v1.33.13", wantK8s: "v1.33.13",
		},
		"--kubernetes alone": {
			args: []string{"upgrade", "check", "--kubernetes", "v1.34.10"}, wantCode: 1, wantErr: "pass both", wantK8s: "v1.33.13",
		},
		"an image that is not one": {
			args: []string{"upgrade", "check", "--image", "/nonexistent"}, wantCode: 1, wantErr: "measuring the image /nonexistent", wantK8s: "v1.33.13",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ws, dir := upgradeFixture(t)
			if tc.cluster != nil {
				writeInitializedState(t, ws, bytes.Repeat([]byte{3}, 32))
				require.NoError(t, afero.WriteFile(ws, AdminConfFile, []byte("kubeconfig"), 0o600))
			}
			e, out, errOut := testEnv(t, layered(ws), &fakeInfra{}, nil, nil)
			e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: dir}, nil }
			e.deps.kube = func([]byte) (kubernetes.Interface, error) { return tc.cluster, nil }

			code := execute(context.Background(), tc.args, e)
			require.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			for _, want := range tc.wantOut {
				assert.Contains(t, out.String(), want)
			}
			assert.Contains(t, errOut.String(), tc.wantErr)

			data, err := e.files.Read(config.FileName)
			require.NoError(t, err)
			assert.Contains(t, string(data), "# the admin's note", "comments are kept")
			cfg, err := config.Parse(data)
			require.NoError(t, err)
			assert.Equal(t, tc.wantK8s, cfg.KubernetesVersion)
			m, err := measureImage(file.NewHandler(afero.NewOsFs()), filepath.Join(dir, "image"))
			require.NoError(t, err)
			assert.Equal(t, tc.wantPCRs, len(upgrade.ChangedPCRs(cfg.Attestation.Measurements, m)) == 0, "the configuration trusts the new image")
		})
	}
}

func TestUpgradeCheckJSON(t *testing.T) {
	ws, dir := upgradeFixture(t)
	e, out, errOut := testEnv(t, layered(ws), &fakeInfra{}, nil, nil)
	e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: dir}, nil }
	require.Zero(t, execute(context.Background(), []string{"upgrade", "check", "-o", "json"}, e), errOut.String())
	var res upgradeCheckResult
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	assert.Equal(t, "v1.33.13", res.Kubernetes.Current)
	assert.Equal(t, "configuration", res.Kubernetes.Source)
	assert.Equal(t, []upgrade.KubernetesTarget{{Version: "v1.34.10", Kind: upgrade.KindMinor}}, res.Kubernetes.Targets)
	require.NotNil(t, res.Image)
	assert.Equal(t, filepath.Join(dir, "image"), res.Image.Candidate)
	assert.NotEmpty(t, res.Image.ChangedPCRs)
	require.Contains(t, res.Image.Measurements, uint32(15))
	assert.Equal(t, make([]byte, 32), []byte(res.Image.Measurements[15].Expected), "a fresh node's PCR 15")
	assert.Equal(t, "v0.1.0-dev", res.Services.CLI)
}
