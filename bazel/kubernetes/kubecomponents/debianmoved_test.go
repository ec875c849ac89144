package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/components/images"
	"github.com/constellation-go/constellation/internal/testenv"
	"github.com/constellation-go/constellation/internal/versions"
)

// TestBuildShDebianMoved runs bazel/kubernetes/build.sh for real against a copy of this machine's
// Kubernetes cache, with a debs.lock that pins versions Debian no longer serves (as after a point release):
// libmnl0 at a gone version, and libcap2, which the release does not have, at a gone version. By default
// the kube-proxy image is built from the versions served today, with a notice; libcap2's files make it
// another image than the pin, and versions.LocalComponents accepts exactly that image, with a notice. With
// --locked the build fails and names the package.
func TestBuildShDebianMoved(t *testing.T) {
	if testenv.UnderBazel() {
		t.Skip("runs build.sh on the host's Kubernetes cache and Debian's mirror; make go-test runs it")
	}
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root (apt-get download and the shared cache)")
	}
	testenv.Need(t, "apt-get install apt dpkg", "apt-get")
	testenv.Need(t, "apt-get install dpkg", "dpkg-deb")
	real := versions.CacheDir(versions.DefaultKubernetes)
	if _, err := os.Stat(filepath.Join(real, "components.json")); err != nil {
		testenv.SkipOrFail(t, "the Kubernetes set is not built here: run make setup (bazel/kubernetes/build.sh all)")
	}
	repo, err := filepath.Abs("../../..")
	require.NoError(t, err)

	// A copy of the cache made of hard links: build.sh replaces files by renaming, never writes through.
	cache := t.TempDir()
	linkTree(t, real, filepath.Join(cache, "kubernetes", versions.DefaultKubernetes))
	linkTree(t, filepath.Join(filepath.Dir(real), "debs"), filepath.Join(cache, "kubernetes", "debs"))

	lock, err := os.ReadFile(filepath.Join(repo, "bazel/kubernetes/debs.lock"))
	require.NoError(t, err)
	var moved []string
	for _, line := range strings.Split(string(lock), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "libmnl0" {
			line = "libmnl0 0.9-gone " + f[2]
		}
		moved = append(moved, line)
	}
	moved = append(moved, "libcap2 0.1-gone "+strings.Repeat("0", 64))
	movedLock := filepath.Join(t.TempDir(), "debs.lock")
	require.NoError(t, os.WriteFile(movedLock, []byte(strings.Join(moved, "\n")+"\n"), 0o644))

	run := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(repo, "bazel/kubernetes/build.sh"), append([]string{"--debs-lock", movedLock}, args...)...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CONSTELLATION_CACHE="+cache, "CONSTELLATION_LOCKED=")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := run("--locked", "images")
	require.Error(t, err, out)
	assert.Contains(t, out, "no longer serves libmnl0=0.9-gone")
	assert.Contains(t, out, "--locked")

	out, err = run("images")
	require.NoError(t, err, out)
	t.Log(out)
	assert.Contains(t, out, "NOTICE: Debian's mirror no longer serves")
	assert.Contains(t, out, "libmnl0 0.9-gone -> ")

	t.Setenv("CONSTELLATION_CACHE", cache)
	idx, err := images.ReadIndex(filepath.Join(versions.CacheDir(versions.DefaultKubernetes), "components.json"))
	require.NoError(t, err)
	pinned, err := versions.Components(versions.DefaultKubernetes)
	require.NoError(t, err)
	pin, _ := pinned.Component("kube-proxy.tar")
	var built images.IndexEntry
	for _, c := range idx.Components {
		if c.Name == "kube-proxy.tar" {
			built = c
		}
	}
	assert.NotEqual(t, pin.SHA256, built.SHA256, "libcap2's files give another image")
	data, err := json.Marshal(built.Debs)
	require.NoError(t, err)
	assert.NotContains(t, string(data), "0.9-gone")
	assert.Contains(t, string(data), `"package":"libmnl0"`)

	set, notices, err := versions.LocalComponents(versions.DefaultKubernetes)
	require.NoError(t, err)
	require.Len(t, notices, 1)
	assert.Contains(t, notices[0], "kube-proxy image")
	assert.Contains(t, notices[0], "libcap2 (none) -> ")
	got, _ := set.Component("kube-proxy.tar")
	assert.Equal(t, built.SHA256, got.SHA256)
}

// linkTree hard-links (or copies) every file under src into dst (created).
func linkTree(t *testing.T, src, dst string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if err := os.Link(path, target); err == nil {
			return nil
		}
		// Another file system (a cache outside /tmp): a copy, with the original's mode.
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, fi.Mode().Perm())
	}))
}
