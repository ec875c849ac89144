package images

import (
	"archive/tar"
	"bufio"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fileio "github.com/constellation-go/constellation/internal/file"
)

var v133 = Versions{Kubernetes: "v1.33.13", EtcdTag: "3.5.24-0", CoreDNS: "v1.12.0", Pause: "3.10"}

func TestForUsesKubeadmReferences(t *testing.T) {
	refs := map[string]string{}
	users := map[string]string{}
	for _, img := range For(v133) {
		refs[img.Name] = img.Ref
		users[img.Name] = img.User
	}
	// kubeadm v1.33 `kubeadm config images list`.
	assert.Equal(t, map[string]string{
		"kube-apiserver":          "registry.k8s.io/kube-apiserver:v1.33.13",
		"kube-controller-manager": "registry.k8s.io/kube-controller-manager:v1.33.13",
		"kube-scheduler":          "registry.k8s.io/kube-scheduler:v1.33.13",
		"kube-proxy":              "registry.k8s.io/kube-proxy:v1.33.13",
		"coredns":                 "registry.k8s.io/coredns/coredns:v1.12.0",
		"pause":                   "registry.k8s.io/pause:3.10",
		"etcd":                    "registry.k8s.io/etcd:3.5.24-0",
	}, refs)
	assert.Equal(t, "0:0", users["kube-apiserver"], "static pods read root-only keys")
	assert.Equal(t, "65535:65535", users["pause"])
	assert.Equal(t, "65532:65532", users["coredns"])

	// kubeadm's KubernetesVersionToImageTag: "+" is not allowed in a tag.
	assert.Equal(t, "registry.k8s.io/kube-proxy:v1.33.13_build.1", For(Versions{Kubernetes: "v1.33.13+build.1"})[3].Ref)
}

func TestNetBindServiceCapability(t *testing.T) {
	// What `setcap cap_net_bind_service=+ep` writes (getfattr -n security.capability -e hex):
	// 0x0100000200040000000000000000000000000000
	assert.Equal(t, "0100000200040000000000000000000000000000", hex.EncodeToString([]byte(netBindServiceCapability)))
}

func TestParseDebsLock(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	debs, err := ParseDebsLock(strings.NewReader("# comment\n\nfoo 1:2.3-4 " + sum + "\n"))
	require.NoError(t, err)
	require.Equal(t, []Deb{{Package: "foo", Version: "1:2.3-4", SHA256: sum}}, debs)
	assert.Equal(t, "foo_1%3a2.3-4.deb", debs[0].FileName())
	for _, bad := range []string{"foo 1.0", "foo 1.0 abc", "foo 1.0 " + strings.Repeat("zz", 32)} {
		_, err := ParseDebsLock(strings.NewReader(bad))
		assert.Error(t, err, bad)
	}
}

func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	require.NoError(t, err)
	for ; dir != "/"; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "image/mkosi/packages.lock")); err == nil {
				return dir
			}
		}
	}
	t.Skip("not in a source tree (Bazel sandbox)")
	return ""
}

// The kube-proxy image's iptables must be the node's: same packages, same versions.
func TestDebsLockMatchesNodeImage(t *testing.T) {
	root := repoRoot(t)
	f, err := os.Open(filepath.Join(root, "bazel/kubernetes/debs.lock"))
	require.NoError(t, err)
	defer f.Close()
	debs, err := ParseDebsLock(f)
	require.NoError(t, err)
	require.NotEmpty(t, debs)
	lock, err := os.ReadFile(filepath.Join(root, "image/mkosi/packages.lock"))
	require.NoError(t, err)
	node := map[string]string{}
	for _, line := range strings.Split(string(lock), "\n") {
		f := strings.Fields(line)
		// "<scope> <name> <version> <arch> <sha256>" (image/packages)
		if len(f) == 5 && f[0] == "image" {
			node[f[1]] = f[2]
		}
	}
	for _, d := range debs {
		assert.Equal(t, node[d.Package], d.Version, "%s: debs.lock and image/mkosi/packages.lock differ", d.Package)
	}
}

