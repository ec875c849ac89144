package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/constellation/services"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/kubetest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func nodePCRs() map[uint32][]byte {
	pcrs := map[uint32][]byte{}
	for _, idx := range []uint32{4, 9, 11, 12, 13, 14} {
		pcrs[idx] = bytes.Repeat([]byte{byte(idx)}, 32)
	}
	// PCR 15 as the node shows it after taking its lock: the config must expect zero instead.
	pcrs[15] = bytes.Repeat([]byte{0xff}, 32)
	return pcrs
}

func testConfig(t *testing.T) Config {
	t.Helper()
	att, err := AttestationConfig(adminAttestationYAML(t, nil), variant.QEMUVTPM.String(), nodePCRs())
	require.NoError(t, err)
	return Config{
		Kubeconfig:        []byte("set by the test that deploys"),
		KubernetesVersion: "v1.33.13",
		Components: []*components.Component{
			{Url: "http://10.42.0.1:8080/v1.33.13/kubelet", Hash: "sha256:" + strings.Repeat("ab", 32), InstallPath: "/var/lib/constellation/bin/kubelet", Name: "kubelet", Mode: 0o755},
			{Url: "http://10.42.0.1:8080/v1.33.13/pause.tar", Hash: "sha256:" + strings.Repeat("cd", 32), InstallPath: "/var/lib/constellation/images/pause.tar", Name: "pause.tar", Image: "registry.k8s.io/pause:3.10"},
		},
		MasterSecret:      *cryptotest.MasterSecret(),
		AttestationConfig: att,
		Services: services.Values{
			APIServerEndpoint: "10.42.0.2:6443",
			Variant:           variant.QEMUVTPM.String(),
			TPMAddress:        "swtpm:/run/constellation/vtpm/sock",
			EventLogPath:      "/run/constellation/eventlog/binary_bios_measurements",
		},
	}
}

// adminAttestation is the attestation section of an admin's configuration for a node with nodePCRs: the
// default PCRs, an extra enforced PCR 14, and the platform CA.
func adminAttestation(t *testing.T) config.AttestationConfig {
	t.Helper()
	m := measurements.M{}
	for idx, v := range nodePCRs() {
		m[idx] = measurements.Measurement{Expected: v}
	}
	m[15] = measurements.Measurement{Expected: measurements.Zero}
	return config.AttestationConfig{Variant: variant.QEMUVTPM.String(), Measurements: m, PlatformCA: string(vtpmtest.PlatformCA(t).CertificatePEM())}
}

func adminAttestationYAML(t *testing.T, edit func(*config.AttestationConfig)) []byte {
	t.Helper()
	att := adminAttestation(t)
	if edit != nil {
		edit(&att)
	}
	raw, err := yaml.Marshal(att)
	require.NoError(t, err)
	return raw
}

