package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/remains"
	"github.com/constellation-go/constellation/localprovider/launcher"
	"github.com/constellation-go/constellation/localprovider/localtest"
	"github.com/constellation-go/constellation/localprovider/network"
)

func TestConfig(t *testing.T) {
	n, err := network.New(network.Config{Cluster: "c", BridgeCIDR: netip.MustParsePrefix("10.42.0.0/24")})
	require.NoError(t, err)
	valid := func() Config { return Config{Cluster: "c", Name: "n", Network: n, ImageDir: "/img"} }

	cfg := valid()
	require.NoError(t, cfg.complete())
	assert.Equal(t, "/var/lib/constellation/local/c/n", cfg.StateDir)
	assert.Equal(t, DefaultSandboxImage, cfg.SandboxImage)
	assert.Equal(t, "/proc/self/exe", cfg.InitBinary)

	for name, change := range map[string]func(*Config){
		"bad node name":         func(c *Config) { c.Name = "N_1" },
		"other cluster":         func(c *Config) { c.Cluster = "d" },
		"no image":              func(c *Config) { c.ImageDir = "" },
		"comma in state dir":    func(c *Config) { c.StateDir = "/var/a,b" },
		"long socket path":      func(c *Config) { c.StateDir = "/" + strings.Repeat("x", 100) },
		"tiny state disk":       func(c *Config) { c.StateDiskSize = 1 << 20 },
		"odd sandbox image":     func(c *Config) { c.SandboxImage = "pause\"\n[x]" },
		"no network":            func(c *Config) { c.Network = nil },
		"cluster name too long": func(c *Config) { c.Cluster = strings.Repeat("c", 64) },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := valid()
			change(&cfg)
			assert.Error(t, cfg.complete())
		})
	}
}

func TestBootstrapperEnv(t *testing.T) {
	env := BootstrapperEnv("w0", netip.MustParseAddr("10.42.0.3"), netip.MustParsePrefix("10.244.1.0/24"), "http://10.42.0.1:9080", DefaultSandboxImage)
	assert.Equal(t, []string{
		"BOOTSTRAPPER_TPM=swtpm:/run/constellation/vtpm/sock",
		"BOOTSTRAPPER_EVENT_LOG=/run/constellation/eventlog/binary_bios_measurements",
		"BOOTSTRAPPER_METADATA_URL=http://10.42.0.1:9080",
		"BOOTSTRAPPER_NODE_NAME=w0",
		"BOOTSTRAPPER_NODE_IP=10.42.0.3",
		"BOOTSTRAPPER_POD_CIDR=10.244.1.0/24",
		"BOOTSTRAPPER_STATE_DIR=/var/lib/constellation/state",
		"BOOTSTRAPPER_CONTAINERD_SOCKET=/run/containerd/containerd.sock",
		"BOOTSTRAPPER_SANDBOX_IMAGE=registry.k8s.io/pause:3.10",
	}, env)
	assert.Equal(t, []string{"A=1", "B=3", "C=4"}, mergeEnv([]string{"A=1", "B=2"}, []string{"B=3", "C=4"}))
}

func TestContainerdConfig(t *testing.T) {
	c := containerdConfig("registry.k8s.io/pause:3.10")
	for _, want := range []string{
		"version = 2",
		`sandbox_image = "registry.k8s.io/pause:3.10"`,
		"restrict_oom_score_adj = true",
		`snapshotter = "overlayfs"`,
		"SystemdCgroup = false",
		`bin_dir = "/usr/lib/cni"`,
		`conf_dir = "/etc/cni/net.d"`,
		`address = "/run/containerd/containerd.sock"`,
	} {
		assert.Contains(t, c, want)
	}
}

func TestV1Hierarchies(t *testing.T) {
	hs, _, err := v1Hierarchies()
	if err != nil {
		t.Skipf("no cgroup v1 here: %v", err)
	}
	own, err := ownCgroups()
	require.NoError(t, err)
	for _, h := range hs {
		assert.NotContains(t, h.Options, "rw")
		_, ok := own[strings.Join(h.controllers, ",")]
		assert.True(t, ok, "hierarchy %s (%v) is in /proc/self/cgroup", h.Name, h.controllers)
		if strings.Contains(h.Options, "name=") && !strings.Contains(h.Options, ",") {
			t.Errorf("named hierarchy %s without none: %s", h.Name, h.Options)
		}
	}
}

