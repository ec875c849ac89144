package componentserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fixture writes a fake version set into a cache directory and returns it with its pins.
func fixture(t *testing.T) (string, versions.ComponentSet) {
	cache := t.TempDir()
	set := versions.ComponentSet{Kubernetes: "v1.33.13"}
	for _, fc := range [][2]string{{"bin/kubelet", "kubelet binary"}, {"images/pause.tar", "pause image"}} {
		file, content := fc[0], fc[1]
		full := filepath.Join(cache, set.Kubernetes, file)
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
		require.NoError(t, os.WriteFile(full, []byte(content), 0o644))
		sum := sha256.Sum256([]byte(content))
		kind, name := versions.Binary, filepath.Base(file)
		if strings.HasPrefix(file, "images/") {
			kind = versions.Image
		}
		set.Components = append(set.Components, versions.Component{
			Name: name, Kind: kind, File: file, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(content)),
		})
	}
	// Not pinned: must never be served.
	require.NoError(t, os.WriteFile(filepath.Join(cache, set.Kubernetes, "bin", "secret"), []byte("secret"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(cache, "outside"), []byte("outside"), 0o644))
	return cache, set
}

func newServer(t *testing.T) (*httptest.Server, versions.ComponentSet) {
	cache, set := fixture(t)
	s, err := New(Config{Sets: []versions.ComponentSet{set}, CacheDir: func(v string) string { return filepath.Join(cache, v) }})
	require.NoError(t, err)
	require.NoError(t, s.Verify(context.Background()))
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return ts, set
}

func get(t *testing.T, method, url string) (int, string, http.Header) {
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body), resp.Header
}

func TestServesPinnedFiles(t *testing.T) {
	ts, set := newServer(t)
	code, body, h := get(t, http.MethodGet, ts.URL+"/v1.33.13/kubelet")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "kubelet binary", body)
	assert.Equal(t, "application/octet-stream", h.Get("Content-Type"))
	assert.Equal(t, `"sha256:`+set.Components[0].SHA256+`"`, h.Get("ETag"))

	code, body, _ = get(t, http.MethodGet, ts.URL+"/v1.33.13/pause.tar")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "pause image", body)

	code, body, _ = get(t, http.MethodGet, ts.URL+"/sha256/"+set.Components[1].SHA256)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "pause image", body)

	code, body, h = get(t, http.MethodHead, ts.URL+"/v1.33.13/kubelet")
	assert.Equal(t, http.StatusOK, code)
	assert.Empty(t, body)
	assert.Equal(t, "14", h.Get("Content-Length"))
}

func TestServesNothingElse(t *testing.T) {
	ts, set := newServer(t)
	for _, p := range []string{
		"/", "/v1.33.13", "/v1.33.13/", "/v1.33.13/secret", "/v1.33.13/bin/kubelet", "/v1.33.13/bin/",
		"/v1.33.13/../outside", "/v1.33.13/%2e%2e/outside", "/v1.33.13/..%2foutside", "/v1.33.13/kubelet/",
		"/v1.33.13//kubelet", "/v1.33.13/kubelet%00", "/v1.34.0/kubelet", "/sha256/", "/sha256/" + strings.Repeat("0", 64),
		"/sha256/" + strings.ToUpper(set.Components[0].SHA256), "/components.json", "/outside",
	} {
		// A raw request: the client must not clean the path for us.
		conn, err := net.Dial("tcp", ts.Listener.Addr().String())
		require.NoError(t, err)
		_, err = io.WriteString(conn, "GET "+p+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		require.NoError(t, err)
		resp, err := io.ReadAll(conn)
		require.NoError(t, err)
		_ = conn.Close()
		status := strings.SplitN(string(resp), "\r\n", 2)[0]
		assert.True(t, strings.Contains(status, " 404 ") || strings.Contains(status, " 400 "),
			"%s: %s", p, status)
		assert.NotContains(t, string(resp), "secret", p)
		assert.NotContains(t, string(resp), "outside\n", p)
		assert.NotContains(t, string(resp), "kubelet binary", p)
	}
	code, _, h := get(t, http.MethodPost, ts.URL+"/v1.33.13/kubelet")
	assert.Equal(t, http.StatusMethodNotAllowed, code)
	assert.Equal(t, "GET, HEAD", h.Get("Allow"))
}

func TestNewChecksTheCache(t *testing.T) {
	cache, set := fixture(t)
	dir := func(v string) string { return filepath.Join(cache, v) }

	require.NoError(t, os.Remove(filepath.Join(cache, "v1.33.13/images/pause.tar")))
	_, err := New(Config{Sets: []versions.ComponentSet{set}, CacheDir: dir})
	assert.ErrorContains(t, err, "build.sh --version v1.33.13 all")

	cache, set = fixture(t)
	require.NoError(t, os.WriteFile(filepath.Join(cache, "v1.33.13/bin/kubelet"), []byte("another build!"), 0o644))
	s, err := New(Config{Sets: []versions.ComponentSet{set}, CacheDir: func(v string) string { return filepath.Join(cache, v) }})
	require.NoError(t, err, "same size: only Verify notices")
	err = s.Verify(context.Background())
	assert.ErrorContains(t, err, "kubelet")
	assert.ErrorContains(t, err, set.Components[0].SHA256)

	require.NoError(t, os.WriteFile(filepath.Join(cache, "v1.33.13/bin/kubelet"), []byte("longer build output"), 0o644))
	_, err = New(Config{Sets: []versions.ComponentSet{set}, CacheDir: func(v string) string { return filepath.Join(cache, v) }})
	assert.ErrorContains(t, err, "different build")

	bad := set
	bad.Components = append([]versions.Component(nil), set.Components...)
	bad.Components[0].File = "../outside"
	_, err = New(Config{Sets: []versions.ComponentSet{bad}, CacheDir: dir})
	assert.ErrorContains(t, err, "unsafe")

	_, err = New(Config{})
	assert.Error(t, err)
	_, err = New(Config{Versions: []string{"v1.29"}})
	assert.ErrorContains(t, err, "not supported")
}

func TestServeStopsWithContext(t *testing.T) {
	cache, set := fixture(t)
	s, err := New(Config{Sets: []versions.ComponentSet{set}, CacheDir: func(v string) string { return filepath.Join(cache, v) }})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	code, body, _ := get(t, http.MethodGet, BaseURL(ln.Addr())+versions.URLPath("v1.33.13", "kubelet"))
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "kubelet binary", body)
	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}
