package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/constellation-go/constellation/bazel/oci/ociimage"
	"github.com/constellation-go/constellation/internal/components/containerdtest"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fileServer serves content at /file; handler, if set, replaces it. It counts requests.
type fileServer struct {
	*httptest.Server
	hits    atomic.Int32
	content []byte
	handler http.HandlerFunc
}

func newFileServer(t *testing.T, content []byte) *fileServer {
	fs := &fileServer{content: content}
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.hits.Add(1)
		if fs.handler != nil {
			fs.handler(w, r)
			return
		}
		if r.URL.Path != "/file" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(fs.content)
	}))
	t.Cleanup(fs.Close)
	return fs
}

func component(fs *fileServer, content []byte) Component {
	return Component{
		Name: "kubelet", URL: fs.URL + "/file", SHA256: hexSum(content), Size: int64(len(content)),
		InstallPath: "/var/lib/constellation/bin/kubelet", Mode: 0o755,
	}
}

// noLeftovers fails if a temporary download is left in dir.
func noLeftovers(t *testing.T, dir string) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return
	}
	require.NoError(t, err)
	for _, e := range entries {
		assert.False(t, strings.Contains(e.Name(), ".download-"), "left behind: %s", e.Name())
	}
}

func TestInstallAndIdempotence(t *testing.T) {
	content := []byte("the kubelet")
	fs := newFileServer(t, content)
	root := t.TempDir()
	in := &Installer{Root: root}
	c := component(fs, content)
	require.NoError(t, in.Install(context.Background(), []Component{c}))
	dest := filepath.Join(root, c.InstallPath)
	got, err := os.ReadFile(dest)
	require.NoError(t, err)
	assert.Equal(t, content, got)
	fi, err := os.Stat(dest)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
	noLeftovers(t, filepath.Dir(dest))
	assert.Equal(t, int32(1), fs.hits.Load())

	// Installed with the right hash: nothing is downloaded; a changed mode is restored.
	require.NoError(t, os.Chmod(dest, 0o600))
	require.NoError(t, in.Install(context.Background(), []Component{c}))
	assert.Equal(t, int32(1), fs.hits.Load())
	fi, err = os.Stat(dest)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm())

	// Installed with the wrong hash (tampered or an older build): downloaded again and replaced.
	require.NoError(t, os.WriteFile(dest, []byte("tampered kubelet"), 0o755))
	require.NoError(t, in.Install(context.Background(), []Component{c}))
	assert.Equal(t, int32(2), fs.hits.Load())
	got, err = os.ReadFile(dest)
	require.NoError(t, err)
	assert.Equal(t, content, got)
}

func TestWrongHashStops(t *testing.T) {
	served := []byte("a different build")
	fs := newFileServer(t, served)
	root := t.TempDir()
	c := component(fs, []byte("the pinned build"))
	c.Size = int64(len(served))
	next := component(fs, served)
	next.Name, next.InstallPath = "kubeadm", "/var/lib/constellation/bin/kubeadm"
	err := (&Installer{Root: root}).Install(context.Background(), []Component{c, next})
	require.Error(t, err)
	var mismatch *HashMismatchError
	require.True(t, errors.As(err, &mismatch))
	assert.Equal(t, "kubelet", mismatch.Component)
	msg := err.Error()
	for _, want := range []string{"kubelet", c.SHA256, hexSum(served), "the component server serves a different build",
		"rebuild with bazel/kubernetes/build.sh or fix the pin"} {
		assert.Contains(t, msg, want)
	}
	assert.Equal(t, int32(1), fs.hits.Load(), "a wrong hash is not retried, and installation stops")
	_, err = os.Stat(filepath.Join(root, c.InstallPath))
	assert.True(t, os.IsNotExist(err), "an unverified file never becomes visible")
	_, err = os.Stat(filepath.Join(root, next.InstallPath))
	assert.True(t, os.IsNotExist(err), "nothing after the failed component is installed")
	noLeftovers(t, filepath.Join(root, "/var/lib/constellation/bin"))
}

func TestTruncatedDownload(t *testing.T) {
	content := []byte(strings.Repeat("kubelet ", 1000))
	fs := newFileServer(t, content)
	// The server promises the whole file and hangs up halfway.
	fs.handler = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		_, _ = w.Write(content[:len(content)/2])
		hj, ok := w.(http.Hijacker)
		require.True(t, ok)
		conn, buf, err := hj.Hijack()
		require.NoError(t, err)
		_ = buf.Flush()
		_ = conn.Close()
	}
	root := t.TempDir()
	c := component(fs, content)
	err := (&Installer{Root: root, Attempts: 2}).Install(context.Background(), []Component{c})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kubelet")
	assert.Equal(t, int32(2), fs.hits.Load(), "a cut-off download is retried")
	_, err = os.Stat(filepath.Join(root, c.InstallPath))
	assert.True(t, os.IsNotExist(err))
	noLeftovers(t, filepath.Dir(filepath.Join(root, c.InstallPath)))

	// Without a Content-Length the short body is caught by the pinned size.
	fs.handler = func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush() // chunked
		_, _ = w.Write(content[:100])
	}
	err = (&Installer{Root: root, Attempts: 1}).Install(context.Background(), []Component{c})
	assert.ErrorContains(t, err, "truncated")
}

