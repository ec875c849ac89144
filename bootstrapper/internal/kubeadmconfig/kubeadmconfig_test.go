package kubeadmconfig

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/kubetest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testToken = "abcdef.0123456789abcdef"
	testHash  = "sha256:8b1a9953c4611296a827abf8c47804d7e6c49c6b2f1d0e5b0c3c8d8f3a5b6c7d"
)

func initInput() Init {
	return Init{
		Node:              Node{Name: "control-plane-0", IP: netip.MustParseAddr("10.42.0.2")},
		KubernetesVersion: "v1.33.13",
		ClusterName:       "mini",
		CertSANs:          []string{"10.42.0.2", "cluster.example.com", "192.0.2.1"},
		BootstrapToken:    testToken,
	}
}

func joinInput(controlPlane bool) Join {
	return Join{
		Node:              Node{Name: "worker-0", IP: netip.MustParseAddr("10.42.0.3")},
		APIServerEndpoint: "10.42.0.2:6443",
		Token:             testToken,
		CACertHash:        testHash,
		ControlPlane:      controlPlane,
	}
}

func TestGolden(t *testing.T) {
	testCases := map[string]func() ([]byte, error){
		"init.yaml": func() ([]byte, error) { return GenerateInit(initInput()) },
		"init-no-addons-cgroup-root.yaml": func() ([]byte, error) {
			in := initInput()
			in.DisableKubeProxy, in.DisableCoreDNS = true, true
			in.Node.CgroupRoot = "/constellation-control-plane-0"
			in.Node.CRISocket = "unix:///run/node/containerd.sock"
			in.ControlPlaneEndpoint = "cluster.example.com"
			in.ImageRepository = "registry.local/k8s"
			in.PodSubnet, in.ServiceSubnet = "10.100.0.0/16", "10.200.0.0/16"
			return GenerateInit(in)
		},
		"join-worker.yaml":        func() ([]byte, error) { return GenerateJoin(joinInput(false)) },
		"join-control-plane.yaml": func() ([]byte, error) { return GenerateJoin(joinInput(true)) },
	}
	for name, generate := range testCases {
		t.Run(name, func(t *testing.T) {
			got, err := generate()
			require.NoError(t, err)
			golden := filepath.Join("testdata", name)
			if *update {
				require.NoError(t, os.WriteFile(golden, got, 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "run go test with -update to create the golden file")
			assert.Equal(t, string(want), string(got))

			// The generator is deterministic.
			again, err := generate()
			require.NoError(t, err)
			assert.Equal(t, got, again)
		})
	}
}

// TestKubeadmValidates runs the real kubeadm's `config validate` on every golden file: the configuration is
// written with kubeadm's own types, and this proves that kubeadm of the pinned version accepts it.
func TestKubeadmValidates(t *testing.T) {
	kubeadm := filepath.Join(kubetest.BinDir(), "kubeadm")
	if _, err := os.Stat(kubeadm); err != nil {
		msg := "kubeadm is missing from " + kubetest.BinDir() + "; build it with `bazel/kubernetes/build.sh kubeadm` (or set CONSTELLATION_KUBE_BIN)"
		testenv.SkipOrFail(t, msg)
	}
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, kubeadm, "config", "validate", "--config", f).CombinedOutput()
			require.NoError(t, err, "kubeadm config validate:\n%s", out)
			assert.Contains(t, string(out), "ok")
		})
	}
	// And it refuses a broken one, so the check above means something.
	broken := filepath.Join(t.TempDir(), "broken.yaml")
	require.NoError(t, os.WriteFile(broken, []byte("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nnodeRegistration:\n  nmae: x\n"), 0o600))
	out, err := exec.Command(kubeadm, "config", "validate", "--config", broken).CombinedOutput()
	require.Error(t, err, "kubeadm accepted a misspelt field:\n%s", out)
}

func TestGenerateInitRefusals(t *testing.T) {
	testCases := map[string]struct {
		edit    func(*Init)
		wantErr []string
	}{
		"no node name":        {edit: func(c *Init) { c.Node.Name = "" }, wantErr: []string{"node name"}},
		"bad node name":       {edit: func(c *Init) { c.Node.Name = "Node_1" }, wantErr: []string{"node name"}},
		"no IP":               {edit: func(c *Init) { c.Node.IP = netip.Addr{} }, wantErr: []string{"node IP"}},
		"unspecified IP":      {edit: func(c *Init) { c.Node.IP = netip.MustParseAddr("0.0.0.0") }, wantErr: []string{"node IP"}},
		"minor version":       {edit: func(c *Init) { c.KubernetesVersion = "v1.33" }, wantErr: []string{"kubernetes version"}},
		"bad cluster name":    {edit: func(c *Init) { c.ClusterName = "my cluster" }, wantErr: []string{"cluster name"}},
		"bad SAN":             {edit: func(c *Init) { c.CertSANs = []string{"ok.example", "not a name"} }, wantErr: []string{"SAN", "not a name"}},
		"bad endpoint":        {edit: func(c *Init) { c.ControlPlaneEndpoint = "bad host:6443" }, wantErr: []string{"control plane endpoint"}},
		"bad endpoint port":   {edit: func(c *Init) { c.ControlPlaneEndpoint = "10.0.0.1:99999" }, wantErr: []string{"bad port"}},
		"bad pod subnet":      {edit: func(c *Init) { c.PodSubnet = "10.244.0.0" }, wantErr: []string{"pod subnet"}},
		"bad service subnet":  {edit: func(c *Init) { c.ServiceSubnet = "x" }, wantErr: []string{"service subnet"}},
		"bad token":           {edit: func(c *Init) { c.BootstrapToken = "abc.def" }, wantErr: []string{"bootstrap token"}},
		"every error at once": {edit: func(c *Init) { c.Node.Name, c.KubernetesVersion = "", "1.33" }, wantErr: []string{"node name", "kubernetes version"}},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			in := initInput()
			tc.edit(&in)
			_, err := GenerateInit(in)
			require.Error(t, err)
			for _, want := range tc.wantErr {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestGenerateJoinRefusals(t *testing.T) {
	testCases := map[string]struct {
		edit    func(*Join)
		wantErr string
	}{
		"no endpoint port": {edit: func(c *Join) { c.APIServerEndpoint = "10.42.0.2" }, wantErr: "API server endpoint"},
		"bad endpoint":     {edit: func(c *Join) { c.APIServerEndpoint = "a b:6443" }, wantErr: "API server endpoint"},
		"bad token":        {edit: func(c *Join) { c.Token = "ABCDEF.0123456789abcdef" }, wantErr: "bootstrap token"},
		"bad hash":         {edit: func(c *Join) { c.CACertHash = "sha256:abc" }, wantErr: "CA certificate hash"},
		"no hash":          {edit: func(c *Join) { c.CACertHash = "" }, wantErr: "CA certificate hash"},
		"bad node":         {edit: func(c *Join) { c.Node.Name = "-x" }, wantErr: "node name"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			in := joinInput(false)
			tc.edit(&in)
			_, err := GenerateJoin(in)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestGenerateToken(t *testing.T) {
	a, err := GenerateToken()
	require.NoError(t, err)
	b, err := GenerateToken()
	require.NoError(t, err)
	assert.NotEqual(t, a, b)
	in := initInput()
	in.BootstrapToken = a
	_, err = GenerateInit(in)
	require.NoError(t, err)
}
