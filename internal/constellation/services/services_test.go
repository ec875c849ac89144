package services

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	releasecommon "helm.sh/helm/v4/pkg/release/common"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/constellation-go/constellation/internal/kubetest"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testValues() Values {
	return Values{
		APIServerEndpoint: "10.42.0.2:6443",
		Variant:           "qemu-vtpm",
		TPMAddress:        "swtpm:/run/constellation/vtpm/sock",
		EventLogPath:      "/run/constellation/eventlog/binary_bios_measurements",
	}
}

func TestChart(t *testing.T) {
	ch, err := Chart()
	require.NoError(t, err)
	assert.Equal(t, "constellation-services", ch.Metadata.Name)
	assert.Equal(t, versions.ServicesVersion, ch.Metadata.AppVersion, "the chart names the images of its own version")
	assert.Equal(t, versions.ServicesVersion, "v"+ch.Metadata.Version)
	assert.Equal(t, DefaultImages().JoinService, "docker.io/constellation/joinservice:"+ch.Metadata.AppVersion)
}

func TestValidate(t *testing.T) {
	testCases := map[string]func(*Values){
		"endpoint":  func(v *Values) { v.APIServerEndpoint = "10.42.0.2" },
		"variant":   func(v *Values) { v.Variant = "x" },
		"tpm":       func(v *Values) { v.TPMAddress = "/dev/tpmrm0" },
		"event log": func(v *Values) { v.EventLogPath = "eventlog" },
		"kms":       func(v *Values) { v.KMSURI = "vault://x" },
	}
	for name, edit := range testCases {
		t.Run(name, func(t *testing.T) {
			v := testValues()
			require.NoError(t, v.Validate())
			edit(&v)
			assert.Error(t, v.Validate())
		})
	}
}

func daemonSet(ctx context.Context, t *testing.T, c *kubetest.Cluster, name string) *appsv1.DaemonSet {
	t.Helper()
	ds, err := c.Client.AppsV1().DaemonSets(Namespace).Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	return ds
}

// TestInstallAndUpgrade installs the chart into a real kube-apiserver and upgrades it as `constellation
// apply` does: the values the cluster was installed with stay, the images move, an unchanged chart makes no
// revision, and what the upgrade controller changed on the JoinService survives.
func TestInstallAndUpgrade(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := context.Background()
	client, err := NewClient(cluster.Kubeconfig, slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	_, err = client.Current(ctx)
	require.ErrorIs(t, err, ErrNotInstalled)
	_, _, err = client.Upgrade(ctx, Change{Images: DefaultImages()})
	require.ErrorIs(t, err, ErrNotInstalled, "an upgrade does not install")

	bad := testValues()
	bad.TPMAddress = "tpm0"
	_, err = client.Install(ctx, bad)
	require.Error(t, err)
	_, err = client.Current(ctx)
	require.ErrorIs(t, err, ErrNotInstalled, "nothing is installed from bad values")

	rel, err := client.Install(ctx, testValues())
	require.NoError(t, err)
	assert.Equal(t, Release{Name: ReleaseName, Namespace: Namespace, ChartVersion: "0.1.0-dev", AppVersion: versions.ServicesVersion,
		Revision: 1, Status: "deployed", Updated: rel.Updated}, rel)
	for name, image := range map[string]string{
		JoinServiceName: DefaultImages().JoinService, KeyServiceName: DefaultImages().KeyService,
		VerificationServiceName: DefaultImages().VerificationService, OperatorName: DefaultImages().Operator,
	} {
		ds := daemonSet(ctx, t, cluster, name)
		assert.Equal(t, image, ds.Spec.Template.Spec.Containers[0].Image, name)
		// One field manager, whichever program applies the chart: the bootstrapper installs it, the CLI
		// upgrades it, and two managers of one field conflict under server-side apply.
		var managers []string
		for _, f := range ds.ManagedFields {
			managers = append(managers, f.Manager)
		}
		assert.Equal(t, []string{fieldManager}, managers, name)
	}

	// The upgrade controller holds its Lease in its pod's name (operator --leader-identity), so a restarted
	// leader does not wait out its own Lease.
	operator := daemonSet(ctx, t, cluster, OperatorName)
	assert.Contains(t, operator.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "OPERATOR_LEADER_IDENTITY",
		ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}})

	// The upgrade controller restarts the JoinService for a new join config.
	_, err = cluster.Client.AppsV1().DaemonSets(Namespace).Patch(ctx, JoinServiceName, types.StrategicMergePatchType,
		[]byte(`{"spec":{"template":{"metadata":{"annotations":{"`+joinproto.RestartAnnotation+`":"abc"}}}}}`), metav1.PatchOptions{})
	require.NoError(t, err)

	rel, changed, err := client.Upgrade(ctx, Change{Images: DefaultImages()})
	require.NoError(t, err)
	assert.False(t, changed, "the same chart and images make no revision")
	assert.Equal(t, 1, rel.Revision)

	images := DefaultImages()
	images.JoinService = "docker.io/constellation/joinservice:v9.9.9"
	rel, changed, err = client.Upgrade(ctx, Change{Images: images})
	require.NoError(t, err)
	assert.True(t, changed)
	assert.Equal(t, 2, rel.Revision)
	assert.Equal(t, "deployed", rel.Status)
	join := daemonSet(ctx, t, cluster, JoinServiceName)
	assert.Equal(t, images.JoinService, join.Spec.Template.Spec.Containers[0].Image)
	assert.Contains(t, join.Spec.Template.Spec.Containers[0].Args, "--api-endpoint=10.42.0.2:6443", "the installed values stay")
	assert.Equal(t, "abc", join.Spec.Template.Annotations[joinproto.RestartAnnotation], "the controller's restart mark survives the upgrade")

	again, changed, err := client.Upgrade(ctx, Change{Images: images})
	require.NoError(t, err)
	assert.False(t, changed, "an upgrade run again changes nothing")
	assert.Equal(t, 2, again.Revision)

	// A new KMS key of user-managed keys goes through the chart too.
	const uri = "kms://aws-kms?key-id=alias%2Fnew&region=eu-west-1"
	rel, changed, err = client.Upgrade(ctx, Change{Images: images, KMSURI: uri})
	require.NoError(t, err)
	assert.True(t, changed)
	assert.Equal(t, 3, rel.Revision)
	key := daemonSet(ctx, t, cluster, KeyServiceName)
	assert.Contains(t, key.Spec.Template.Spec.Containers[0].Args, "--kms-uri="+uri)
	assert.True(t, *key.Spec.Template.Spec.AutomountServiceAccountToken, "the user-managed KeyService gets its account's token")
}