func TestNotFound(t *testing.T) {
	fs := newFileServer(t, nil)
	c := component(fs, []byte("x"))
	c.URL = fs.URL + "/v1.33.13/nope"
	err := (&Installer{Root: t.TempDir()}).Install(context.Background(), []Component{c})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "404")
	assert.Contains(t, err.Error(), "kubelet")
	assert.Equal(t, int32(1), fs.hits.Load(), "404 is not retried")
}

func TestOversize(t *testing.T) {
	content := []byte(strings.Repeat("x", 4096))
	fs := newFileServer(t, content)
	root := t.TempDir()

	// The pinned size caps the download.
	c := component(fs, content[:100])
	err := (&Installer{Root: root}).Install(context.Background(), []Component{c})
	assert.ErrorContains(t, err, "more than the allowed 100 bytes")

	// Without a pinned size, MaxSize does; also when the server does not announce the length.
	c.Size = 0
	fs.handler = func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		_, _ = w.Write(content)
	}
	err = (&Installer{Root: root, MaxSize: 1000}).Install(context.Background(), []Component{c})
	assert.ErrorContains(t, err, "more than the allowed 1000 bytes")
	_, err = os.Stat(filepath.Join(root, c.InstallPath))
	assert.True(t, os.IsNotExist(err))
	noLeftovers(t, filepath.Dir(filepath.Join(root, c.InstallPath)))
}

func TestRetriesServerErrorsAndHonoursContext(t *testing.T) {
	content := []byte("kubelet")
	fs := newFileServer(t, content)
	fs.handler = func(w http.ResponseWriter, r *http.Request) {
		if fs.hits.Load() < 3 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(content)
	}
	root := t.TempDir()
	c := component(fs, content)
	require.NoError(t, (&Installer{Root: root}).Install(context.Background(), []Component{c}))
	assert.Equal(t, int32(3), fs.hits.Load())

	// A server that never answers is cut off by the timeout.
	block := make(chan struct{})
	defer close(block)
	fs.handler = func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}
	c.InstallPath = "/var/lib/constellation/bin/other"
	start := time.Now()
	err := (&Installer{Root: root, Timeout: 200 * time.Millisecond, Attempts: 1}).Install(context.Background(), []Component{c})
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestImagesAreImportedAfterVerification(t *testing.T) {
	content := []byte("docker archive")
	fs := newFileServer(t, content)
	root := t.TempDir()
	var imported []string
	in := &Installer{Root: root, importImage: func(ctx context.Context, file string, c Component) error {
		got, err := os.ReadFile(file)
		require.NoError(t, err)
		assert.Equal(t, content, got, "only the verified file is imported")
		imported = append(imported, c.Image)
		return nil
	}}
	c := component(fs, content)
	c.Name, c.InstallPath, c.Mode, c.Image = "pause.tar", "/var/lib/constellation/images/pause.tar", 0, "registry.k8s.io/pause:3.10"
	require.NoError(t, in.Install(context.Background(), []Component{c}))
	assert.Equal(t, []string{"registry.k8s.io/pause:3.10"}, imported)
	fi, err := os.Stat(filepath.Join(root, c.InstallPath))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm())

	// The wrong archive is never imported.
	bad := c
	bad.SHA256 = hexSum([]byte("another archive"))
	bad.InstallPath = "/var/lib/constellation/images/other.tar"
	err = in.Install(context.Background(), []Component{bad})
	assert.ErrorContains(t, err, "pause.tar")
	assert.Len(t, imported, 1)

	in.importImage = func(context.Context, string, Component) error { return errors.New("ctr failed") }
	err = in.Install(context.Background(), []Component{c})
	assert.ErrorContains(t, err, "importing image registry.k8s.io/pause:3.10")
}

