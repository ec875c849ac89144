package versions

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/constellation-go/constellation/internal/testenv"
	"github.com/constellation-go/constellation/internal/versions/components"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fileio "github.com/constellation-go/constellation/internal/file"
)

var (
	wantBinaries = []string{"kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager",
		"kube-scheduler", "kube-proxy", "etcd", "coredns", "pause"}
	hexSHA256 = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// wantImages are the references kubeadm of a version uses (cmd/kubeadm/app/images): the Kubernetes images
// are tagged with the Kubernetes version, the others with the versions in kubeadm's constants.
func wantImages(kube string) map[string]*regexp.Regexp {
	q := regexp.QuoteMeta
	return map[string]*regexp.Regexp{
		"kube-apiserver.tar":          regexp.MustCompile(`^` + q("registry.k8s.io/kube-apiserver:"+kube) + `$`),
		"kube-controller-manager.tar": regexp.MustCompile(`^` + q("registry.k8s.io/kube-controller-manager:"+kube) + `$`),
		"kube-scheduler.tar":          regexp.MustCompile(`^` + q("registry.k8s.io/kube-scheduler:"+kube) + `$`),
		"kube-proxy.tar":              regexp.MustCompile(`^` + q("registry.k8s.io/kube-proxy:"+kube) + `$`),
		"etcd.tar":                    regexp.MustCompile(`^registry\.k8s\.io/etcd:3\.\d+\.\d+-0$`),
		"coredns.tar":                 regexp.MustCompile(`^registry\.k8s\.io/coredns/coredns:v1\.\d+\.\d+$`),
		"pause.tar":                   regexp.MustCompile(`^registry\.k8s\.io/pause:3\.\d+(\.\d+)?$`),
	}
}

func TestPinnedSetsAreComplete(t *testing.T) {
	require.Contains(t, SupportedKubernetes(), DefaultKubernetes, "the default version must be pinned")
	for _, v := range SupportedKubernetes() {
		t.Run(v, func(t *testing.T) {
			set, err := Components(v)
			require.NoError(t, err)
			assert.Equal(t, v, set.Kubernetes)
			assert.True(t, strings.HasPrefix(set.Go, "go version go1."), "Go version recorded: %q", set.Go)
			images := wantImages(v)
			var names []string
			for _, c := range set.Components {
				names = append(names, c.Name)
				assert.Regexp(t, hexSHA256, c.SHA256, c.Name)
				assert.Positive(t, c.Size, c.Name)
				assert.NotEmpty(t, c.Version, c.Name)
				switch c.Kind {
				case Binary:
					assert.Equal(t, "bin/"+c.Name, c.File)
					assert.Empty(t, c.Image)
					if slices.Contains(wantBinaries[:3], c.Name) {
						assert.Equal(t, NodeBinDir+"/"+c.Name, c.InstallPath)
						assert.Equal(t, os.FileMode(0o755), c.Mode)
						if c.Name != "kubectl" {
							assert.Equal(t, v, c.Version)
						}
					} else {
						assert.Empty(t, c.InstallPath, "%s runs from its image", c.Name)
					}
				case Image:
					re, ok := images[c.Name]
					require.True(t, ok, "unexpected image %s", c.Name)
					assert.Regexp(t, re, c.Image)
					assert.Equal(t, "images/"+c.Name, c.File)
					assert.Regexp(t, `^sha256:[0-9a-f]{64}$`, c.ImageID)
					assert.Equal(t, NodeImageDir+"/"+c.Name, c.InstallPath)
					assert.Equal(t, os.FileMode(0o644), c.Mode)
				default:
					t.Errorf("%s: unknown kind %q", c.Name, c.Kind)
				}
			}
			want := slices.Clone(wantBinaries)
			for name := range images {
				want = append(want, name)
			}
			assert.ElementsMatch(t, want, names)
		})
	}
}

func TestNodeComponentsAndProto(t *testing.T) {
	set, err := Components(DefaultKubernetes)
	require.NoError(t, err)
	cp := set.NodeComponents(true)
	worker := set.NodeComponents(false)
	names := func(cs []Component) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	assert.ElementsMatch(t, []string{"kubeadm", "kubelet", "kubectl", "kube-apiserver.tar", "kube-controller-manager.tar",
		"kube-scheduler.tar", "kube-proxy.tar", "etcd.tar", "coredns.tar", "pause.tar"}, names(cp))
	assert.ElementsMatch(t, []string{"kubeadm", "kubelet", "kubectl", "kube-proxy.tar", "coredns.tar", "pause.tar"}, names(worker))

	protos := set.Proto("http://10.42.0.1:8080/", cp)
	require.Len(t, protos, len(cp))
	for i, p := range protos {
		c := cp[i]
		assert.Equal(t, "http://10.42.0.1:8080/"+DefaultKubernetes+"/"+c.Name, p.GetUrl())
		assert.Equal(t, "sha256:"+c.SHA256, p.GetHash())
		assert.Equal(t, c.InstallPath, p.GetInstallPath())
		assert.Equal(t, c.Name, p.GetName())
		assert.Equal(t, uint32(c.Mode), p.GetMode())
		assert.Equal(t, c.Size, p.GetSize())
		assert.Equal(t, c.Image, p.GetImage())
		assert.False(t, p.GetExtract())
	}

	_, err = Components("v1.29")
	assert.ErrorContains(t, err, "not supported")
	minor, err := Components(strings.Join(strings.Split(DefaultKubernetes, ".")[:2], "."))
	require.NoError(t, err)
	assert.Equal(t, DefaultKubernetes, minor.Kubernetes)
}

// TestForNode: a worker installs the components its cluster hands every node without the control planes'
// images; a control plane installs all of them.
func TestForNode(t *testing.T) {
	set, err := Components(DefaultKubernetes)
	require.NoError(t, err)
	all := set.Proto("http://10.42.0.1:8080", set.NodeComponents(true))
	// The services' images, which the JoinService adds, stay too.
	all = append(all, &components.Component{Name: "joinservice.tar", Image: "docker.io/constellation/joinservice:v1"})
	names := func(cs []*components.Component) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.GetName())
		}
		return out
	}
	assert.Equal(t, names(all), names(ForNode(all, true)))
	assert.ElementsMatch(t, []string{"kubeadm", "kubelet", "kubectl", "kube-proxy.tar", "coredns.tar", "pause.tar", "joinservice.tar"},
		names(ForNode(all, false)))
	assert.Len(t, all, 11, "the caller's list is left as it was")
}

