package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/constellation-go/constellation/internal/components/containerdtest"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBuiltImagesWorkInContainerd imports the images bazel/kubernetes/build.sh built for the default
// Kubernetes version into a private containerd 1.6, as nodes do, and runs the ones whose runtime behaviour
// this package is responsible for: pause (sleeps, stops on SIGTERM with status 0), kube-proxy's iptables
// (nf_tables, libraries and extensions inside the image) and CoreDNS (binds port 53 as an unprivileged
// user through its file capability).
func TestBuiltImagesWorkInContainerd(t *testing.T) {
	dir := versions.CacheDir(versions.DefaultKubernetes)
	idx, err := ReadIndex(filepath.Join(dir, "components.json"))
	if err != nil {
		testenv.SkipOrFail(t, fmt.Sprintf("the images of %s are not built (make setup, or bazel/kubernetes/build.sh all): %v", versions.DefaultKubernetes, err))
	}
	ctd := containerdtest.Start(t)
	ctr := func(args ...string) string {
		t.Helper()
		out, err := ctd.Run(append([]string{"-n", "k8s.io"}, args...)...)
		require.NoError(t, err, "ctr %s: %s", strings.Join(args, " "), out)
		return out
	}
	refs := map[string]string{}
	for _, c := range idx.Components {
		if c.Kind != "image" {
			continue
		}
		ctr("images", "import", filepath.Join(dir, c.File))
		refs[strings.TrimSuffix(c.Name, ".tar")] = c.Image
	}
	require.Len(t, refs, 7)
	listed := strings.Fields(ctr("images", "ls", "-q"))
	for _, ref := range refs {
		assert.Contains(t, listed, ref)
	}
	assert.NotContains(t, ctr("images", "check"), "incomplete")

	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil && !strings.Contains(string(mounts), " - cgroup") {
		// bazel/bazel's chroot mounts no cgroup file system, so runc cannot start containers there; `go test`
		// (make go-test) runs the rest.
		t.Skip("skipping the container runs: no cgroup file system is mounted (Bazel's chroot)")
	}

	t.Run("pause", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		run := exec.CommandContext(ctx, ctd.Ctr, "--address", ctd.Address, "-n", "k8s.io", "run", "--rm", refs["pause"], "pause-test")
		var out strings.Builder
		run.Stdout, run.Stderr = &out, &out
		require.NoError(t, run.Start())
		require.Eventually(t, func() bool {
			o, _ := ctd.Run("-n", "k8s.io", "tasks", "ls")
			return strings.Contains(o, "pause-test") && strings.Contains(o, "RUNNING")
		}, 30*time.Second, 100*time.Millisecond)
		time.Sleep(200 * time.Millisecond) // let it install its signal handler
		ctr("tasks", "kill", "-s", "SIGTERM", "pause-test")
		require.NoError(t, run.Wait(), "pause exits with status 0 on SIGTERM: %s", out.String())
		assert.Contains(t, out.String(), "Shutting down, got signal")
	})

	t.Run("kube-proxy iptables", func(t *testing.T) {
		// A fresh network namespace per container: nothing touches the host's tables.
		version := ctr("run", "--rm", refs["kube-proxy"], "iptables-version", "iptables", "--version")
		assert.Contains(t, version, "nf_tables")
		rules := "*nat\n:KUBE-TEST - [0:0]\n-A KUBE-TEST -m comment --comment \"constellation test\" " +
			"-m statistic --mode random --probability 0.5 -j RETURN\nCOMMIT\n" +
			"*filter\n:KUBE-FW - [0:0]\n-A KUBE-FW -m conntrack --ctstate INVALID -m mark --mark 0x4000/0x4000 -j DROP\nCOMMIT\n"
		rulesFile := filepath.Join(ctd.Dir, "rules")
		require.NoError(t, os.WriteFile(rulesFile, []byte(rules), 0o644))
		ctr("run", "--rm", "--cap-add", "CAP_NET_ADMIN", "--mount", "type=bind,src="+rulesFile+",dst=/rules,options=rbind:ro",
			refs["kube-proxy"], "iptables-restore", "iptables-restore", "--noflush", "/rules")
		saved := ctr("run", "--rm", "--cap-add", "CAP_NET_ADMIN", "--mount", "type=bind,src="+rulesFile+",dst=/rules,options=rbind:ro",
			refs["kube-proxy"], "iptables-save", "iptables-restore", "--test", "/rules")
		assert.NotContains(t, saved, "rror")
		out6 := ctr("run", "--rm", "--cap-add", "CAP_NET_ADMIN", refs["kube-proxy"], "ip6tables-save", "ip6tables-save")
		assert.NotContains(t, out6, "error")
		assert.Contains(t, ctr("run", "--rm", refs["kube-proxy"], "kube-proxy-version", "kube-proxy", "--version"),
			"Kubernetes "+versions.DefaultKubernetes)
	})

	t.Run("coredns binds port 53 unprivileged", func(t *testing.T) {
		logFile := filepath.Join(ctd.Dir, "coredns.log")
		ctr("run", "-d", "--log-uri", "file://"+logFile, refs["coredns"], "coredns-test")
		defer func() {
			_, _ = ctd.Run("-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", "coredns-test")
			time.Sleep(200 * time.Millisecond)
			_, _ = ctd.Run("-n", "k8s.io", "tasks", "delete", "-f", "coredns-test")
			_, _ = ctd.Run("-n", "k8s.io", "containers", "delete", "coredns-test")
		}()
		var log []byte
		require.Eventually(t, func() bool {
			log, _ = os.ReadFile(logFile)
			return strings.Contains(string(log), "CoreDNS-") || strings.Contains(string(log), "denied")
		}, 30*time.Second, 100*time.Millisecond, "CoreDNS did not start")
		assert.Contains(t, string(log), ".:53", "serving the default zone on port 53")
		assert.NotContains(t, string(log), "permission denied")
		time.Sleep(500 * time.Millisecond)
		tasks := ctr("tasks", "ls")
		assert.Contains(t, tasks, "RUNNING", "CoreDNS keeps running: %s\n%s", tasks, log)
		pid := ""
		for _, line := range strings.Split(tasks, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "coredns-test" {
				pid = f[1]
			}
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%s/status", pid))
		require.NoError(t, err)
		assert.Regexp(t, `(?m)^Uid:\s+65532\s`, string(status), "CoreDNS runs unprivileged")
	})
}