// fakeDeb builds a Debian package with dpkg-deb from a map of path -> content ("->target" for a link).
func fakeDeb(t *testing.T, dir, name string, files map[string]string) Deb {
	testenv.Need(t, "apt-get install dpkg", "dpkg-deb")
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "DEBIAN/control"), []byte(
		"Package: "+name+"\nVersion: 1.0\nArchitecture: amd64\nMaintainer: test <t@example.com>\nDescription: test\n"), 0o644))
	for p, content := range files {
		full := filepath.Join(root, p)
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
		if target, ok := strings.CutPrefix(content, "->"); ok {
			require.NoError(t, os.Symlink(target, full))
			continue
		}
		require.NoError(t, os.WriteFile(full, []byte(content), 0o755))
	}
	d := Deb{Package: name, Version: "1.0"}
	out := filepath.Join(dir, d.FileName())
	cmd := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, out)
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, string(b))
	d.SHA256 = sum(t, out)
	return d
}

func sum(t *testing.T, file string) string {
	s, err := fileio.SHA256(file)
	require.NoError(t, err)
	return s
}

func fakeIptables(t *testing.T, dir string) []Deb {
	return []Deb{
		fakeDeb(t, dir, "iptables", map[string]string{
			"usr/sbin/xtables-nft-multi":                     "nft",
			"usr/sbin/iptables-nft":                          "->xtables-nft-multi",
			"usr/sbin/iptables-nft-save":                     "->xtables-nft-multi",
			"usr/sbin/iptables-nft-restore":                  "->xtables-nft-multi",
			"usr/sbin/ip6tables-nft":                         "->xtables-nft-multi",
			"usr/sbin/ip6tables-nft-save":                    "->xtables-nft-multi",
			"usr/sbin/ip6tables-nft-restore":                 "->xtables-nft-multi",
			"usr/lib/x86_64-linux-gnu/xtables/libxt_mark.so": "ext",
			"usr/share/doc/iptables/copyright":               "docs are dropped",
		}),
		fakeDeb(t, dir, "libc6", map[string]string{
			"lib/x86_64-linux-gnu/libc.so.6":            "libc",
			"lib64/ld-linux-x86-64.so.2":                "->/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
			"usr/lib/x86_64-linux-gnu/gconv/UTF-16.so":  "dropped",
			"usr/share/locale/de/LC_MESSAGES/libc.mo":   "dropped",
			"etc/ld.so.conf.d/x86_64-linux-gnu.conf":    "dropped",
			"lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "ld",
		}),
	}
}

func TestDebFiles(t *testing.T) {
	dir := t.TempDir()
	debs := fakeIptables(t, dir)
	files, err := DebFiles(dir, debs)
	require.NoError(t, err)
	byPath := map[string]string{}
	for _, f := range files {
		switch {
		case f.Dir:
			byPath[f.Path] = "dir"
		case f.Linkname != "":
			byPath[f.Path] = "->" + f.Linkname
		default:
			byPath[f.Path] = string(f.Data)
		}
	}
	assert.Equal(t, "->iptables-nft", byPath["/usr/sbin/iptables"])
	assert.Equal(t, "->iptables-nft-restore", byPath["/usr/sbin/iptables-restore"])
	assert.Equal(t, "->ip6tables-nft-save", byPath["/usr/sbin/ip6tables-save"])
	assert.Equal(t, "nft", byPath["/usr/sbin/xtables-nft-multi"])
	assert.Equal(t, "libc", byPath["/lib/x86_64-linux-gnu/libc.so.6"])
	assert.Equal(t, "ext", byPath["/usr/lib/x86_64-linux-gnu/xtables/libxt_mark.so"])
	for p := range byPath {
		assert.False(t, strings.HasPrefix(p, "/usr/share/"), p)
		assert.NotContains(t, p, "gconv")
		assert.NotContains(t, p, "ld.so.conf.d")
	}

	// A package that is not the pinned one is refused.
	bad := debs
	bad[1].SHA256 = strings.Repeat("0", 64)
	_, err = DebFiles(dir, bad)
	assert.ErrorContains(t, err, "debs.lock pins")
}

func writeBins(t *testing.T, dir string) {
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	for _, name := range BinaryNames {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "bin", name), []byte("binary "+name), 0o755))
	}
}

