package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/localprovider/launcher"
	"github.com/constellation-go/constellation/localprovider/verity"
)

// The tests that need no real node image boot a small one built here the way the real one is built: an
// erofs root made by mkfs.erofs with its dm-verity hash tree (localprovider/verity), and a UKI assembled with
// objcopy from systemd's stub with the root hash on its command line (systemd-boot's EFI binary stands in
// for the kernel, as in localprovider/launcher's tests). Its only program is testdata/toolbox, built static,
// which stands in for containerd and the bootstrapper and provides the commands the tests run in nodes.
// Building it needs
//
//	apt-get install -y systemd-boot-efi binutils erofs-utils
//
// and the Go toolchain; without them the tests skip (fail in CI).

const (
	efiStub   = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	efiKernel = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
)

// toolboxCmds are the names the toolbox answers to, linked in /usr/bin.
var toolboxCmds = []string{"containerd", "bootstrapper", "cat", "write", "exit", "sleep", "killall", "ls", "pcrs"}

// testImageOS is the image's os-release.
const testImageOS = "ID=constellation-test\nIMAGE_ID=local-node-test\n"

var toolbox struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// cleanupToolbox removes the built toolbox; TestMain calls it.
func cleanupToolbox() {
	if toolbox.dir != "" {
		_ = os.RemoveAll(toolbox.dir)
	}
}

func need(t *testing.T, tool string) string {
	t.Helper()
	if filepath.IsAbs(tool) {
		if _, err := os.Stat(tool); err != nil {
			testenv.SkipOrFail(t, fmt.Sprintf("%s is missing (apt-get install -y systemd-boot-efi binutils erofs-utils)", tool))
		}
		return tool
	}
	p, err := exec.LookPath(tool)
	if err != nil {
		testenv.SkipOrFail(t, fmt.Sprintf("%s is missing (apt-get install -y systemd-boot-efi binutils erofs-utils)", tool))
	}
	return p
}

// buildToolbox builds testdata/toolbox once per test binary.
func buildToolbox(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = need(t, "/usr/local/go/bin/go")
	}
	toolbox.once.Do(func() {
		toolbox.dir, toolbox.err = os.MkdirTemp("", "toolbox-")
		if toolbox.err != nil {
			return
		}
		toolbox.path = filepath.Join(toolbox.dir, "toolbox")
		cmd := exec.Command(goBin, "build", "-trimpath", "-o", toolbox.path, "./testdata/toolbox")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			toolbox.err = fmt.Errorf("building the toolbox: %w: %s", err, out)
		}
	})
	require.NoError(t, toolbox.err)
	return toolbox.path
}

type imageSpec struct {
	// containerdFails makes the fake containerd exit at once.
	containerdFails bool
}

// newTestImage builds a node image in a new directory.
func newTestImage(t *testing.T, spec imageSpec) string {
	t.Helper()
	testenv.NeedRoot(t)
	mkfs := need(t, "mkfs.erofs")
	objcopy := need(t, "objcopy")
	need(t, efiStub)
	need(t, efiKernel)
	tb := buildToolbox(t)

	src := t.TempDir()
	for _, d := range []string{"usr/bin", "etc/containerd", "etc/toolbox", "var/lib", "var/log", "proc", "sys", "dev", "run", "tmp"} {
		require.NoError(t, os.MkdirAll(filepath.Join(src, d), 0o755))
	}
	require.NoError(t, os.Chmod(filepath.Join(src, "tmp"), 0o1777))
	data, err := os.ReadFile(tb)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(src, "usr/bin/toolbox"), data, 0o755))
	for _, c := range toolboxCmds {
		require.NoError(t, os.Symlink("toolbox", filepath.Join(src, "usr/bin", c)))
	}
	require.NoError(t, os.Symlink("usr/bin", filepath.Join(src, "bin")))
	require.NoError(t, os.Symlink("/run", filepath.Join(src, "var/run")))
	files := map[string]string{
		"etc/os-release":             testImageOS,
		"etc/hostname":               "constellation\n",
		"etc/machine-id":             "uninitialized\n",
		"etc/containerd/config.toml": "# replaced by the node runtime\n",
	}
	if spec.containerdFails {
		files["etc/toolbox/containerd-fails"] = ""
	}
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(src, name), []byte(content), 0o644))
	}

	dir := testenv.TempDir(t)
	root := filepath.Join(dir, launcher.RootFile)
	out, err := exec.Command(mkfs, "--quiet", "-T0", "-U", "6e3f1c8a-8c9d-4c57-9d3b-3f1e5a2b7c11", root, src).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, os.Chmod(root, 0o644))

	// The hash tree, as systemd-repart makes it.
	d, err := os.Open(root)
	require.NoError(t, err)
	defer d.Close()
	fi, err := d.Stat()
	require.NoError(t, err)
	h, err := os.OpenFile(filepath.Join(dir, launcher.VerityFile), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	require.NoError(t, err)
	defer h.Close()
	seed := [16]byte{0x10, 0xca, 0x1}
	_, rootHash, err := verity.Build(context.Background(), d, fi.Size(), h, verity.Params{
		Salt: verity.RepartSalt(seed), UUID: verity.RepartUUID(seed), Superblock: true,
	})
	require.NoError(t, err)

	// The UKI.
	parts := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(parts, name)
		require.NoError(t, os.WriteFile(p, data, 0o644))
		return p
	}
	osrel := write("osrel", []byte(testImageOS))
	cmdline := write("cmdline", []byte("roothash="+hex.EncodeToString(rootHash)+" console=ttyS0 ro\n"))
	initrd := write("initrd", bytes.Repeat([]byte("test initrd "), 100))
	out, err = exec.Command(objcopy,
		"--add-section", ".osrel="+osrel, "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline="+cmdline, "--change-section-vma", ".cmdline=0x30000",
		"--add-section", ".linux="+efiKernel, "--change-section-vma", ".linux=0x2000000",
		"--add-section", ".initrd="+initrd, "--change-section-vma", ".initrd=0x3000000",
		efiStub, filepath.Join(dir, launcher.UKIFile)).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return dir
}

// flipByte changes a byte in the middle of a file.
func flipByte(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	b := make([]byte, 1)
	off := fi.Size() / 2
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

var errNoFreePrefix = errors.New("no free bridge prefix")
