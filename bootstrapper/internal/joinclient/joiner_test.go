package joinclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/constellation-go/constellation/bootstrapper/internal/kubelet"
	"github.com/constellation-go/constellation/bootstrapper/internal/metadata"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

type recordingDisk struct {
	key     []byte
	err     error
	wrapped []byte
}

func (d *recordingDisk) SaveWrappedKey(blob []byte) error {
	d.wrapped = blob
	return nil
}

func (d *recordingDisk) Unlock(key []byte) error {
	d.key = key
	return d.err
}

type recordingInstaller struct {
	got []*components.Component
	err error
}

func (r *recordingInstaller) Install(_ context.Context, c []*components.Component) error {
	r.got = c
	return r.err
}

type recordingKubeadm struct {
	config []byte
	err    error
	// seen records whether the kubelet's kubeconfig existed when kubeadm ran.
	seen  bool
	paths kubelet.Paths
	// resets counts Reset's calls.
	resets int
}

func (r *recordingKubeadm) Reset(context.Context) error {
	r.resets++
	return nil
}

func (r *recordingKubeadm) Join(_ context.Context, config []byte) error {
	r.config = config
	_, err := os.Stat(r.paths.Path(kubelet.KubeconfigFile))
	r.seen = err == nil
	return r.err
}

// signedTicket returns a ticket whose kubelet certificate is signed for key.
func signedTicket(t *testing.T, key *ecdsa.PrivateKey) *joinproto.IssueJoinTicketResponse {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	cert, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject:   pkix.Name{CommonName: "system:node:worker-0", Organization: []string{"system:nodes"}},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	var files []*joinproto.ControlPlaneCertOrKey
	for _, name := range joinproto.ControlPlaneFiles {
		files = append(files, &joinproto.ControlPlaneCertOrKey{Name: name, Data: []byte("content of " + name)})
	}
	return &joinproto.IssueJoinTicketResponse{
		StateDiskKey: bytes.Repeat([]byte{0x33}, 64), KubeletCert: cert,
		ApiServerEndpoint: "10.42.0.2:6443", Token: "abcdef.0123456789abcdef",
		DiscoveryTokenCaCertHash: "sha256:" + strings.Repeat("ab", 32),
		ControlPlaneFiles:        files,
		KubernetesComponents:     []*components.Component{{Name: "kubelet", Url: "http://10.42.0.1:8080/kubelet", Hash: "sha256:x", InstallPath: "/var/lib/constellation/bin/kubelet"}},
	}
}

func newJoiner(t *testing.T) (*NodeJoiner, *recordingDisk, *recordingInstaller, *recordingKubeadm) {
	t.Helper()
	paths := kubelet.Paths{Root: t.TempDir()}
	d, i, k := &recordingDisk{}, &recordingInstaller{}, &recordingKubeadm{paths: paths}
	return &NodeJoiner{Disk: d, Installer: i, Kubeadm: k, Kubelet: paths}, d, i, k
}

func TestNodeJoinerWorker(t *testing.T) {
	j, disk, inst, kubeadm := newJoiner(t)
	key, _, err := kubelet.NewClientKey("worker-0")
	require.NoError(t, err)
	ticket := signedTicket(t, key)
	self := metadata.Instance{Name: "worker-0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.3")}
	require.NoError(t, j.Join(context.Background(), ticket, self, key))

	assert.Equal(t, ticket.GetStateDiskKey(), disk.key)
	assert.Nil(t, disk.wrapped, "constellation-managed keys: nothing kept beside the disk")
	assert.Equal(t, ticket.GetKubernetesComponents(), inst.got)
	assert.True(t, kubeadm.seen, "the kubelet's kubeconfig is in place before kubeadm join")
	for _, s := range []string{"kind: JoinConfiguration", "apiServerEndpoint: 10.42.0.2:6443", "token: abcdef.0123456789abcdef",
		"sha256:" + strings.Repeat("ab", 32), "name: worker-0", "value: 10.42.0.3", "FileAvailable--etc-kubernetes-kubelet.conf"} {
		assert.Contains(t, string(kubeadm.config), s)
	}
	assert.NotContains(t, string(kubeadm.config), "controlPlane:")
	_, err = os.Stat(j.Kubelet.Path(PKIDir))
	assert.ErrorIs(t, err, os.ErrNotExist, "a worker gets no CA keys")
	cfg, err := clientcmd.LoadFromFile(j.Kubelet.Path(kubelet.KubeconfigFile))
	require.NoError(t, err)
	assert.Equal(t, "https://10.42.0.2:6443", cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster].Server)
}

