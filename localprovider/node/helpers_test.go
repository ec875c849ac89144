package node

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/remains"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/localprovider/localtest"
	"github.com/constellation-go/constellation/localprovider/network"
)

// testCluster is a network and a state root for a test's nodes; when the test ends, every node is
// destroyed, then the network, and nothing may remain.
type testCluster struct {
	net      *network.Network
	dir      string
	imageDir string
	nodes    map[string]Config
	cgroups  map[string][]string
	mounts   []string
	ca       *manufacturer.CA
}

func newTestCluster(t *testing.T, imageDir string) *testCluster {
	t.Helper()
	testenv.NeedRoot(t)
	c := &testCluster{dir: testenv.TempDir(t), imageDir: imageDir, nodes: map[string]Config{}, cgroups: map[string][]string{}}
	c.mounts = remains.Mounts()
	var err error
	c.ca, err = manufacturer.NewCA("node test platform CA")
	require.NoError(t, err)
	cluster := localtest.ClusterName(t)
	for range 10 {
		n, err := network.New(network.Config{Cluster: cluster, BridgeCIDR: localtest.BridgeCIDR(t)})
		require.NoError(t, err)
		if err := n.Create(); errors.Is(err, network.ErrConflict) {
			continue
		} else {
			require.NoError(t, err)
		}
		c.net = n
		break
	}
	require.NotNil(t, c.net, errNoFreePrefix)
	t.Cleanup(func() { c.destroy(t) })
	return c
}

func (c *testCluster) config(name string, index int) Config {
	cfg := Config{
		Cluster: c.net.Config().Cluster, Name: name, Index: index, Network: c.net, ImageDir: c.imageDir,
		StateDir: filepath.Join(c.dir, name), StateDiskSize: 64 << 20,
		MetadataURL: "http://" + net.JoinHostPort(c.net.BridgeAddr().String(), "9080"),
		StopTimeout: 20 * time.Second, PlatformCA: c.ca,
	}
	if testing.Verbose() {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	c.nodes[name] = cfg
	return cfg
}

// start starts a node and records its cgroups for the leak check.
func (c *testCluster) start(t *testing.T, cfg Config) *Node {
	t.Helper()
	n, err := Start(context.Background(), cfg)
	if err != nil {
		dumpLogs(t, cfg.StateDir)
	}
	require.NoError(t, err)
	st, err := readState(layout{cfg.StateDir})
	require.NoError(t, err)
	for _, dir := range st.Cgroups {
		c.cgroups[cfg.Name] = append(c.cgroups[cfg.Name], dir)
	}
	t.Logf("node %s started: %s", cfg.Name, n.Timings)
	return n
}

func dumpLogs(t *testing.T, stateDir string) {
	t.Helper()
	for _, name := range []string{"init", "containerd", "bootstrapper", "swtpm"} {
		if b, err := os.ReadFile(LogFile(stateDir, name)); err == nil {
			t.Logf("%s.log:\n%s", name, b)
		}
	}
}

// destroy destroys every node and the network and checks that nothing remains.
func (c *testCluster) destroy(t *testing.T) {
	t.Helper()
	if t.Failed() {
		for _, cfg := range c.nodes {
			dumpLogs(t, cfg.StateDir)
		}
	}
	for name, cfg := range c.nodes {
		assert.NoError(t, Destroy(context.Background(), cfg), name)
	}
	assert.NoError(t, c.net.Destroy())
	for name, cfg := range c.nodes {
		assert.Empty(t, Remains(cfg.StateDir), "node %s", name)
		assert.NoDirExists(t, cfg.StateDir)
		for _, dir := range c.cgroups[name] {
			assert.NoDirExists(t, dir, "cgroup of node %s", name)
		}
	}
	left, err := network.Remains(c.net.Config().Cluster)
	assert.NoError(t, err)
	assert.Empty(t, left)
	assert.Empty(t, localtest.Eventually(10*time.Second, func() []string { return remains.LoopsBackedBy(c.dir) }), "loop devices")
	// Other tests on the machine may mount things meanwhile: only this cluster's would be leaks.
	for _, m := range remains.Mounts() {
		if !slices.Contains(c.mounts, m) && (strings.HasPrefix(m, c.dir) || strings.Contains(m, c.net.Config().Cluster)) {
			t.Errorf("mount %s left", m)
		}
	}
	assert.Empty(t, remains.ProcessesWith(c.dir+"/"))
}

// logContains waits until a node's log contains s.
func logContains(t *testing.T, stateDir, name, s string) {
	t.Helper()
	var last string
	ok := assert.Eventually(t, func() bool {
		b, _ := os.ReadFile(LogFile(stateDir, name))
		last = string(b)
		return strings.Contains(last, s)
	}, 20*time.Second, 20*time.Millisecond)
	if !ok {
		t.Logf("%s.log does not contain %q:\n%s", name, s, last)
	}
}

// mountsIn returns a node's mounts as "mount point fstype options".
func mountsIn(t *testing.T, n *Node) map[string]string {
	t.Helper()
	out, err := n.Output(context.Background(), "cat", "/proc/self/mountinfo")
	require.NoError(t, err)
	m := map[string]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			continue
		}
		m[f[4]] = f[sep+1] + " " + f[5]
	}
	return m
}
