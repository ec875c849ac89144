package ociimage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestContainerdImportsImage imports an image into a real, private containerd, as nodes will import the
// service images (there is no registry).
func TestContainerdImportsImage(t *testing.T) {
	containerd, errA := exec.LookPath("containerd")
	ctr, errB := exec.LookPath("ctr")
	if errA != nil || errB != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("containerd is not installed; CI must install it (Debian package containerd)")
		}
		t.Skip("skipping: containerd is not installed")
	}
	if os.Getuid() != 0 {
		t.Skip("skipping: containerd needs root")
	}
	// Short paths: the socket path is limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ctd-")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  disable = true
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600))

	var logs bytes.Buffer
	daemon := exec.Command(containerd, "--config", filepath.Join(dir, "config.toml"))
	daemon.Stdout, daemon.Stderr = &logs, &logs
	daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, daemon.Start())
	defer func() {
		_ = syscall.Kill(-daemon.Process.Pid, syscall.SIGTERM)
		_ = daemon.Wait()
	}()
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, ctr, append([]string{"--address", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	require.Eventually(t, func() bool {
		_, err := run("version")
		return err == nil
	}, 20*time.Second, 100*time.Millisecond, "containerd did not start: %s", &logs)

	self, err := os.Executable()
	require.NoError(t, err)
	binary, err := os.ReadFile(self)
	require.NoError(t, err)
	img, err := Build(Spec{Binary: binary, BinaryPath: "/usr/bin/ociimage-test", Tag: "constellation/ociimage-test:v1"})
	require.NoError(t, err)
	archive := filepath.Join(dir, "image.tar")
	f, err := os.Create(archive)
	require.NoError(t, err)
	require.NoError(t, WriteArchive(f, "constellation/ociimage-test:v1", img))
	require.NoError(t, f.Close())

	out, err := run("images", "import", archive)
	require.NoError(t, err, out)
	out, err = run("images", "ls", "-q")
	require.NoError(t, err, out)
	assert.Contains(t, strings.Fields(out), "docker.io/constellation/ociimage-test:v1")
	out, err = run("images", "check")
	require.NoError(t, err, out)
	assert.Contains(t, out, "complete", "all content of the image is present")
}
