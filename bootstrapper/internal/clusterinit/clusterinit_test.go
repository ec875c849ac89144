package clusterinit

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/constellation-go/constellation/bootstrapper/internal/deploy"
	"github.com/constellation-go/constellation/bootstrapper/internal/initserver"
	"github.com/constellation-go/constellation/bootstrapper/internal/kubeadmconfig"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/kubetest"
	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions/components"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(localkms.Drainer))
}

const diskUUID = "00000000-0000-0000-0000-000000000001"

type fakeDisk struct {
	key       []byte
	uuidErr   error
	unlockErr error
	// setUp: the disk was unlocked in an earlier boot; member: that boot completed its init.
	setUp, member bool
	markErr       error
	// wrapped is the wrapped key kept beside the disk (user-managed keys).
	wrapped []byte
}

func (d *fakeDisk) WrappedKey() ([]byte, error) { return d.wrapped, nil }
func (d *fakeDisk) SaveWrappedKey(blob []byte) error {
	d.wrapped = blob
	return nil
}

func (d *fakeDisk) Initialized() bool { return d.setUp }
func (d *fakeDisk) Member() bool      { return d.member }
func (d *fakeDisk) MarkMember() error {
	if d.markErr != nil {
		return d.markErr
	}
	d.member = true
	return nil
}

func (d *fakeDisk) UUID() (string, error) { return diskUUID, d.uuidErr }
func (d *fakeDisk) Unlock(key []byte) error {
	d.key = key
	return d.unlockErr
}

type fakeInstaller struct {
	got []*components.Component
	err error
}

func (f *fakeInstaller) Install(_ context.Context, comps []*components.Component) error {
	f.got = comps
	return f.err
}

// fakeKubeadm does what kubeadm init leaves behind that the initializer uses: the admin kubeconfig and the
// bootstrap token from the configuration, in a real API server.
type fakeKubeadm struct {
	config     []byte
	adminPath  string
	kubeconfig []byte
	client     kubernetes.Interface
	err        error
	resets     int
	resetErr   error
}

func (f *fakeKubeadm) Reset(context.Context) error {
	f.resets++
	return f.resetErr
}

var tokenRe = regexp.MustCompile(`token: ([a-z0-9]{6})\.([a-z0-9]{16})`)

func (f *fakeKubeadm) Init(ctx context.Context, config []byte) error {
	f.config = config
	if f.err != nil {
		return f.err
	}
	if f.client != nil {
		m := tokenRe.FindSubmatch(config)
		if m == nil {
			return errors.New("no token in the configuration")
		}
		_, err := f.client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: bootstraputil.BootstrapTokenSecretName(string(m[1]))},
			Type:       corev1.SecretType(bootstrapapi.SecretTypeBootstrapToken),
			StringData: map[string]string{bootstrapapi.BootstrapTokenIDKey: string(m[1]), bootstrapapi.BootstrapTokenSecretKey: string(m[2])},
		}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
	}
	return os.WriteFile(f.adminPath, f.kubeconfig, 0o600)
}

func pcrs() (map[uint32][]byte, error) {
	out := map[uint32][]byte{}
	for _, idx := range []uint32{4, 9, 11, 12, 13, 15} {
		out[idx] = bytes.Repeat([]byte{byte(idx)}, 32)
	}
	return out, nil
}

func testConfig(t *testing.T) Config {
	t.Helper()
	return Config{
		Node:            kubeadmconfig.Node{Name: "control-plane-0", IP: netip.MustParseAddr("10.42.0.2")},
		Variant:         variant.QEMUVTPM.String(),
		TPMAddress:      "swtpm:/run/constellation/vtpm/sock",
		EventLogPath:    "/run/constellation/eventlog/binary_bios_measurements",
		AdminKubeconfig: filepath.Join(t.TempDir(), "admin.conf"),
		APITimeout:      30 * time.Second,
	}
}

// testAttestation is the admin's attestation config for a node with pcrs().
func testAttestation(t *testing.T) []byte {
	t.Helper()
	values, _ := pcrs()
	m := measurements.M{}
	for idx, v := range values {
		m[idx] = measurements.Measurement{Expected: v}
	}
	m[measurements.PCRClusterID] = measurements.Measurement{Expected: measurements.Zero}
	raw, err := yaml.Marshal(config.AttestationConfig{Variant: variant.QEMUVTPM.String(), Measurements: m, PlatformCA: string(vtpmtest.PlatformCA(t).CertificatePEM())})
	require.NoError(t, err)
	return raw
}