func TestNodeJoinerControlPlane(t *testing.T) {
	j, disk, _, kubeadm := newJoiner(t)
	key, _, err := kubelet.NewClientKey("control-plane-1")
	require.NoError(t, err)
	self := metadata.Instance{Name: "control-plane-1", Role: role.ControlPlane, IP: netip.MustParseAddr("10.42.0.4")}
	ticket := signedTicket(t, key)
	ticket.WrappedStateDiskKey = []byte("wrapped by the KMS")
	require.NoError(t, j.Join(context.Background(), ticket, self, key))
	assert.Equal(t, ticket.GetWrappedStateDiskKey(), disk.wrapped, "user-managed keys: the blob the admin recovers with is kept")
	assert.Contains(t, string(kubeadm.config), "controlPlane:")
	assert.Contains(t, string(kubeadm.config), "advertiseAddress: 10.42.0.4")
	for _, name := range joinproto.ControlPlaneFiles {
		path := filepath.Join(j.Kubelet.Path(PKIDir), name)
		data, err := os.ReadFile(path)
		require.NoError(t, err, name)
		assert.Equal(t, "content of "+name, string(data))
		fi, err := os.Stat(path)
		require.NoError(t, err)
		if strings.HasSuffix(name, ".key") {
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), name)
		}
	}
}

func TestNodeJoinerRefusals(t *testing.T) {
	worker := metadata.Instance{Name: "worker-0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.3")}
	controlPlane := metadata.Instance{Name: "control-plane-1", Role: role.ControlPlane, IP: netip.MustParseAddr("10.42.0.4")}
	testCases := map[string]struct {
		self      metadata.Instance
		edit      func(*joinproto.IssueJoinTicketResponse, *NodeJoiner)
		wantErr   string
		wantNoRun bool // nothing was touched
	}{
		"short disk key": {self: worker, edit: func(tk *joinproto.IssueJoinTicketResponse, _ *NodeJoiner) { tk.StateDiskKey = tk.StateDiskKey[:32] },
			wantErr: "state disk key", wantNoRun: true},
		"bad token": {self: worker, edit: func(tk *joinproto.IssueJoinTicketResponse, _ *NodeJoiner) { tk.Token = "x" },
			wantErr: "bootstrap token", wantNoRun: true},
		"bad endpoint": {self: worker, edit: func(tk *joinproto.IssueJoinTicketResponse, _ *NodeJoiner) { tk.ApiServerEndpoint = "10.42.0.2" },
			wantErr: "API server endpoint", wantNoRun: true},
		"control plane without files": {self: controlPlane, edit: func(tk *joinproto.IssueJoinTicketResponse, _ *NodeJoiner) { tk.ControlPlaneFiles = nil },
			wantErr: "no control-plane certificates", wantNoRun: true},
		"file outside the PKI": {self: controlPlane, edit: func(tk *joinproto.IssueJoinTicketResponse, _ *NodeJoiner) {
			tk.ControlPlaneFiles = append(tk.ControlPlaneFiles, &joinproto.ControlPlaneCertOrKey{Name: "../../../etc/shadow", Data: []byte("x")})
		}, wantErr: "unexpected control-plane file"},
		"certificate for another key": {self: worker, edit: func(tk *joinproto.IssueJoinTicketResponse, _ *NodeJoiner) {
			other, _, _ := kubelet.NewClientKey("worker-0")
			tk.KubeletCert = signedTicket(t, other).KubeletCert
		}, wantErr: "not for this node's key"},
		"wrong disk key": {self: worker, edit: func(_ *joinproto.IssueJoinTicketResponse, j *NodeJoiner) {
			j.Disk = &recordingDisk{err: errors.New("encrypted with another key")}
		}, wantErr: "another key"},
		"install fails": {self: worker, edit: func(_ *joinproto.IssueJoinTicketResponse, j *NodeJoiner) {
			j.Installer = &recordingInstaller{err: errors.New("sha256 mismatch")}
		}, wantErr: "installing components: sha256 mismatch"},
		"kubeadm fails": {self: worker, edit: func(_ *joinproto.IssueJoinTicketResponse, j *NodeJoiner) {
			j.Kubeadm = &recordingKubeadm{err: errors.New("kubeadm join: exit status 1")}
		}, wantErr: "exit status 1"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			j, disk, _, kubeadm := newJoiner(t)
			key, _, err := kubelet.NewClientKey(tc.self.Name)
			require.NoError(t, err)
			ticket := signedTicket(t, key)
			tc.edit(ticket, j)
			err = j.Join(context.Background(), ticket, tc.self, key)
			require.ErrorContains(t, err, tc.wantErr)
			if tc.wantNoRun {
				assert.Nil(t, disk.key, "the disk was not touched")
			}
			assert.Nil(t, kubeadm.config, "kubeadm did not run")
			_, err = os.Stat(filepath.Join(j.Kubelet.Root, "etc/shadow"))
			assert.ErrorIs(t, err, os.ErrNotExist)
		})
	}
}