// TestNode runs two nodes of the small test image through their life: what is inside, the vTPM, the
// services and their supervision, the network between them, Exec, restart, stop and destroy.
func TestNode(t *testing.T) {
	c := newTestCluster(t, newTestImage(t, imageSpec{}))
	ctx := context.Background()
	aCfg := c.config("a", 0)
	aCfg.BootstrapperArgs = []string{"--log-format=text"}
	aCfg.BootstrapperEnv = []string{"BOOTSTRAPPER_METADATA_URL=http://override", "EXTRA=1"}
	a := c.start(t, aCfg)
	b := c.start(t, c.config("b", 1))
	assert.True(t, Running(a.StateDir))
	_, err := Start(ctx, aCfg)
	assert.ErrorIs(t, err, ErrRunning)

	// Nothing of the nodes is mounted on the host while they run.
	assert.Empty(t, remains.MountsUnder(c.dir))

	// The root is the image's, the identity the node's.
	out, err := a.Output(ctx, "cat", "/etc/os-release")
	require.NoError(t, err)
	assert.Equal(t, testImageOS, string(out))
	out, err = a.Output(ctx, "cat", "/proc/sys/kernel/hostname", "/etc/hostname", "/etc/machine-id")
	require.NoError(t, err)
	assert.Equal(t, "a\na\n"+machineID(aCfg.Cluster, "a")+"\n", string(out))
	out, err = a.Output(ctx, "cat", "/etc/hosts")
	require.NoError(t, err)
	assert.Contains(t, string(out), a.Network.IP.String()+"\ta\n")
	out, err = a.Output(ctx, "cat", "/proc/1/cmdline")
	require.NoError(t, err)
	assert.Equal(t, initArg0+"\x00", string(out), "PID 1 is the init")

	// Mounts.
	m := mountsIn(t, a)
	for point, want := range map[string]string{
		"/":                              "erofs ro",
		"/etc":                           "overlay rw",
		"/var":                           "overlay rw",
		"/proc":                          "proc rw",
		"/proc/sys":                      "proc ro",
		"/proc/sys/net":                  "proc rw",
		"/proc/sys/kernel/panic_on_oops": "tmpfs rw",
		"/sys":                           "sysfs ro",
		"/sys/fs/cgroup":                 "tmpfs rw",
		"/sys/fs/cgroup/memory":          "cgroup rw",
		"/dev":                           "tmpfs rw",
		"/dev/pts":                       "devpts rw",
		"/dev/kmsg":                      "devtmpfs rw",
		"/dev/loop-control":              "devtmpfs rw",
		"/run":                           "tmpfs rw",
		"/tmp":                           "tmpfs rw",
		ContainerdRoot:                   "tmpfs rw",
		StateDiskPath:                    "ext4 rw",
		VTPMSocket:                       "* rw",
		EventLogDir:                      "* ro",
	} {
		got, ok := m[point]
		if assert.True(t, ok, "%s is not mounted in the node: %v", point, m) {
			fstype, opt := strings.Fields(want)[0], strings.Fields(want)[1]
			assert.True(t, (fstype == "*" || strings.HasPrefix(got, fstype+" ")) && strings.Contains(got, " "+opt),
				"%s: got %q, want %q", point, got, want)
		}
	}
	for point := range m {
		assert.False(t, strings.HasPrefix(point, c.dir), "host path %s visible in the node", point)
	}

	// Kernel tunables and sysctls: the node's copies, not the host's.
	hostPanic, err := os.ReadFile("/proc/sys/kernel/panic_on_oops")
	require.NoError(t, err)
	out, err = a.Output(ctx, "cat", "/proc/sys/kernel/panic_on_oops", "/proc/sys/vm/overcommit_memory")
	require.NoError(t, err)
	assert.Equal(t, "1\n1\n", string(out), "the kubelet's values")
	_, err = a.Output(ctx, "write", "/proc/sys/kernel/panic_on_oops", "0")
	require.NoError(t, err)
	after, err := os.ReadFile("/proc/sys/kernel/panic_on_oops")
	require.NoError(t, err)
	assert.Equal(t, string(hostPanic), string(after), "the host's value is untouched")
	_, err = a.Output(ctx, "write", "/proc/sys/vm/swappiness", "1")
	assert.ErrorContains(t, err, "read-only file system")
	_, err = a.Output(ctx, "write", "/proc/sys/net/ipv4/conf/all/route_localnet", "1")
	assert.NoError(t, err, "network sysctls are the node's")

	// Cgroups: the node sees its own as the root.
	out, err = a.Output(ctx, "cat", "/proc/self/cgroup")
	require.NoError(t, err)
	for line := range strings.Lines(string(out)) {
		if !strings.HasPrefix(line, "0::") {
			assert.True(t, strings.HasSuffix(strings.TrimSpace(line), ":/"), "cgroup inside the node: %q", line)
		}
	}
	out, err = a.Output(ctx, "ls", "/sys/fs/cgroup/memory")
	require.NoError(t, err)
	assert.NotContains(t, string(out), "process_api", "the host's cgroups are not visible")

	// The vTPM: booted values, as predicted, read from inside the node.
	out, err = a.Output(ctx, "pcrs", "swtpm:"+VTPMSocket, "4", "9", "11", "12")
	require.NoError(t, err)
	want := a.Prediction.PCRs(true)
	for line := range strings.Lines(string(out)) {
		var idx uint32
		var val string
		_, err := fmt.Sscan(line, &idx, &val)
		require.NoError(t, err)
		assert.Equal(t, hex.EncodeToString(want[idx]), val, "PCR %d", idx)
	}
	out, err = a.Output(ctx, "ls", EventLogDir)
	require.NoError(t, err)
	assert.Equal(t, "binary_bios_measurements\n", string(out))
	out, err = a.Output(ctx, "ls", filepath.Dir(VTPMSocket))
	require.NoError(t, err)
	assert.Equal(t, "sock\n", string(out), "only the command socket, not the control socket")

	// The services and their configuration.
	logContains(t, a.StateDir, "bootstrapper", "fake bootstrapper --log-format=text")
	logContains(t, a.StateDir, "bootstrapper", "BOOTSTRAPPER_TPM=swtpm:"+VTPMSocket)
	logContains(t, a.StateDir, "bootstrapper", "BOOTSTRAPPER_NODE_IP="+a.Network.IP.String())
	logContains(t, a.StateDir, "bootstrapper", "BOOTSTRAPPER_POD_CIDR="+a.Network.PodCIDR.String())
	logContains(t, a.StateDir, "bootstrapper", "BOOTSTRAPPER_METADATA_URL=http://override")
	logContains(t, a.StateDir, "containerd", "fake containerd --config "+ContainerdConfigPath)
	out, err = a.Output(ctx, "cat", ContainerdConfigPath)
	require.NoError(t, err)
	assert.Equal(t, containerdConfig(DefaultSandboxImage), string(out))

	// A service that dies is restarted.
	_, err = a.Output(ctx, "killall", "bootstrapper")
	require.NoError(t, err)
	logContains(t, a.StateDir, "bootstrapper", "killed by killed")
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(LogFile(a.StateDir, "bootstrapper"))
		return strings.Count(string(b), "fake bootstrapper --log-format") == 2
	}, 10*time.Second, 20*time.Millisecond, "the bootstrapper was restarted")

	// Exec: standard streams, exit codes.
	var stdout, stderr bytes.Buffer
	err = a.Exec(ctx, Cmd{Args: []string{"cat"}, Stdin: strings.NewReader("through stdin"), Stdout: &stdout, Stderr: &stderr})
	require.NoError(t, err)
	assert.Equal(t, "through stdin", stdout.String())
	_, err = a.Output(ctx, "exit", "3")
	var ee *ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 3, ee.Code)
	assert.Contains(t, string(ee.Stderr), "exiting with 3")
	_, err = a.Output(ctx, "no-such-command")
	assert.ErrorContains(t, err, "not found")
	f, err := os.CreateTemp(t.TempDir(), "out")
	require.NoError(t, err)
	require.NoError(t, a.Exec(ctx, Cmd{Args: []string{"cat", "/etc/hostname"}, Stdout: f}))
	f.Close()
	got, err := os.ReadFile(f.Name())
	require.NoError(t, err)
	assert.Equal(t, "a\n", string(got), "an *os.File is passed as it is")
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = a.Exec(cctx, Cmd{Args: []string{"sleep"}})
	cancel()
	assert.ErrorIs(t, err, context.DeadlineExceeded, "cancelling kills the command")

	// The network: the nodes reach each other from their namespaces.
	require.NoError(t, localtest.Ping(a.Network.Do, b.Network.IP))
	require.NoError(t, localtest.Ping(b.Network.Do, a.Network.IP))

	// Restart: a new boot, the state disk kept.
	_, err = a.Output(ctx, "write", StateDiskPath+"/kept", "across restarts")
	require.NoError(t, err)
	oldPID := a.InitPID
	start := time.Now()
	a, err = Restart(ctx, aCfg)
	require.NoError(t, err)
	t.Logf("restart took %s (start: %s)", time.Since(start).Round(time.Millisecond), a.Timings)
	assert.NotEqual(t, oldPID, a.InitPID)
	out, err = a.Output(ctx, "cat", StateDiskPath+"/kept")
	require.NoError(t, err)
	assert.Equal(t, "across restarts", string(out))
	out, err = a.Output(ctx, "pcrs", "swtpm:"+VTPMSocket, "11")
	require.NoError(t, err)
	assert.Equal(t, "11 "+hex.EncodeToString(want[11])+"\n", string(out), "the vTPM was power-cycled and measured afresh")

	// Stop: nothing of b runs or is mounted; its network and state stay.
	require.NoError(t, b.Stop(ctx))
	assert.Empty(t, Remains(b.StateDir))
	assert.False(t, Running(b.StateDir))
	_, err = b.Output(ctx, "cat", "/etc/hostname")
	assert.ErrorIs(t, err, ErrNotRunning)
	assert.FileExists(t, layout{b.StateDir}.stateDisk())
	require.NoError(t, Stop(ctx, b.StateDir, 0), "stopping a stopped node is fine")
	_, err = c.net.Node("b")
	assert.NoError(t, err, "b's network stays until Destroy")
	require.NoError(t, localtest.Ping(a.Network.Do, c.net.BridgeAddr()))
}