func testRequest(t *testing.T) initserver.Request {
	m := cryptotest.MasterSecret()
	return initserver.Request{
		AttestationConfig: testAttestation(t),
		MasterSecret:      *m,
		KubernetesVersion: "v1.33.13",
		ClusterName:       "mini",
		APIServerCertSANs: []string{"203.0.113.7"},
		KMSURI:            "kms://cluster-kms",
		Components: []*components.Component{{
			Url: "http://10.42.0.1:8080/v1.33.13/kubeadm", Hash: "sha256:" + string(bytes.Repeat([]byte("a"), 64)),
			InstallPath: "/var/lib/constellation/bin/kubeadm", Name: "kubeadm", Mode: 0o755,
		}},
	}
}

func TestInitAgainstAPIServer(t *testing.T) {
	testCases := map[string]struct {
		disk       *fakeDisk
		wantSteps  []string
		wantResets int
	}{
		"a new disk": {
			disk:      &fakeDisk{},
			wantSteps: []string{"state-disk", "install", "kubeadm-init", "wait-api", "deploy", "done"},
		},
		// The node lost power during an earlier init: what that left is undone, the init runs again.
		"a disk of a cut-off init": {
			disk:       &fakeDisk{setUp: true},
			wantSteps:  []string{"state-disk", "install", "reset", "kubeadm-init", "wait-api", "deploy", "done"},
			wantResets: 1,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			testInitAgainstAPIServer(t, tc.disk, tc.wantSteps, tc.wantResets)
		})
	}
}