// TestImagesBeforeFiles: images are installed and imported before any other file, whatever the list's order,
// since a binary's arrival may start the program that needs them (the kubelet supervisor).
func TestImagesBeforeFiles(t *testing.T) {
	content := []byte("content")
	fs := newFileServer(t, content)
	root := t.TempDir()
	kubelet := component(fs, content)
	var kubeletThere []bool
	in := &Installer{Root: root, importImage: func(context.Context, string, Component) error {
		_, err := os.Stat(filepath.Join(root, kubelet.InstallPath))
		kubeletThere = append(kubeletThere, err == nil)
		return nil
	}}
	image := func(name string) Component {
		c := component(fs, content)
		c.Name, c.InstallPath, c.Mode, c.Image = name, "/var/lib/constellation/images/"+name, 0, "registry.k8s.io/"+name
		return c
	}
	require.NoError(t, in.Install(context.Background(), []Component{kubelet, image("pause.tar"), image("etcd.tar")}))
	assert.Equal(t, []bool{false, false}, kubeletThere, "the kubelet was there before an image was imported")
	_, err := os.Stat(filepath.Join(root, kubelet.InstallPath))
	assert.NoError(t, err)
}

func TestValidate(t *testing.T) {
	good := Component{Name: "kubelet", URL: "http://x/y", SHA256: strings.Repeat("a", 64), InstallPath: "/usr/bin/kubelet"}
	for name, mutate := range map[string]func(*Component){
		"no name":       func(c *Component) { c.Name = "" },
		"short hash":    func(c *Component) { c.SHA256 = "abc" },
		"upper hash":    func(c *Component) { c.SHA256 = strings.Repeat("A", 64) },
		"relative path": func(c *Component) { c.InstallPath = "usr/bin/kubelet" },
		"unclean path":  func(c *Component) { c.InstallPath = "/usr/bin/../../etc/shadow" },
		"root":          func(c *Component) { c.InstallPath = "/" },
		"no url":        func(c *Component) { c.URL = "" },
		"negative size": func(c *Component) { c.Size = -1 },
	} {
		c := good
		mutate(&c)
		assert.Error(t, validate(c), name)
	}
	assert.NoError(t, validate(good))
}

func TestFromProto(t *testing.T) {
	sum := strings.Repeat("b", 64)
	got, err := FromProto([]*components.Component{
		{Url: "http://s/v1.33.13/kubelet", Hash: "sha256:" + sum, InstallPath: "/b/kubelet", Name: "kubelet", Mode: 0o755, Size: 7},
		{Url: "http://s/v1.33.13/pause.tar", Hash: "sha256:" + sum, InstallPath: "/i/pause.tar", Image: "registry.k8s.io/pause:3.10"},
	})
	require.NoError(t, err)
	assert.Equal(t, []Component{
		{Name: "kubelet", URL: "http://s/v1.33.13/kubelet", SHA256: sum, Size: 7, InstallPath: "/b/kubelet", Mode: 0o755},
		{Name: "pause.tar", URL: "http://s/v1.33.13/pause.tar", SHA256: sum, InstallPath: "/i/pause.tar", Image: "registry.k8s.io/pause:3.10"},
	}, got)

	_, err = FromProto([]*components.Component{{Hash: "md5:abc", Name: "x"}})
	assert.ErrorContains(t, err, "sha256:")
	_, err = FromProto([]*components.Component{{Hash: "sha256:" + sum, Name: "x", Extract: true}})
	assert.ErrorContains(t, err, "extract")
	_, err = FromProto([]*components.Component{{Hash: "sha256:" + sum, Name: "x", Mode: 0o170000}})
	assert.ErrorContains(t, err, "mode")
}

// TestImportsIntoContainerd installs an image archive and imports it into a real, private containerd with
// ctr, as nodes do.
func TestImportsIntoContainerd(t *testing.T) {
	ctd := containerdtest.Start(t)
	self, err := os.Executable()
	require.NoError(t, err)
	binary, err := os.ReadFile(self)
	require.NoError(t, err)
	const ref = "registry.k8s.io/install-test:v1"
	img, err := ociimage.Build(ociimage.Spec{Binary: binary, BinaryPath: "/install-test", Tag: ref})
	require.NoError(t, err)
	var archive bytes.Buffer
	require.NoError(t, ociimage.WriteArchive(&archive, ref, img))
	content := archive.Bytes()
	fs := newFileServer(t, content)

	in := &Installer{Root: t.TempDir(), Ctr: ctd.Ctr, ContainerdAddress: ctd.Address}
	c := component(fs, content)
	c.Name, c.InstallPath, c.Mode, c.Image = "install-test.tar", "/var/lib/constellation/images/install-test.tar", 0o644, ref
	require.NoError(t, in.Install(context.Background(), []Component{c}))
	out, err := ctd.Run("-n", "k8s.io", "images", "ls", "-q")
	require.NoError(t, err, out)
	assert.Contains(t, strings.Fields(out), ref)
	out, err = ctd.Run("-n", "k8s.io", "images", "check")
	require.NoError(t, err, out)
	assert.Contains(t, out, "complete")

	// The archive holds another image than the pin says: refused.
	c.Image = "registry.k8s.io/something-else:v1"
	err = in.Install(context.Background(), []Component{c})
	assert.ErrorContains(t, err, "containerd has no image registry.k8s.io/something-else:v1")
}