// TestStartFailures: a start that fails leaves nothing running or mounted.
func TestStartFailures(t *testing.T) {
	testCases := map[string]struct {
		spec    imageSpec
		prepare func(t *testing.T, imageDir string)
		wantErr error
		wantMsg string
	}{
		"tampered root": {
			prepare: func(t *testing.T, dir string) { flipByte(t, filepath.Join(dir, launcher.RootFile)) },
			wantErr: launcher.ErrRootMismatch,
		},
		"containerd does not come up": {
			spec:    imageSpec{containerdFails: true},
			wantMsg: "containerd did not come up",
		},
		"no image": {
			prepare: func(t *testing.T, dir string) { require.NoError(t, os.Remove(filepath.Join(dir, launcher.UKIFile))) },
			wantMsg: "constellation.efi",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			imageDir := newTestImage(t, tc.spec)
			if tc.prepare != nil {
				tc.prepare(t, imageDir)
			}
			c := newTestCluster(t, imageDir)
			old := containerdTimeout
			containerdTimeout = 2 * time.Second
			t.Cleanup(func() { containerdTimeout = old })
			cfg := c.config("a", 0)
			_, err := Start(context.Background(), cfg)
			require.Error(t, err)
			if tc.wantErr != nil {
				assert.ErrorIs(t, err, tc.wantErr)
			}
			assert.ErrorContains(t, err, tc.wantMsg)
			assert.Empty(t, Remains(cfg.StateDir))
			assert.False(t, Running(cfg.StateDir))
			assert.NoFileExists(t, layout{cfg.StateDir}.stateFile())
		})
	}
}

