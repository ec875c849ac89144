package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/remains"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const qemuEnv = "CONSTELLATION_E2E_QEMU"

// vtpmDir and socketDir are the qemu module's default vtpm_dir and vtpm_socket_dir.
const (
	vtpmDir   = "/var/lib/constellation/qemu"
	socketDir = "/run/constellation/qemu"
)

// TestQEMUCreate runs the qemu provider's module for real: `create` makes two libvirt domains (OVMF, TCG on
// this machine) on an isolated network, each with a vTPM the cluster's platform CA certified (swtpm through
// libvirt's external backend: the domains only run if QEMU reached it), puts the CA into the configuration,
// and `terminate` removes every libvirt object, vTPM and key it made. The
// CLI starts libvirtd if none runs; the test stops a libvirtd it did not find running. `make qemu-test`
// runs it (root, libvirt installed, `make build libvirt-provider`).
func TestQEMUCreate(t *testing.T) {
	bin := os.Getenv(cliEnv)
	if bin == "" || os.Getenv(qemuEnv) == "" {
		t.Skipf("%s and %s are not set: run 'make qemu-test'", cliEnv, qemuEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	if !libvirtdRunning() {
		t.Cleanup(stopLibvirtd(t))
	}
	c := &cli{t: t, bin: bin, ws: t.TempDir(), logs: &bytes.Buffer{}}
	defer func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("CLI transcript:\n%s", c.logs.String())
		}
	}()
	code, _, stderr := c.run(ctx, "config", "generate", "qemu", "--name", "qemutest")
	require.Zero(t, code, stderr)

	start := time.Now()
	code, stdout, stderr := c.run(ctx, "create")
	created := time.Since(start)
	prefix := "qemutest-"
	t.Cleanup(func() {
		code, _, stderr := c.run(context.Background(), "terminate", "--yes")
		assert.Zero(t, code, stderr)
		for _, kind := range []string{"list --all --name", "net-list --all --name", "pool-list --all --name"} {
			assert.Empty(t, withPrefix(t, kind, prefix), "virsh %s: left behind", kind)
		}
		assert.Empty(t, remains.ProcessesWith(vtpmDir), "no swtpm left running")
		for _, dir := range []string{vtpmDir, socketDir} {
			matches, _ := filepath.Glob(filepath.Join(dir, prefix+"*"))
			assert.Empty(t, matches, "no vTPM, socket or CA key left behind")
		}
	})
	require.Zero(t, code, "create failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, "Created the infrastructure of qemutest (2 nodes")

	running := withPrefix(t, "list --state-running --name", prefix)
	assert.Len(t, running, 2, "both nodes' domains run")
	for _, d := range running {
		xml := virsh(t, "dumpxml", d)
		assert.Contains(t, xml, "OVMF", "%s boots with OVMF", d)
		assert.Contains(t, xml, `<tpm model=`, "%s has a vTPM", d)
		assert.Contains(t, xml, `<backend type='external'`, "%s's vTPM is the platform's, not libvirt's swtpm_setup", d)
		assert.Regexp(t, `<source type='unix' mode='connect' path='`+socketDir+`/qemutest-[0-9a-z]+/[a-z0-9-]+.sock'/>`, xml)
		assert.Contains(t, xml, `<domain type='qemu'`, "%s uses TCG (KVM cannot run guests here)", d)
	}
	data, err := os.ReadFile(c.ws + "/constellation-state.yaml")
	require.NoError(t, err)
	assert.Contains(t, string(data), "clusterEndpoint: 10.42.1.2")
	conf, err := os.ReadFile(c.ws + "/constellation-conf.yaml")
	require.NoError(t, err)
	assert.Contains(t, string(conf), "platformCA: |", "create put the platform CA into the configuration")
	cas, _ := filepath.Glob(filepath.Join(vtpmDir, prefix+"*", "platform-ca.crt"))
	require.Len(t, cas, 1)
	caPEM, err := os.ReadFile(cas[0])
	require.NoError(t, err)
	assert.Contains(t, string(conf), strings.Split(strings.TrimSpace(string(caPEM)), "\n")[1], "the configuration trusts this cluster's CA")
	socks, err := filepath.Glob(filepath.Join(socketDir, prefix+"*", "*.sock"))
	require.NoError(t, err)
	assert.Len(t, socks, 2, "a vTPM per node")
	for _, sock := range socks {
		fi, err := os.Stat(sock)
		require.NoError(t, err)
		assert.Equal(t, os.ModeSocket|0o600, fi.Mode(), "only QEMU's user may use %s", sock)
	}
	t.Logf("FIGURES qemu create (2 domains, libvirt) %s", created.Round(time.Second))
}

func virsh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", "qemu:///system"}, args...)...).CombinedOutput()
	require.NoError(t, err, "virsh %s: %s", strings.Join(args, " "), out)
	return string(out)
}

// withPrefix lists libvirt objects (virsh <kind>) whose names start with prefix.
func withPrefix(t *testing.T, kind, prefix string) []string {
	t.Helper()
	var out []string
	for _, name := range strings.Fields(virsh(t, strings.Fields(kind)...)) {
		if strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	return out
}

func libvirtdRunning() bool {
	_, err := os.Stat("/run/libvirt/libvirt-sock")
	return err == nil
}

// stopLibvirtd stops the libvirtd and virtlogd the CLI started for the test (by their pid files).
func stopLibvirtd(t *testing.T) func() {
	return func() {
		for _, pidFile := range []string{"/run/libvirtd.pid", "/run/virtlogd.pid"} {
			data, err := os.ReadFile(pidFile)
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil {
				continue
			}
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				t.Logf("stopping %s: %v", pidFile, err)
			}
		}
	}
}
