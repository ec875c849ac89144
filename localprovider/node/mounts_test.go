package node

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func testInitConfig() *initConfig {
	return &initConfig{
		Hostname: "worker-0", NodeIP: "10.42.0.3", MachineID: "0123456789abcdef0123456789abcdef",
		Rootfs: "/host/node/rootfs", Scratch: "/host/node/scratch", StateDisk: "/host/node/state.img",
		VTPMSocket: "/host/node/vtpm/tpm.sock", EventLogDir: "/host/node/eventlog",
		ControlSocket: "/host/node/init.sock", LogDir: "/host/node/logs",
		Cgroups:          []hierarchy{{Name: "memory", Options: "memory"}, {Name: "cpu,cpuacct", Options: "cpu,cpuacct"}},
		CgroupLinks:      map[string]string{"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct"},
		ContainerdConfig: "version = 2\n",
	}
}

func index(t *testing.T, steps []step, match func(step) bool, what string) int {
	t.Helper()
	i := slices.IndexFunc(steps, match)
	require.GreaterOrEqual(t, i, 0, "no step %s", what)
	return i
}

func within(path string, dirs ...string) bool {
	for _, d := range dirs {
		if path == d || strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

// TestNodeRoot checks the properties of the mount table that keep a node inside its sandbox.
func TestNodeRoot(t *testing.T) {
	c := testInitConfig()
	steps := nodeRoot(c, []string{"null", "loop0"})
	R := func(p string) string { return filepath.Join(c.Rootfs, p) }

	t.Run("nothing is made outside the node's root and scratch space", func(t *testing.T) {
		for i, s := range steps {
			if i == 0 {
				assert.Equal(t, step{kind: stepMount, target: "/", flags: unix.MS_REC | unix.MS_PRIVATE}, s, "first, nothing propagates to the host")
				continue
			}
			assert.True(t, within(s.target, c.Rootfs, c.Scratch), "step %d targets %s", i, s.target)
		}
	})

	t.Run("the only host paths the node sees", func(t *testing.T) {
		var host []string
		for _, s := range steps {
			if (s.kind == stepMount || s.kind == stepStateDisk) && strings.HasPrefix(s.source, "/") && !within(s.source, c.Rootfs, c.Scratch) {
				host = append(host, s.source)
			}
		}
		assert.ElementsMatch(t, []string{c.StateDisk, c.VTPMSocket, c.EventLogDir, "/dev/null", "/dev/loop0"}, host,
			"in particular not the vTPM's control socket, which resets PCRs")
	})

	t.Run("/proc/sys is read-only but for the network namespace and the kubelet's tunables", func(t *testing.T) {
		ro := index(t, steps, func(s step) bool {
			return s.target == R("proc/sys") && s.flags&unix.MS_REMOUNT != 0 && s.flags&unix.MS_RDONLY != 0
		}, "remounting /proc/sys read-only")
		for key := range kubeletTunables {
			src := filepath.Join(c.Scratch, "sysctl", strings.ReplaceAll(key, "/", "."))
			w := index(t, steps, func(s step) bool { return s.kind == stepWrite && s.target == src }, "writing "+key)
			b := index(t, steps, func(s step) bool { return s.kind == stepMount && s.source == src && s.target == R("proc/sys/"+key) }, "binding "+key)
			assert.Less(t, w, b)
			assert.Less(t, b, ro, "%s is bound before /proc/sys turns read-only", key)
		}
		net := index(t, steps, func(s step) bool { return s.target == R("proc/sys/net") && s.flags == unix.MS_BIND }, "binding /proc/sys/net")
		assert.Less(t, net, ro)
	})

	t.Run("the event log is read-only", func(t *testing.T) {
		bind := index(t, steps, func(s step) bool { return s.source == c.EventLogDir }, "binding the event log")
		ro := index(t, steps, func(s step) bool {
			return s.target == R(EventLogDir) && s.flags&unix.MS_REMOUNT != 0 && s.flags&unix.MS_RDONLY != 0
		}, "remounting the event log read-only")
		assert.Less(t, bind, ro)
	})

	t.Run("/sys is read-only, with the node's cgroups", func(t *testing.T) {
		sys := index(t, steps, func(s step) bool { return s.fstype == "sysfs" }, "mounting sysfs")
		assert.NotZero(t, steps[sys].flags&unix.MS_RDONLY)
		for _, h := range c.Cgroups {
			index(t, steps, func(s step) bool {
				return s.fstype == "cgroup" && s.data == h.Options && s.target == R("sys/fs/cgroup/"+h.Name)
			}, "mounting "+h.Name)
		}
		index(t, steps, func(s step) bool {
			return s.kind == stepSymlink && s.target == R("sys/fs/cgroup/cpu") && s.source == "cpu,cpuacct"
		}, "linking cpu")
	})

	t.Run("identity files", func(t *testing.T) {
		hosts := index(t, steps, func(s step) bool { return s.kind == stepWrite && s.target == R("etc/hosts") }, "writing /etc/hosts")
		assert.Contains(t, steps[hosts].data, "10.42.0.3\tworker-0\n")
		index(t, steps, func(s step) bool {
			return s.kind == stepWrite && s.target == R("etc/hostname") && s.data == "worker-0\n"
		}, "writing /etc/hostname")
		index(t, steps, func(s step) bool {
			return s.kind == stepWrite && s.target == R(ContainerdConfigPath) && s.data == c.ContainerdConfig
		}, "writing containerd's configuration")
	})

	t.Run("a bind-mounted file gets a mount point first", func(t *testing.T) {
		for i, s := range steps {
			if s.kind == stepMount && s.flags == unix.MS_BIND && (s.source == c.VTPMSocket || strings.HasPrefix(s.source, "/dev/")) {
				require.Positive(t, i)
				assert.Equal(t, step{kind: stepTouch, target: s.target}, steps[i-1])
			}
		}
	})
}

// TestApplyStops: apply stops at the first failing step and says what it was.
func TestApplyStops(t *testing.T) {
	dir := t.TempDir()
	err := apply([]step{
		{kind: stepMkdir, target: filepath.Join(dir, "a"), mode: 0o755},
		{kind: stepWrite, target: filepath.Join(dir, "a", "f"), data: "x", mode: 0o644},
		{kind: stepSymlink, source: "f", target: filepath.Join(dir, "a", "f")}, // exists: fails
		{kind: stepMkdir, target: filepath.Join(dir, "never"), mode: 0o755},
	})
	require.Error(t, err)
	assert.NoDirExists(t, filepath.Join(dir, "never"))
	assert.FileExists(t, filepath.Join(dir, "a", "f"))
	require.ErrorContains(t, apply([]step{{kind: stepKind(99)}}), "unknown mount table step")
}