// TestStartCancelled: cancelling a start stops it and leaves nothing behind.
func TestStartCancelled(t *testing.T) {
	c := newTestCluster(t, newTestImage(t, imageSpec{containerdFails: true}))
	cfg := c.config("a", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Start(ctx, cfg)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 15*time.Second)
	assert.Empty(t, Remains(cfg.StateDir))
}

// TestStartedByAnotherProcess: a node outlives the process that started it (a CLI or Terraform provider
// exits after create), and another process can use and stop it.
func TestStartedByAnotherProcess(t *testing.T) {
	c := newTestCluster(t, newTestImage(t, imageSpec{}))
	cfg := c.config("a", 0)
	params, err := json.Marshal(startParams{
		Cluster: cfg.Cluster, BridgeCIDR: c.net.Config().BridgeCIDR, Name: cfg.Name, Index: cfg.Index,
		ImageDir: cfg.ImageDir, StateDir: cfg.StateDir,
	})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), startOnlyEnv+"="+string(params))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	st, err := readState(layout{cfg.StateDir})
	require.NoError(t, err)
	for _, cg := range st.Cgroups {
		c.cgroups["a"] = append(c.cgroups["a"], cg)
	}

	// The starter has exited; the node runs on.
	require.True(t, Running(cfg.StateDir))
	assert.True(t, st.Swtpm.Alive())
	ctx := context.Background()
	got, err := Output(ctx, cfg.StateDir, "cat", "/proc/sys/kernel/hostname")
	require.NoError(t, err)
	assert.Equal(t, "a\n", string(got))
	got, err = Output(ctx, cfg.StateDir, "pcrs", "swtpm:"+VTPMSocket, "11")
	require.NoError(t, err)
	assert.NotEqual(t, "11 "+strings.Repeat("0", 64)+"\n", string(got))

	require.NoError(t, Stop(ctx, cfg.StateDir, 0))
	assert.Empty(t, Remains(cfg.StateDir))
	assert.False(t, st.Swtpm.Alive())
}