// The JoinService enforces exactly the admin's attestation config: every configured PCR (an extra one
// too) and the platform CA.
func TestAttestationConfig(t *testing.T) {
	raw, err := AttestationConfig(adminAttestationYAML(t, nil), variant.QEMUVTPM.String(), nodePCRs())
	require.NoError(t, err)
	v, err := attestconfig.Parse(raw, nil)
	require.NoError(t, err)
	assert.True(t, v.Variant().Equal(variant.QEMUVTPM))
	var got config.AttestationConfig
	require.NoError(t, yaml.Unmarshal(raw, &got))
	assert.Equal(t, adminAttestation(t).PlatformCA, got.PlatformCA)
	assert.Equal(t, bytes.Repeat([]byte{14}, 32), []byte(got.Measurements[14].Expected), "the admin's extra PCR is kept")
	assert.Equal(t, []byte(measurements.Zero), []byte(got.Measurements[15].Expected), "PCR 15 zero for joining nodes")

	testCases := map[string]struct {
		raw     []byte
		pcrs    map[uint32][]byte
		wantErr string
	}{
		"none":           {raw: nil, wantErr: "carries none"},
		"not YAML":       {raw: []byte("{"), wantErr: "unusable attestation config"},
		"unknown field":  {raw: append(adminAttestationYAML(t, nil), []byte("trustEveryone: true\n")...), wantErr: "trustEveryone"},
		"other variant":  {raw: adminAttestationYAML(t, func(a *config.AttestationConfig) { a.Variant = "aws-sev-snp" }), wantErr: `this node attests as "qemu-vtpm"`},
		"no platform CA": {raw: adminAttestationYAML(t, func(a *config.AttestationConfig) { a.PlatformCA = "" }), wantErr: "no platform CA"},
		"this node differs": {
			raw: adminAttestationYAML(t, nil),
			pcrs: func() map[uint32][]byte {
				p := nodePCRs()
				p[9] = bytes.Repeat([]byte{0x99}, 32)
				return p
			}(),
			wantErr: "PCR 9: configured",
		},
		"a required PCR missing": {
			raw:     adminAttestationYAML(t, func(a *config.AttestationConfig) { delete(a.Measurements, 11) }),
			wantErr: "no reference value for an enforced PCR",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			pcrs := tc.pcrs
			if pcrs == nil {
				pcrs = nodePCRs()
			}
			_, err := AttestationConfig(tc.raw, variant.QEMUVTPM.String(), pcrs)
			require.ErrorIs(t, err, ErrAttestationConfig)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestConfigRefusals(t *testing.T) {
	testCases := map[string]func(*Config){
		"kubeconfig":    func(c *Config) { c.Kubeconfig = nil },
		"endpoint":      func(c *Config) { c.Services.APIServerEndpoint = "10.42.0.2" },
		"version":       func(c *Config) { c.KubernetesVersion = "" },
		"master secret": func(c *Config) { c.MasterSecret.Key = []byte("short") },
		"attestation":   func(c *Config) { c.AttestationConfig = nil },
		"variant":       func(c *Config) { c.Services.Variant = "x" },
		"tpm":           func(c *Config) { c.Services.TPMAddress = "/dev/tpmrm0" },
		"event log":     func(c *Config) { c.Services.EventLogPath = "eventlog" },
		"kms":           func(c *Config) { c.Services.KMSURI = "vault://x" },
	}
	for name, edit := range testCases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			edit(&cfg)
			client := fake.NewClientset()
			require.Error(t, Deploy(context.Background(), client, cfg))
			secrets, err := client.CoreV1().Secrets(Namespace).List(context.Background(), metav1.ListOptions{})
			require.NoError(t, err)
			assert.Empty(t, secrets.Items, "nothing is created from a bad configuration")
		})
	}
}

func container(t *testing.T, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	require.Len(t, ds.Spec.Template.Spec.Containers, 1)
	return ds.Spec.Template.Spec.Containers[0]
}

func hasEnv(c corev1.Container, name string) bool {
	for _, e := range c.Env {
		if e.Name == name {
			return true
		}
	}
	return false
}

func hasArg(c corev1.Container, arg string) bool {
	return slices.Contains(c.Args, arg)
}

func volume(t *testing.T, ds *appsv1.DaemonSet, name string) corev1.Volume {
	t.Helper()
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("DaemonSet %s has no volume %s", ds.Name, name)
	return corev1.Volume{}
}

