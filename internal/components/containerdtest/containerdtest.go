// Package containerdtest runs a private containerd for tests that import or run images (nodes have no
// registry: images are imported from docker-archive tarballs).
package containerdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"
)

// Containerd is a running containerd.
type Containerd struct {
	// Address is the socket; Ctr the ctr binary; Dir the directory with its state.
	Address, Ctr, Dir string
}

// Start starts a containerd (CRI disabled) for the test and stops it when the test ends. Without containerd
// or root the test skips, or fails where testenv is strict.
func Start(t testing.TB) *Containerd {
	t.Helper()
	containerd := testenv.Need(t, "apt-get install containerd", "containerd")
	ctr := testenv.Need(t, "apt-get install containerd", "ctr")
	if os.Getuid() != 0 {
		testenv.SkipOrFail(t, "containerd needs root")
	}
	// Short paths: the socket path is limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ctd-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  disable = true
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	daemon := exec.Command(containerd, "--config", filepath.Join(dir, "config.toml"))
	daemon.Stdout, daemon.Stderr = &logs, &logs
	daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	c := &Containerd{Address: sock, Ctr: ctr, Dir: dir}
	t.Cleanup(func() {
		// Tasks left behind by a failed test: their shims would outlive containerd.
		if out, err := c.Run("-n", "k8s.io", "tasks", "ls", "-q"); err == nil {
			for _, id := range bytes.Fields([]byte(out)) {
				_, _ = c.Run("-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", string(id))
				_, _ = c.Run("-n", "k8s.io", "tasks", "delete", "-f", string(id))
			}
		}
		_ = syscall.Kill(-daemon.Process.Pid, syscall.SIGTERM)
		_ = daemon.Wait()
		// Snapshots may still be mounted if a container was left behind.
		_ = filepath.Walk(filepath.Join(dir, "root"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() && filepath.Base(p) == "rootfs" {
				_ = syscall.Unmount(p, syscall.MNT_DETACH)
			}
			return nil
		})
		_ = os.RemoveAll(dir)
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Run("version"); err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not start: %s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Run runs ctr with the given arguments against this containerd (60 s at most) and returns its output.
func (c *Containerd) Run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.Ctr, append([]string{"--address", c.Address}, args...)...).CombinedOutput()
	return string(out), err
}
