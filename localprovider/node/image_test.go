package node

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/localprovider/launcher"
	"github.com/constellation-go/constellation/localprovider/localtest"
)

// TestRealImage boots two nodes from the real node image (CONSTELLATION_IMAGE_DIR, e.g. out/image): the
// root is the image's, containerd answers and runs a container (overlayfs snapshotter, runc with cgroupfs
// in the node's cgroup namespace), the image's bootstrapper reads the booted PCRs from the node's vTPM,
// the state disk is mounted, the nodes reach each other, and restart and destroy leave nothing behind.
func TestRealImage(t *testing.T) {
	testenv.NeedRoot(t)
	imageDir := testenv.ImageDir(t)
	c := newTestCluster(t, imageDir)
	ctx := context.Background()

	start := time.Now()
	a := c.start(t, c.config("a", 0))
	b := c.start(t, c.config("b", 1))
	t.Logf("two nodes started in %s", time.Since(start).Round(time.Millisecond))

	// The root: the os-release the UKI describes.
	uki, err := os.ReadFile(filepath.Join(imageDir, launcher.UKIFile))
	require.NoError(t, err)
	u, err := precompute.ParseUKI(uki)
	require.NoError(t, err)
	osrel, err := a.Output(ctx, "cat", "/etc/os-release")
	require.NoError(t, err)
	assert.Equal(t, string(u.OSRel), string(osrel))
	assert.Contains(t, string(osrel), `IMAGE_ID="constellation"`)
	out, err := a.Output(ctx, "hostname")
	require.NoError(t, err)
	assert.Equal(t, "a\n", string(out))

	// The image's bootstrapper read the booted PCRs from the vTPM (it logs them at start).
	want := a.Prediction.PCRs(true)
	for _, pcr := range []uint32{4, 9, 11} {
		logContains(t, a.StateDir, "bootstrapper", fmt.Sprintf(`"pcr":%d,"sha256":"%s"`, pcr, hex.EncodeToString(want[pcr])))
	}
	out, err = a.Output(ctx, "test", "-S", VTPMSocket)
	assert.NoError(t, err, "%s", out)

	// The state disk.
	m := mountsIn(t, a)
	assert.True(t, strings.HasPrefix(m[StateDiskPath], "ext4 rw"), m[StateDiskPath])
	out, err = a.Output(ctx, "sh", "-c", "dumpe2fs -h $(awk '$2==\""+StateDiskPath+"\"{print $1}' /proc/mounts) 2>/dev/null | grep -i features")
	require.NoError(t, err)
	assert.Contains(t, string(out), "encrypt")

	// containerd answers, with the CRI plugin and the overlayfs snapshotter.
	out, err = a.Output(ctx, "ctr", "version")
	require.NoError(t, err)
	assert.Contains(t, string(out), "Server:")
	out, err = a.Output(ctx, "ctr", "plugins", "ls")
	require.NoError(t, err)
	for _, p := range []string{"io.containerd.grpc.v1 cri", "io.containerd.snapshotter.v1 overlayfs"} {
		assert.Regexp(t, strings.ReplaceAll(p, " ", `\s+`)+`\s+.*\s+ok`, string(out))
	}

	// A container runs: an image imported from a tarball (there is no registry), unpacked by the overlayfs
	// snapshotter on the tmpfs, run by runc in the node's cgroups.
	if runtime.GOARCH == "amd64" {
		img := helloImage(t)
		err = a.Exec(ctx, Cmd{Args: []string{"ctr", "images", "import", "-"}, Stdin: bytes.NewReader(img), Stderr: testWriter{t}})
		require.NoError(t, err)
		start := time.Now()
		out, err = a.Output(ctx, "ctr", "run", "--rm", "docker.io/library/hello:test", "hello")
		require.NoError(t, err)
		assert.Equal(t, "hello from a container\n", string(out))
		t.Logf("ctr run took %s", time.Since(start).Round(time.Millisecond))
	}

	// The network.
	require.NoError(t, localtest.Ping(a.Network.Do, b.Network.IP))
	require.NoError(t, localtest.Ping(b.Network.Do, a.Network.IP))

	// Restart: a fresh boot, measured and verified again.
	start = time.Now()
	a, err = Restart(ctx, c.nodes["a"])
	require.NoError(t, err)
	t.Logf("restart of a took %s (start: %s)", time.Since(start).Round(time.Millisecond), a.Timings)
	initLog, err := os.ReadFile(LogFile(a.StateDir, "init"))
	require.NoError(t, err)
	for line := range strings.Lines(string(initLog)) {
		if strings.Contains(line, "stopped") {
			t.Log(strings.TrimSpace(line))
		}
	}
	out, err = a.Output(ctx, "ctr", "version")
	require.NoError(t, err)
	assert.Contains(t, string(out), "Server:")
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// helloImage returns a docker-archive tarball of docker.io/library/hello:test, whose only file is /hello,
// a static x86-64 program of 153 bytes that writes "hello from a container" and exits 0.
func helloImage(t *testing.T) []byte {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	prog := helloELF()
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o755, Size: int64(len(prog)), Typeflag: tar.TypeReg}))
	_, err := tw.Write(prog)
	require.NoError(t, err)
	require.NoError(t, tw.Close())
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer.Bytes())), nil })
	require.NoError(t, err)
	img, err := mutate.AppendLayers(empty.Image, l)
	require.NoError(t, err)
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = v1.Config{Entrypoint: []string{"/hello"}}
	img, err = mutate.ConfigFile(img, cf)
	require.NoError(t, err)
	ref, err := name.ParseReference("docker.io/library/hello:test")
	require.NoError(t, err)
	var out bytes.Buffer
	require.NoError(t, tarball.Write(ref, img, &out))
	return out.Bytes()
}

// helloELF assembles a minimal static ELF64 x86-64 executable: write(1, msg, len); exit(0).
func helloELF() []byte {
	const base = 0x400000
	msg := []byte("hello from a container\n")
	code := []byte{
		0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1 (write)
		0xbf, 0x01, 0x00, 0x00, 0x00, // mov edi, 1
		0x48, 0x8d, 0x35, 0x10, 0x00, 0x00, 0x00, // lea rsi, [rip+16] (msg, after the code)
		0xba, byte(len(msg)), 0x00, 0x00, 0x00, // mov edx, len
		0x0f, 0x05, // syscall
		0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60 (exit)
		0x31, 0xff, // xor edi, edi
		0x0f, 0x05, // syscall
	}
	const ehSize, phSize = 64, 56
	size := ehSize + phSize + len(code) + len(msg)
	b := make([]byte, ehSize+phSize, size)
	copy(b, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)                  // ET_EXEC
	le.PutUint16(b[18:], 0x3e)               // x86-64
	le.PutUint32(b[20:], 1)                  // version
	le.PutUint64(b[24:], base+ehSize+phSize) // entry
	le.PutUint64(b[32:], ehSize)             // program headers
	le.PutUint16(b[52:], ehSize)             // header size
	le.PutUint16(b[54:], phSize)             // program header size
	le.PutUint16(b[56:], 1)                  // one program header
	ph := b[ehSize:]
	le.PutUint32(ph[0:], 1)             // PT_LOAD
	le.PutUint32(ph[4:], 5)             // R+X
	le.PutUint64(ph[16:], base)         // vaddr
	le.PutUint64(ph[24:], base)         // paddr
	le.PutUint64(ph[32:], uint64(size)) // file size
	le.PutUint64(ph[40:], uint64(size)) // memory size
	le.PutUint64(ph[48:], 0x1000)       // alignment
	b = append(b, code...)
	return append(b, msg...)
}