// TestPinsMatchCache checks the components bazel/kubernetes/build.sh built on this machine against the pins.
// CI builds the default version's set from scratch (make setup), so on CI this proves the build reproducible
// across machines. Where testenv is strict the default version's set must be there.
func TestPinsMatchCache(t *testing.T) {
	mustHave := testenv.Strict()
	for _, v := range SupportedKubernetes() {
		t.Run(v, func(t *testing.T) {
			// A kube-proxy image built from newer Debian packages than the pins (Debian's archive moved) is
			// expected to differ; LocalComponents accepts exactly that difference, and nothing else.
			set, notices, err := LocalComponents(v)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range notices {
				t.Log("notice:", n)
			}
			dir := CacheDir(v)
			builtWith := ""
			if data, err := os.ReadFile(filepath.Join(dir, "components.json")); err == nil {
				var idx struct{ Go string }
				if json.Unmarshal(data, &idx) == nil {
					builtWith = idx.Go
				}
			}
			checked := 0
			for _, c := range set.Components {
				file := filepath.Join(dir, filepath.FromSlash(c.File))
				sum, err := fileio.SHA256(file)
				if os.IsNotExist(err) {
					if mustHave && v == DefaultKubernetes {
						t.Errorf("%s is missing: CI must build the set (make setup: bazel/kubernetes/build.sh all)", file)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				checked++
				if sum != c.SHA256 {
					t.Errorf("%s (%s) has sha256 %s, pinned %s: the build is not reproducible here or the pins are stale "+
						"(pins made with %q, this cache built with %q); rebuild with bazel/kubernetes/build.sh --version %s all "+
						"and, if the change is intended, re-pin with bazel/kubernetes/pin.sh", file, c.Name, sum, c.SHA256, set.Go, builtWith, v)
				}
			}
			if checked == 0 {
				t.Skipf("no component of %s built in %s", v, dir)
			}
			t.Logf("%d of %d components of %s match their pins", checked, len(set.Components), v)
		})
	}
}

// TestPinnedImagesAreWhatKubeadmUses asks the built kubeadm of each version which images it runs; the pinned
// images must be exactly those.
func TestPinnedImagesAreWhatKubeadmUses(t *testing.T) {
	for _, v := range SupportedKubernetes() {
		t.Run(v, func(t *testing.T) {
			set, err := Components(v)
			require.NoError(t, err)
			kubeadm := filepath.Join(CacheDir(v), "bin", "kubeadm")
			if _, err := os.Stat(kubeadm); err != nil {
				if testenv.Strict() && v == DefaultKubernetes {
					t.Fatalf("kubeadm is not built: %v", err)
				}
				t.Skipf("kubeadm of %s is not built: %v", v, err)
			}
			out, err := exec.Command(kubeadm, "config", "images", "list", "--kubernetes-version", v).Output()
			require.NoError(t, err)
			var pinned []string
			for _, c := range set.Components {
				if c.Kind == Image {
					pinned = append(pinned, c.Image)
				}
			}
			assert.ElementsMatch(t, strings.Fields(string(out)), pinned)
		})
	}
}

func TestLocalComponents(t *testing.T) {
	pinned, err := Components(DefaultKubernetes)
	require.NoError(t, err)
	proxy, ok := pinned.Component("kube-proxy.tar")
	require.True(t, ok)
	require.NotEmpty(t, proxy.Debs, "the kube-proxy image's Debian packages are pinned")
	proxyBin, ok := pinned.Component("kube-proxy")
	require.True(t, ok)
	kubelet, ok := pinned.Component("kubelet")
	require.True(t, ok)

	movedDebs := slices.Clone(proxy.Debs)
	for i, d := range movedDebs {
		if d.Package == "libc6" {
			movedDebs[i].Version, movedDebs[i].SHA256 = d.Version+".1", strings.Repeat("e", 64)
		}
	}
	const localSum = "1111111111111111111111111111111111111111111111111111111111111111"
	entry := func(name, sum, bin string, debs []DebianPackage) map[string]any {
		return map[string]any{"name": name, "sha256": sum, "size": 42, "imageID": "sha256:local", "binarySHA256": bin, "debs": debs}
	}
	testCases := map[string]struct {
		record     string // components.json; "" for none
		entries    []map[string]any
		wantProxy  string
		wantNotice []string
		wantErr    string
	}{
		"no local build":        {wantProxy: proxy.SHA256},
		"build equals the pins": {entries: []map[string]any{entry("kube-proxy.tar", proxy.SHA256, proxyBin.SHA256, proxy.Debs)}, wantProxy: proxy.SHA256},
		"Debian moved: the local build is used with a notice": {
			entries:    []map[string]any{entry("kube-proxy.tar", localSum, proxyBin.SHA256, movedDebs)},
			wantProxy:  localSum,
			wantNotice: []string{"kube-proxy image", "libc6 2.36", "-> 2.36", localSum, proxy.SHA256, "--locked"},
		},
		"same packages, other bytes: the pin stays": {
			entries:   []map[string]any{entry("kube-proxy.tar", localSum, proxyBin.SHA256, proxy.Debs)},
			wantProxy: proxy.SHA256,
		},
		"another kube-proxy binary inside: the pin stays": {
			entries:   []map[string]any{entry("kube-proxy.tar", localSum, kubelet.SHA256, movedDebs)},
			wantProxy: proxy.SHA256,
		},
		"no packages recorded: the pin stays": {
			entries:   []map[string]any{entry("kube-proxy.tar", localSum, proxyBin.SHA256, nil)},
			wantProxy: proxy.SHA256,
		},
		"a binary never follows the local build": {
			entries:   []map[string]any{entry("kubelet", localSum, "", movedDebs), entry("kube-proxy.tar", proxy.SHA256, proxyBin.SHA256, proxy.Debs)},
			wantProxy: proxy.SHA256,
		},
		"broken record": {record: "{", wantErr: "local Kubernetes"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			cache := t.TempDir()
			t.Setenv("CONSTELLATION_CACHE", cache)
			dir := CacheDir(DefaultKubernetes)
			require.NoError(t, os.MkdirAll(dir, 0o755))
			record := tc.record
			if tc.entries != nil {
				data, err := json.Marshal(map[string]any{"kubernetes": DefaultKubernetes, "components": tc.entries})
				require.NoError(t, err)
				record = string(data)
			}
			if record != "" {
				require.NoError(t, os.WriteFile(filepath.Join(dir, "components.json"), []byte(record), 0o644))
			}
			set, notices, err := LocalComponents(DefaultKubernetes)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			got, _ := set.Component("kube-proxy.tar")
			assert.Equal(t, tc.wantProxy, got.SHA256)
			k, _ := set.Component("kubelet")
			assert.Equal(t, kubelet.SHA256, k.SHA256)
			if tc.wantNotice == nil {
				assert.Empty(t, notices)
				assert.Equal(t, pinned, set)
				return
			}
			require.Len(t, notices, 1)
			for _, s := range tc.wantNotice {
				assert.Contains(t, notices[0], s)
			}
			assert.Equal(t, movedDebs, got.Debs)
			assert.Equal(t, int64(42), got.Size)
			assert.Equal(t, NodeImageDir+"/kube-proxy.tar", got.InstallPath, "install paths are kept")
		})
	}
}