// TestDeployAgainstAPIServer deploys into a real kube-apiserver (which validates every object) and checks
// what the services will find.
func TestDeployAgainstAPIServer(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.Kubeconfig = cluster.Kubeconfig
	require.NoError(t, Deploy(ctx, cluster.Client, cfg))

	// The services are a Helm release.
	helm, err := services.NewClient(cluster.Kubeconfig, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	rel, err := helm.Current(ctx)
	require.NoError(t, err)
	assert.Equal(t, services.ReleaseName, rel.Name)
	assert.Equal(t, "deployed", rel.Status)
	assert.Equal(t, versions.ServicesVersion, rel.AppVersion)

	// The master secret in the format the KeyService reads, and the salt alone for the JoinService.
	secret, err := cluster.Client.CoreV1().Secrets(Namespace).Get(ctx, MasterSecretName, metav1.GetOptions{})
	require.NoError(t, err)
	var master crypto.MasterSecret
	require.NoError(t, json.Unmarshal(secret.Data[crypto.MasterSecretFileName], &master))
	assert.Equal(t, cfg.MasterSecret.Key, master.Key)
	assert.Equal(t, cfg.MasterSecret.Salt, master.Salt)
	assert.Equal(t, cfg.MasterSecret.Salt, secret.Data[MeasurementSaltKey])

	// The attestation config the JoinService loads.
	cm, err := cluster.Client.CoreV1().ConfigMaps(Namespace).Get(ctx, AttestationConfigName, metav1.GetOptions{})
	require.NoError(t, err)
	_, err = attestconfig.Parse([]byte(cm.Data[attestconfig.FileName]), nil)
	require.NoError(t, err)

	// The components, in the JoinService's --components format.
	cm, err = cluster.Client.CoreV1().ConfigMaps(Namespace).Get(ctx, JoinConfigName, metav1.GetOptions{})
	require.NoError(t, err)
	var file struct {
		Components []json.RawMessage `json:"components"`
	}
	require.NoError(t, json.Unmarshal([]byte(cm.Data[ComponentsKey]), &file))
	require.Len(t, file.Components, len(cfg.Components))
	for i, raw := range file.Components {
		c := &components.Component{}
		require.NoError(t, protojson.Unmarshal(raw, c))
		assert.True(t, proto.Equal(cfg.Components[i], c), "component %d", i)
	}

	dss, err := cluster.Client.AppsV1().DaemonSets(Namespace).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	byName := map[string]*appsv1.DaemonSet{}
	for i := range dss.Items {
		byName[dss.Items[i].Name] = &dss.Items[i]
	}
	require.Len(t, byName, 4)
	images := services.DefaultImages()
	for name, image := range map[string]string{
		JoinServiceName: images.JoinService, KeyServiceName: images.KeyService, VerificationServiceName: images.VerificationService,
		OperatorName: images.Operator,
	} {
		ds := byName[name]
		require.NotNil(t, ds, name)
		spec := ds.Spec.Template.Spec
		assert.True(t, spec.HostNetwork, name)
		assert.Equal(t, image, container(t, ds).Image, name)
		assert.Equal(t, corev1.PullNever, container(t, ds).ImagePullPolicy, name)
		assert.Contains(t, spec.Tolerations, corev1.Toleration{Operator: corev1.TolerationOpExists}, name)
	}

	key := byName[KeyServiceName]
	assert.Equal(t, map[string]string{"node-role.kubernetes.io/control-plane": ""}, key.Spec.Template.Spec.NodeSelector)
	const socket = "unix:///run/constellation/keyservice/keyservice.sock"
	assert.True(t, hasArg(container(t, key), "--grpc-addr="+socket), "the KeyService's API is a unix socket, not a port")
	// Only the KeyService and the JoinService mount the socket's directory.
	for name, ds := range byName {
		var mounts []string
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.HostPath != nil && v.HostPath.Path == "/run/constellation/keyservice" {
				mounts = append(mounts, v.Name)
			}
		}
		if name == KeyServiceName || name == JoinServiceName {
			assert.Equal(t, []string{"keyservice-socket"}, mounts, name)
		} else {
			assert.Empty(t, mounts, "%s must not reach the KeyService", name)
		}
	}
	assert.True(t, hasArg(container(t, key), "--kms-uri=kms://cluster-kms"))
	assert.Equal(t, []corev1.KeyToPath{{Key: crypto.MasterSecretFileName, Path: crypto.MasterSecretFileName}}, volume(t, key, "mastersecret").Secret.Items)

	join := byName[JoinServiceName]
	jc := container(t, join)
	assert.Equal(t, map[string]string{"node-role.kubernetes.io/control-plane": ""}, join.Spec.Template.Spec.NodeSelector)
	for _, arg := range []string{
		"--grpc-addr=:30090", "--keyservice-addr=unix:///run/constellation/keyservice/keyservice.sock", "--api-endpoint=10.42.0.2:6443",
		"--kubernetes-version=$(JOIN_KUBERNETES_VERSION)",
		"--attestation-config=/var/run/constellation/attestation/attestation-config.yaml",
		"--measurement-salt=/var/run/constellation/mastersecret/measurementSalt", "--components=/var/run/constellation/join/components.json",
		"--pki-dir=/etc/kubernetes/pki",
	} {
		assert.True(t, hasArg(jc, arg), "JoinService argument %s in %v", arg, jc.Args)
	}
	assert.Equal(t, []corev1.KeyToPath{{Key: MeasurementSaltKey, Path: MeasurementSaltKey}}, volume(t, join, "salt").Secret.Items,
		"the JoinService gets the salt, not the master secret")
	assert.Equal(t, "/etc/kubernetes/pki", volume(t, join, "pki").HostPath.Path)
	assert.Equal(t, JoinServiceName, join.Spec.Template.Spec.ServiceAccountName)

	verify := byName[VerificationServiceName]
	vc := container(t, verify)
	assert.Empty(t, verify.Spec.Template.Spec.NodeSelector, "the VerificationService runs on every node")
	assert.True(t, hasArg(vc, "--tpm=swtpm:/run/constellation/vtpm/sock"))
	assert.True(t, hasArg(vc, "--event-log=/run/constellation/eventlog/binary_bios_measurements"))
	assert.Equal(t, "/run/constellation/vtpm", volume(t, verify, "tpm").HostPath.Path)
	assert.Equal(t, "/run/constellation/eventlog", volume(t, verify, "eventlog").HostPath.Path)
	require.NotNil(t, vc.SecurityContext)
	assert.Nil(t, vc.SecurityContext.Privileged, "a vTPM socket needs no privileges")
	assert.Equal(t, int64(0), *vc.SecurityContext.RunAsUser, "the TPM and the event log belong to root")

	// The JoinService's account may create bootstrap tokens and do nothing else with secrets.
	saClient := impersonate(t, cluster.Config, "system:serviceaccount:kube-system:joinservice")
	_, err = saClient.CoreV1().Secrets(Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-abcdef"}, Type: "bootstrap.kubernetes.io/token",
		StringData: map[string]string{"token-id": "abcdef", "token-secret": "0123456789abcdef"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = saClient.CoreV1().Secrets(Namespace).Get(ctx, MasterSecretName, metav1.GetOptions{})
	assert.True(t, apierrors.IsForbidden(err), "the JoinService cannot read the master secret: %v", err)
	// Re-attestation: it lists nodes and may cordon them, but neither delete them nor read other Secrets.
	_, err = saClient.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	err = saClient.CoreV1().Nodes().Delete(ctx, "any", metav1.DeleteOptions{})
	assert.True(t, apierrors.IsForbidden(err), "the JoinService cannot delete nodes: %v", err)
	_, err = saClient.CoreV1().Secrets(Namespace).List(ctx, metav1.ListOptions{})
	assert.True(t, apierrors.IsForbidden(err), "the JoinService cannot list secrets: %v", err)
	assert.True(t, hasEnv(jc, "JOINSERVICE_NODE_NAME"), "the lease identity is the node's name")
	assert.Contains(t, jc.Env, corev1.EnvVar{Name: "JOIN_KUBERNETES_VERSION", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: JoinConfigName}, Key: joinproto.KubernetesVersionKey,
	}}}, "the version joining nodes get is the join config's")

	// The upgrade controller: on the control planes, with its resource type served.
	op := byName[OperatorName]
	assert.Equal(t, map[string]string{"node-role.kubernetes.io/control-plane": ""}, op.Spec.Template.Spec.NodeSelector)
	assert.Equal(t, OperatorName, op.Spec.Template.Spec.ServiceAccountName)
	assert.True(t, hasEnv(container(t, op), "KUBERNETES_SERVICE_HOST"), "the controller reaches the API server on its node")
	upgrades := schema.GroupVersionResource{Group: v1alpha1.GroupVersion.Group, Version: v1alpha1.GroupVersion.Version, Resource: "kubernetesupgrades"}
	dyn, err := dynamic.NewForConfig(cluster.Config)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := dyn.Resource(upgrades).List(ctx, metav1.ListOptions{})
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "the KubernetesUpgrade resource is not served")
	// Its account: the nodes, evictions, its own status and the JoinService's version; not Secrets, and not
	// other DaemonSets or ConfigMaps in kube-system.
	opClient := impersonate(t, cluster.Config, "system:serviceaccount:kube-system:operator")
	_, err = opClient.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for what, allowed := range map[string]bool{
		"patch nodes": true, "create pods/eviction": true, "patch daemonsets/" + JoinServiceName: true,
		"update configmaps/" + JoinConfigName: true, "patch kubernetesupgrades/status": true,
		"get secrets": false, "list secrets": false, "patch daemonsets/" + KeyServiceName: false, "update daemonsets/" + JoinServiceName: false,
		"update configmaps/" + AttestationConfigName: false, "update kubernetesupgrades": false, "delete nodes": false,
	} {
		assert.Equal(t, allowed, can(ctx, t, opClient, what), "the upgrade controller may %s: %v", what, allowed)
	}

	// Deploying again (an init that was interrupted) updates in place.
	cfg.KubernetesVersion = "v1.34.1"
	cfg.Services.Images.JoinService = "docker.io/constellation/joinservice:v0.2.0"
	cfg.Services.TPMAddress = "device:/dev/tpmrm0"
	require.NoError(t, Deploy(ctx, cluster.Client, cfg))
	cm, err = cluster.Client.CoreV1().ConfigMaps(Namespace).Get(ctx, JoinConfigName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "v1.34.1", cm.Data[joinproto.KubernetesVersionKey])
	ds, err := cluster.Client.AppsV1().DaemonSets(Namespace).Get(ctx, JoinServiceName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "docker.io/constellation/joinservice:v0.2.0", container(t, ds).Image)
	rel, err = helm.Current(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, rel.Revision, "the release is upgraded, not installed twice")
	ds, err = cluster.Client.AppsV1().DaemonSets(Namespace).Get(ctx, VerificationServiceName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "/dev/tpmrm0", volume(t, ds, "tpm").HostPath.Path)
	assert.Equal(t, corev1.HostPathCharDev, *volume(t, ds, "tpm").HostPath.Type)
	require.NotNil(t, container(t, ds).SecurityContext)
	assert.True(t, *container(t, ds).SecurityContext.Privileged, "a TPM device needs the device cgroup opened")
}