func testInitAgainstAPIServer(t *testing.T, disk *fakeDisk, wantSteps []string, wantResets int) {
	cluster := kubetest.Start(t)
	cfg := testConfig(t)
	installer := &fakeInstaller{}
	kubeadm := &fakeKubeadm{adminPath: cfg.AdminKubeconfig, kubeconfig: cluster.Kubeconfig, client: cluster.Client}
	init := New(cfg, Dependencies{Disk: disk, Installer: installer, Kubeadm: kubeadm, PCRs: pcrs}, slog.New(slog.DiscardHandler))

	req := testRequest(t)
	require.NoError(t, init.Validate(req))
	var steps []string
	kubeconfig, err := init.Init(context.Background(), req, func(step, _ string) { steps = append(steps, step) })
	require.NoError(t, err)
	assert.Equal(t, cluster.Kubeconfig, kubeconfig)
	assert.Equal(t, wantSteps, steps)
	assert.Equal(t, wantResets, kubeadm.resets)
	assert.True(t, disk.member, "the disk records the completed init")

	// The state disk key is the one the KeyService gives for this disk.
	want, err := crypto.DeriveKey(req.MasterSecret.Key, req.MasterSecret.Salt, diskUUID, 64)
	require.NoError(t, err)
	assert.Equal(t, want, disk.key)
	assert.Equal(t, req.Components, installer.got)

	// kubeadm got this node's configuration.
	for _, s := range []string{"advertiseAddress: 10.42.0.2", "kubernetesVersion: v1.33.13", "203.0.113.7", "clusterName: mini", "cgroupDriver: cgroupfs"} {
		assert.Contains(t, string(kubeadm.config), s)
	}

	ctx := context.Background()
	secrets, err := cluster.Client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, s := range secrets.Items {
		assert.NotEqual(t, corev1.SecretType(bootstrapapi.SecretTypeBootstrapToken), s.Type, "kubeadm init's token is deleted: %s", s.Name)
	}
	ds, err := cluster.Client.AppsV1().DaemonSets(deploy.Namespace).Get(ctx, deploy.JoinServiceName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Contains(t, ds.Spec.Template.Spec.Containers[0].Args, "--api-endpoint=10.42.0.2:6443")
	cm, err := cluster.Client.CoreV1().ConfigMaps(deploy.Namespace).Get(ctx, deploy.AttestationConfigName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Contains(t, cm.Data["attestation-config.yaml"], "0909090909")
}

func TestInitFailures(t *testing.T) {
	unreachable := []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`)
	testCases := map[string]struct {
		edit     func(*Config, *Dependencies, *fakeKubeadm)
		wantErr  string
		wantStep string // the last step reported
	}{
		"PCRs unreadable": {
			edit: func(_ *Config, d *Dependencies, _ *fakeKubeadm) {
				d.PCRs = func() (map[uint32][]byte, error) { return nil, errors.New("TPM gone") }
			},
			wantErr: "TPM gone",
		},
		"PCR missing": {
			edit: func(_ *Config, d *Dependencies, _ *fakeKubeadm) {
				d.PCRs = func() (map[uint32][]byte, error) { return map[uint32][]byte{4: make([]byte, 32)}, nil }
			},
			wantErr: "this node does not show the configured measurements",
		},
		"no disk UUID": {
			edit:     func(_ *Config, d *Dependencies, _ *fakeKubeadm) { d.Disk = &fakeDisk{uuidErr: errors.New("read-only")} },
			wantErr:  "read-only",
			wantStep: "state-disk",
		},
		"wrong disk key": {
			edit: func(_ *Config, d *Dependencies, _ *fakeKubeadm) {
				d.Disk = &fakeDisk{unlockErr: errors.New("encrypted with another key")}
			},
			wantErr:  "another key",
			wantStep: "state-disk",
		},
		// A node whose init completed in an earlier boot holds the cluster: init would destroy it.
		"the disk holds an initialized cluster": {
			edit: func(_ *Config, d *Dependencies, k *fakeKubeadm) {
				d.Disk = &fakeDisk{setUp: true, member: true}
				k.err = errors.New("kubeadm must not run")
			},
			wantErr:  "run 'constellation recover'",
			wantStep: "state-disk",
		},
		"undoing a cut-off init fails": {
			edit: func(_ *Config, d *Dependencies, k *fakeKubeadm) {
				d.Disk = &fakeDisk{setUp: true}
				k.resetErr = errors.New("kubeadm reset: exit status 1")
			},
			wantErr:  "undoing the cut-off init: kubeadm reset",
			wantStep: "reset",
		},
		"install fails": {
			edit: func(_ *Config, d *Dependencies, _ *fakeKubeadm) {
				d.Installer = &fakeInstaller{err: errors.New("component kubeadm has sha256 x, expected y")}
			},
			wantErr:  "installing components: component kubeadm has sha256",
			wantStep: "install",
		},
		"kubeadm fails": {
			edit:     func(_ *Config, _ *Dependencies, k *fakeKubeadm) { k.err = errors.New("kubeadm init: exit status 1") },
			wantErr:  "exit status 1",
			wantStep: "kubeadm-init",
		},
		"no admin kubeconfig": {
			edit: func(c *Config, _ *Dependencies, _ *fakeKubeadm) {
				c.AdminKubeconfig = filepath.Join(c.AdminKubeconfig, "missing")
			},
			wantErr:  "admin kubeconfig",
			wantStep: "kubeadm-init",
		},
		"API never ready": {
			edit: func(c *Config, _ *Dependencies, k *fakeKubeadm) {
				k.kubeconfig = unreachable
				c.APITimeout = time.Second
			},
			wantErr:  "waiting for the API server",
			wantStep: "wait-api",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			k := &fakeKubeadm{adminPath: cfg.AdminKubeconfig, kubeconfig: unreachable}
			deps := Dependencies{Disk: &fakeDisk{}, Installer: &fakeInstaller{}, Kubeadm: k, PCRs: pcrs}
			tc.edit(&cfg, &deps, k)
			var last string
			_, err := New(cfg, deps, slog.New(slog.DiscardHandler)).Init(context.Background(), testRequest(t), func(step, _ string) { last = step })
			require.ErrorContains(t, err, tc.wantErr)
			assert.Equal(t, tc.wantStep, last)
		})
	}
}

func TestValidate(t *testing.T) {
	init := New(testConfig(t), Dependencies{PCRs: pcrs}, slog.New(slog.DiscardHandler))
	require.NoError(t, init.Validate(testRequest(t)))
	req := testRequest(t)
	req.ClusterName = "My Cluster"
	require.ErrorContains(t, init.Validate(req), "cluster name")
	req = testRequest(t)
	req.APIServerCertSANs = []string{"bad name"}
	require.ErrorContains(t, init.Validate(req), "SAN")
	// The attestation config is checked before the node locks itself to the cluster.
	req = testRequest(t)
	req.AttestationConfig = nil
	require.ErrorIs(t, init.Validate(req), deploy.ErrAttestationConfig)
	other := New(testConfig(t), Dependencies{PCRs: func() (map[uint32][]byte, error) {
		p, _ := pcrs()
		p[11] = bytes.Repeat([]byte{0xee}, 32)
		return p, nil
	}}, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, other.Validate(testRequest(t)), "PCR 11: configured")
}

// TestInitUserManaged: with user-managed keys the first control plane's disk key comes from the KMS (a real
// local-kms) with the credentials the admin sent: the node keeps only the wrapped key beside its disk, a
// redone init unwraps the same key, the KeyService gets the wrapped key (for the node's rejoins), its
// credentials and its access to the Secret of wrapped keys. The KMS down: nothing is unlocked, and the
// error names the KMS.
func TestInitUserManaged(t *testing.T) {
	ctx := context.Background()
	kmsSrv, err := localkms.Start("127.0.0.1:0", t.TempDir(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { _ = kmsSrv.Close() })
	keyID, err := localkms.EnsureKey(ctx, kmsSrv.Endpoint(), localkms.DefaultAlias)
	require.NoError(t, err)
	cluster := kubetest.Start(t)
	cfg := testConfig(t)
	req := testRequest(t)
	req.KMSURI = kmsuri.AWSKMSURI(localkms.Region, localkms.DefaultAlias, kmsSrv.Endpoint())
	req.KMSCredentials = &awskms.Credentials{AccessKeyID: "AKID", SecretAccessKey: "top-secret"}

	initOn := func(disk *fakeDisk) error {
		kubeadm := &fakeKubeadm{adminPath: cfg.AdminKubeconfig, kubeconfig: cluster.Kubeconfig, client: cluster.Client}
		init := New(cfg, Dependencies{Disk: disk, Installer: &fakeInstaller{}, Kubeadm: kubeadm, PCRs: pcrs}, slog.New(slog.DiscardHandler))
		require.NoError(t, init.Validate(req))
		_, err := init.Init(ctx, req, func(string, string) {})
		return err
	}
	disk := &fakeDisk{}
	require.NoError(t, initOn(disk))
	require.NotEmpty(t, disk.wrapped, "the wrapped key is kept beside the disk")
	require.Len(t, disk.key, 64)
	derived, err := crypto.DeriveKey(req.MasterSecret.Key, req.MasterSecret.Salt, diskUUID, 64)
	require.NoError(t, err)
	assert.NotEqual(t, derived, disk.key, "not derived from the master secret")
	got, err := awskms.Unwrap(ctx, localkms.Client(kmsSrv.Endpoint()), keyID, diskUUID, 64, disk.wrapped)
	require.NoError(t, err)
	assert.Equal(t, disk.key, got, "the KMS key unwraps it")

	// The KeyService hands out the same key for this disk, its credentials and access are in place.
	wrappedKeys, err := cluster.Client.CoreV1().Secrets(deploy.Namespace).Get(ctx, awskms.DefaultSecret, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, disk.wrapped, wrappedKeys.Data[diskUUID+".64"])
	creds, err := cluster.Client.CoreV1().Secrets(deploy.Namespace).Get(ctx, deploy.KMSCredentialsName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "top-secret", string(creds.Data["AWS_SECRET_ACCESS_KEY"]))
	ds, err := cluster.Client.AppsV1().DaemonSets(deploy.Namespace).Get(ctx, deploy.KeyServiceName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, deploy.KeyServiceName, ds.Spec.Template.Spec.ServiceAccountName)
	assert.Contains(t, ds.Spec.Template.Spec.Containers[0].Args, "--kms-uri="+req.KMSURI)
	for _, env := range ds.Spec.Template.Spec.Containers[0].Env {
		assert.NotContains(t, env.Value, "top-secret", "credentials only through the Secret")
	}

	// An init cut off and redone on the same disk unwraps the same key.
	redo := &fakeDisk{setUp: true, wrapped: disk.wrapped}
	require.NoError(t, initOn(redo))
	assert.Equal(t, disk.key, redo.key)

	// The KMS down: nothing unlocked, the KMS named.
	require.NoError(t, kmsSrv.Close())
	down := &fakeDisk{}
	err = initOn(down)
	require.ErrorContains(t, err, "getting the state disk key: aws-kms: the KMS (key alias/constellation) did not generate data key "+diskUUID)
	assert.Nil(t, down.key, "the disk stays locked")
	assert.Nil(t, down.wrapped)
}