// setStatus makes the release's latest revision look as an interrupted Helm operation leaves it; with
// newRevision, as a new revision (an upgrade that stopped after it recorded itself).
func setStatus(t *testing.T, c *Client, status releasecommon.Status, newRevision bool) {
	t.Helper()
	current, err := c.current()
	require.NoError(t, err)
	rel := *current
	info := *current.Info
	info.Status = status
	rel.Info = &info
	if newRevision {
		rel.Version++
		require.NoError(t, c.helm.Releases.Create(&rel))
		return
	}
	require.NoError(t, c.helm.Releases.Update(&rel))
}

// TestInterruptedReleases: an init that stopped during the chart's first install, and an upgrade that
// stopped halfway, leave a pending release; running the command again finishes the job instead of failing
// with Helm's "another operation is in progress".
func TestInterruptedReleases(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := context.Background()
	client, err := NewClient(cluster.Kubeconfig, slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	_, err = client.Install(ctx, testValues())
	require.NoError(t, err)
	setStatus(t, client, releasecommon.StatusPendingInstall, false)
	// The unfinished install is removed and done again: one revision, deployed, with every service.
	rel, err := client.Install(ctx, testValues())
	require.NoError(t, err)
	assert.Equal(t, 1, rel.Revision)
	assert.Equal(t, "deployed", rel.Status)
	history, err := client.helm.Releases.History(ReleaseName)
	require.NoError(t, err)
	assert.Len(t, history, 1, "the unfinished revision is gone")
	for _, name := range []string{JoinServiceName, KeyServiceName, VerificationServiceName, OperatorName} {
		daemonSet(ctx, t, cluster, name)
	}

	// An upgrade that recorded revision 2 and stopped: the next one rolls it back, then upgrades.
	setStatus(t, client, releasecommon.StatusPendingUpgrade, true)
	_, err = client.Current(ctx)
	require.NoError(t, err)
	images := DefaultImages()
	images.KeyService = "docker.io/constellation/keyservice:v9.9.9"
	rel, changed, err := client.Upgrade(ctx, Change{Images: images})
	require.NoError(t, err)
	assert.True(t, changed)
	assert.Equal(t, "deployed", rel.Status)
	assert.Equal(t, 4, rel.Revision, "2 pending, 3 its roll-back, 4 the upgrade")
	assert.Equal(t, images.KeyService, daemonSet(ctx, t, cluster, KeyServiceName).Spec.Template.Spec.Containers[0].Image)

	// A failed upgrade the same way.
	setStatus(t, client, releasecommon.StatusFailed, false)
	rel, changed, err = client.Upgrade(ctx, Change{Images: images})
	require.NoError(t, err)
	assert.True(t, changed, "the roll-back went back to revision 3; the change is applied again")
	assert.Equal(t, "deployed", rel.Status)
	assert.Equal(t, 6, rel.Revision, "5 the roll-back of the failed 4, 6 the upgrade")
	assert.Equal(t, images.KeyService, daemonSet(ctx, t, cluster, KeyServiceName).Spec.Template.Spec.Containers[0].Image)

	// An install run again on a deployed release (an init resumed after the chart was in) upgrades it.
	rel, err = client.Install(ctx, testValues())
	require.NoError(t, err)
	assert.Equal(t, "deployed", rel.Status)
	assert.Equal(t, DefaultImages().KeyService, daemonSet(ctx, t, cluster, KeyServiceName).Spec.Template.Spec.Containers[0].Image,
		"install sets exactly the values it is given")
}