// TestDeployUserManagedKeys: a user-managed KeyService gets the admin's KMS credentials from a Secret (not
// its arguments), the API server on its node, and an account that reads and writes only the Secret of
// wrapped keys: not the master secret, not other Secrets.
func TestDeployUserManagedKeys(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.Kubeconfig = cluster.Kubeconfig
	cfg.Services.KMSURI = "kms://aws-kms?key-id=alias%2Fc&region=eu-west-1"
	cfg.KMSCredentials = &awskms.Credentials{AccessKeyID: "AKID", SecretAccessKey: "top-secret"}
	require.NoError(t, Deploy(ctx, cluster.Client, cfg))
	require.NoError(t, Deploy(ctx, cluster.Client, cfg), "deploying again is harmless")

	creds, err := cluster.Client.CoreV1().Secrets(Namespace).Get(ctx, KMSCredentialsName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{"AWS_ACCESS_KEY_ID": []byte("AKID"), "AWS_SECRET_ACCESS_KEY": []byte("top-secret")}, creds.Data)
	ds, err := cluster.Client.AppsV1().DaemonSets(Namespace).Get(ctx, KeyServiceName, metav1.GetOptions{})
	require.NoError(t, err)
	c := container(t, ds)
	assert.True(t, hasArg(c, "--kms-uri="+cfg.Services.KMSURI))
	assert.NotContains(t, strings.Join(c.Args, " "), "top-secret")
	require.Len(t, c.EnvFrom, 1)
	assert.Equal(t, KMSCredentialsName, c.EnvFrom[0].SecretRef.Name)
	assert.True(t, hasEnv(c, "KUBERNETES_SERVICE_HOST"))
	assert.Equal(t, KeyServiceName, ds.Spec.Template.Spec.ServiceAccountName)
	assert.True(t, *ds.Spec.Template.Spec.AutomountServiceAccountToken)

	sa := impersonate(t, cluster.Config, "system:serviceaccount:kube-system:keyservice")
	store := awskms.NewSecretStore(sa, Namespace, awskms.DefaultSecret)
	require.NoError(t, store.Create(ctx, "disk.64", []byte("blob")))
	require.NoError(t, store.Update(ctx, "disk.64", []byte("blob 2")))
	got, err := store.Get(ctx, "disk.64")
	require.NoError(t, err)
	assert.Equal(t, "blob 2", string(got))
	require.NoError(t, Deploy(ctx, cluster.Client, cfg))
	got, err = store.Get(ctx, "disk.64")
	require.NoError(t, err)
	assert.Equal(t, "blob 2", string(got), "a deploy again keeps the wrapped keys")
	_, err = sa.CoreV1().Secrets(Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-abcdef"}, Type: "bootstrap.kubernetes.io/token",
		StringData: map[string]string{"token-id": "abcdef", "token-secret": "0123456789abcdef"},
	}, metav1.CreateOptions{})
	assert.True(t, apierrors.IsForbidden(err), "the KeyService's account cannot create Secrets (a bootstrap token): %v", err)
	_, err = sa.CoreV1().Secrets(Namespace).Get(ctx, MasterSecretName, metav1.GetOptions{})
	assert.True(t, apierrors.IsForbidden(err), "the KeyService's account cannot read the master secret: %v", err)
	_, err = sa.CoreV1().Secrets(Namespace).Get(ctx, KMSCredentialsName, metav1.GetOptions{})
	assert.True(t, apierrors.IsForbidden(err), "nor its credentials through the API: %v", err)
	_, err = sa.CoreV1().Secrets(Namespace).List(ctx, metav1.ListOptions{})
	assert.True(t, apierrors.IsForbidden(err), "nor list Secrets: %v", err)

	// Back to constellation-managed keys: no rights, no token, no credentials in the KeyService.
	plain := testConfig(t)
	plain.Kubeconfig = cluster.Kubeconfig
	require.NoError(t, Deploy(ctx, cluster.Client, plain))
	ds, err = cluster.Client.AppsV1().DaemonSets(Namespace).Get(ctx, KeyServiceName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.False(t, *ds.Spec.Template.Spec.AutomountServiceAccountToken)
	assert.Empty(t, container(t, ds).EnvFrom)
	_, err = sa.CoreV1().Secrets(Namespace).Get(ctx, awskms.DefaultSecret, metav1.GetOptions{})
	assert.True(t, apierrors.IsForbidden(err), "the account has no rights left: %v", err)
}