func TestBuildAll(t *testing.T) {
	debsDir := t.TempDir()
	debs := fakeIptables(t, debsDir)
	dir := t.TempDir()
	writeBins(t, dir)
	versions := map[string]string{}
	for _, b := range BinaryNames {
		versions[b] = "v1.33.13"
	}
	var logs []string
	cfg := Config{
		Dir: dir, Versions: v133, DebsDir: debsDir, Debs: debs, BinaryVersions: versions, GoVersion: "go version go1.x",
		Tool: "test", Log: func(format string, args ...any) { logs = append(logs, format) },
	}
	idx, err := BuildAll(cfg)
	require.NoError(t, err)
	assert.Len(t, idx.Components, len(BinaryNames)+7)

	onDisk, err := ReadIndex(filepath.Join(dir, "components.json"))
	require.NoError(t, err)
	assert.Equal(t, idx, onDisk)
	for _, c := range idx.Components {
		assert.Equal(t, sum(t, filepath.Join(dir, c.File)), c.SHA256, c.Name)
		if c.Kind == "image" {
			// What an image was made of, so that a verifier can tell why its hash differs from a pin.
			assert.Equal(t, sum(t, filepath.Join(dir, "bin", strings.TrimSuffix(c.Name, ".tar"))), c.BinarySHA256, c.Name)
			if c.Name == "kube-proxy.tar" {
				assert.Equal(t, debs, c.Debs)
			} else {
				assert.Empty(t, c.Debs, c.Name)
			}
		}
	}

	// The kube-proxy archive: tagged as kubeadm expects, root, PATH with /usr/sbin, iptables inside.
	img, err := tarball.ImageFromPath(filepath.Join(dir, "images/kube-proxy.tar"), nil)
	require.NoError(t, err)
	cfgFile, err := img.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, "0:0", cfgFile.Config.User)
	assert.Contains(t, cfgFile.Config.Env[0], "/usr/sbin")
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(filepath.Join(dir, "images/kube-proxy.tar")) })
	require.NoError(t, err)
	assert.Equal(t, []string{"registry.k8s.io/kube-proxy:v1.33.13"}, m[0].RepoTags)
	layers, err := img.Layers()
	require.NoError(t, err)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	names := map[string]bool{}
	tr := tar.NewReader(bufio.NewReader(rc))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		names[h.Name] = true
	}
	_ = rc.Close()
	assert.True(t, names["usr/local/bin/kube-proxy"])
	assert.True(t, names["usr/sbin/iptables"])
	assert.True(t, names["lib/x86_64-linux-gnu/libc.so.6"])

	// The coredns binary carries its file capability.
	img, err = tarball.ImageFromPath(filepath.Join(dir, "images/coredns.tar"), nil)
	require.NoError(t, err)
	layers, err = img.Layers()
	require.NoError(t, err)
	rc, err = layers[0].Uncompressed()
	require.NoError(t, err)
	tr = tar.NewReader(rc)
	for {
		h, err := tr.Next()
		require.NoError(t, err)
		if h.Name == "coredns" {
			assert.Equal(t, netBindServiceCapability, h.PAXRecords["SCHILY.xattr.security.capability"])
			break
		}
	}
	_ = rc.Close()

	// A second run builds nothing; a changed binary or a damaged archive is rebuilt.
	logs = nil
	idx2, err := BuildAll(cfg)
	require.NoError(t, err)
	assert.Equal(t, idx, idx2)
	for _, l := range logs {
		assert.Contains(t, l, "cached")
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bin/pause"), []byte("another pause"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "images/etcd.tar"), []byte("damaged"), 0o644))
	logs = nil
	idx3, err := BuildAll(cfg)
	require.NoError(t, err)
	rebuilt := 0
	for _, l := range logs {
		if strings.Contains(l, "built in") {
			rebuilt++
		}
	}
	assert.Equal(t, 2, rebuilt)
	changed := map[string]bool{}
	for i, c := range idx3.Components {
		if c.SHA256 != idx.Components[i].SHA256 {
			changed[c.Name] = true
		}
	}
	assert.Equal(t, map[string]bool{"pause": true, "pause.tar": true}, changed, "etcd.tar is rebuilt bit-identically")

	// A missing binary is named with the command that builds it.
	require.NoError(t, os.Remove(filepath.Join(dir, "bin/kube-scheduler")))
	_, err = BuildAll(cfg)
	assert.ErrorContains(t, err, "build.sh --version v1.33.13 kube-scheduler")
}

func TestReadIndexRejectsUnknownFields(t *testing.T) {
	file := filepath.Join(t.TempDir(), "components.json")
	data, err := json.Marshal(map[string]any{"kubernetes": "v1", "surprise": 1})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, data, 0o644))
	_, err = ReadIndex(file)
	assert.Error(t, err)
}