func impersonate(t *testing.T, cfg *rest.Config, user string) kubernetes.Interface {
	t.Helper()
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}}
	client, err := kubernetes.NewForConfig(c)
	require.NoError(t, err)
	return client
}

func TestWithoutForward(t *testing.T) {
	kubeadmCorefile := `.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
    }
    loop
}
`
	testCases := map[string]struct {
		in, want    string
		wantChanged bool
	}{
		"kubeadm's block": {
			in: kubeadmCorefile, wantChanged: true,
			want: strings.Replace(kubeadmCorefile, "    forward . /etc/resolv.conf {\n       max_concurrent 1000\n    }\n", "", 1),
		},
		"one-line directive": {in: ".:53 {\n    forward . 8.8.8.8\n    loop\n}\n", want: ".:53 {\n    loop\n}\n", wantChanged: true},
		"none":               {in: ".:53 {\n    loop\n}\n", want: ".:53 {\n    loop\n}\n"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			got, changed := withoutForward(tc.in)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.wantChanged, changed)
		})
	}
}

// can asks the API server whether the client may do what ("<verb> <resource>[/<subresource>][/<name>]" in
// kube-system, or cluster-wide for nodes and kubernetesupgrades).
func can(ctx context.Context, t *testing.T, client kubernetes.Interface, what string) bool {
	t.Helper()
	verb, rest, _ := strings.Cut(what, " ")
	parts := strings.Split(rest, "/")
	attrs := &authorizationv1.ResourceAttributes{Verb: verb, Resource: parts[0], Namespace: Namespace}
	switch parts[0] {
	case "daemonsets":
		attrs.Group = "apps"
	case "kubernetesupgrades":
		attrs.Group, attrs.Namespace = v1alpha1.GroupVersion.Group, ""
	case "nodes":
		attrs.Namespace = ""
	}
	for _, p := range parts[1:] {
		if p == "eviction" || p == "status" {
			attrs.Subresource = p
		} else {
			attrs.Name = p
		}
	}
	review, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attrs},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	return review.Status.Allowed
}
