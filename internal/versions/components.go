package versions

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/constellation-go/constellation/internal/versions/components"
	"golang.org/x/mod/semver"
)

// ComponentKind says what a pinned file is.
type ComponentKind string

const (
	// Binary is an executable.
	Binary ComponentKind = "binary"
	// Image is a container image as a docker-archive tarball, for `ctr -n k8s.io images import`.
	Image ComponentKind = "image"
)

// Where nodes install components. Both directories are on the node's persistent state (a node that restarts
// finds its kubelet there); NodeBinDir must be on the PATH of kubeadm (its preflight runs `kubelet`).
const (
	NodeBinDir   = "/var/lib/constellation/bin"
	NodeImageDir = "/var/lib/constellation/images"
)

// Component is a pinned file of a Kubernetes version set, built by bazel/kubernetes/build.sh.
type Component struct {
	// Name is unique within the set: the binary's name ("kubelet") or the image file's ("pause.tar").
	Name string
	Kind ComponentKind
	// Version is the component's own upstream version: "v1.33.13" for Kubernetes, "v3.5.24" for the etcd
	// binary, "3.5.24-0" for the etcd image (kubeadm's tag), "3.10" for pause.
	Version string
	// File is the path relative to the version's cache directory: "bin/kubelet", "images/pause.tar".
	File string
	// SHA256 is the file's hex sha256.
	SHA256 string
	Size   int64
	// Image is the reference kubeadm uses (images only), ImageID the image's config digest.
	Image   string
	ImageID string
	// InstallPath is where a node installs the file; empty if nodes do not install it (kube-apiserver and
	// friends run from their images; their binaries are pinned for tests and tools).
	InstallPath string
	// Mode is the installed file's permission bits.
	Mode os.FileMode
	// ControlPlaneOnly is set for what only control-plane nodes need (the static pods' images).
	ControlPlaneOnly bool
	// Debs are the Debian packages whose files an image holds (kube-proxy's iptables, from
	// bazel/kubernetes/debs.lock). Debian's archive moves, so a machine may have had to build the image from
	// newer packages; LocalComponents accepts such a build, and only such a build, with a notice.
	Debs []DebianPackage
}

// DebianPackage is a Debian package an image was built from.
type DebianPackage struct {
	Package string `json:"package"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// ComponentSet is every pinned component of one Kubernetes version.
type ComponentSet struct {
	Kubernetes string
	// Go is `go version` of the toolchain the pinned files were built with: another Go gives other bytes.
	Go         string
	Components []Component
}

// nodeBinaries are the binaries a node installs; everything else a node needs comes as an image.
var nodeBinaries = []string{"kubeadm", "kubelet", "kubectl"}

// controlPlaneImages are the images only control planes run (kubeadm's static pods).
var controlPlaneImages = []string{"kube-apiserver.tar", "kube-controller-manager.tar", "kube-scheduler.tar", "etcd.tar"}

// Components returns the pinned components of a supported Kubernetes version (full or minor, see
// ResolveKubernetes).
func Components(kubernetesVersion string) (ComponentSet, error) {
	v, err := ResolveKubernetes(kubernetesVersion)
	if err != nil {
		return ComponentSet{}, err
	}
	set, ok := pinnedComponents[v]
	if !ok {
		return ComponentSet{}, fmt.Errorf("no pinned components for Kubernetes %s", v)
	}
	out := ComponentSet{Kubernetes: set.Kubernetes, Go: set.Go, Components: slices.Clone(set.Components)}
	for i := range out.Components {
		c := &out.Components[i]
		switch {
		case c.Kind == Binary && slices.Contains(nodeBinaries, c.Name):
			c.InstallPath, c.Mode = NodeBinDir+"/"+c.Name, 0o755
		case c.Kind == Image:
			c.InstallPath, c.Mode = NodeImageDir+"/"+c.Name, 0o644
			c.ControlPlaneOnly = slices.Contains(controlPlaneImages, c.Name)
		}
	}
	return out, nil
}

// ForNode returns the components a node installs of a list its cluster hands every node: for a node that is
// not a control plane, without the images only control planes run (kubeadm's static pods). A worker never
// runs them, and verifying and importing them into containerd cost it seconds at every join, upgrade and
// restart (a restarted node imports its images again before its pods can start).
func ForNode(comps []*components.Component, controlPlane bool) []*components.Component {
	if controlPlane {
		return comps
	}
	return slices.DeleteFunc(slices.Clone(comps), func(c *components.Component) bool {
		return c.GetImage() != "" && slices.Contains(controlPlaneImages, c.GetName())
	})
}

// Component returns the named component of the set.
func (s ComponentSet) Component(name string) (Component, bool) {
	for _, c := range s.Components {
		if c.Name == name {
			return c, true
		}
	}
	return Component{}, false
}

// NodeComponents returns what a node installs: kubeadm, kubelet, kubectl and the images; workers skip the
// control plane's images.
func (s ComponentSet) NodeComponents(controlPlane bool) []Component {
	var out []Component
	for _, c := range s.Components {
		if c.InstallPath == "" || (c.ControlPlaneOnly && !controlPlane) {
			continue
		}
		out = append(out, c)
	}
	return out
}

// URLPath is where the component server serves a component: "/<kubernetes version>/<name>".
func URLPath(kubernetesVersion, name string) string {
	return "/" + kubernetesVersion + "/" + name
}

// Proto converts node components to the InitRequest's list: each URL is baseURL (the component server,
// e.g. "http://10.42.0.1:8080") + URLPath.
func (s ComponentSet) Proto(baseURL string, comps []Component) []*components.Component {
	baseURL = strings.TrimSuffix(baseURL, "/")
	out := make([]*components.Component, 0, len(comps))
	for _, c := range comps {
		out = append(out, &components.Component{
			Url:         baseURL + URLPath(s.Kubernetes, c.Name),
			Hash:        "sha256:" + c.SHA256,
			InstallPath: c.InstallPath,
			Name:        c.Name,
			Mode:        uint32(c.Mode.Perm()),
			Size:        c.Size,
			Image:       c.Image,
		})
	}
	return out
}

// CacheDir is where bazel/kubernetes/build.sh puts a version's components:
// ${CONSTELLATION_CACHE:-/var/cache/constellation}/kubernetes/<version>.
func CacheDir(kubernetesVersion string) string {
	cache := os.Getenv("CONSTELLATION_CACHE")
	if cache == "" {
		cache = "/var/cache/constellation"
	}
	return filepath.Join(cache, "kubernetes", kubernetesVersion)
}

// pinnedVersions returns the versions with pinned components, oldest first.
func pinnedVersions() []string {
	var vs []string
	for v := range pinnedComponents {
		vs = append(vs, v)
	}
	semver.Sort(vs)
	return vs
}

// Built tells whether this machine has built every component of a supported version: the build writes its
// record (components.json) last.
func Built(kubernetesVersion string) bool {
	v, err := ResolveKubernetes(kubernetesVersion)
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(CacheDir(v), "components.json"))
	return err == nil
}

// LocalComponents returns the pinned components of a version as Components does, except for an image
// made of Debian packages (kube-proxy's) that this machine had to build from other package versions than
// the pins, because Debian's archive no longer serves the pinned ones (bazel/kubernetes/build.sh without
// --locked). Such an image is accepted with the hash of this machine's build, and a notice says so; the
// build's record (components.json in the version's cache directory) must show that the image holds the
// pinned binary and other packages than the pins, so that nothing but Debian's move can explain the
// difference. Every other component keeps its pin. Without a record, the pins are returned unchanged (the
// component server then names what is missing).
func LocalComponents(kubernetesVersion string) (ComponentSet, []string, error) {
	set, err := Components(kubernetesVersion)
	if err != nil {
		return ComponentSet{}, nil, err
	}
	data, err := os.ReadFile(filepath.Join(CacheDir(set.Kubernetes), "components.json"))
	if errors.Is(err, os.ErrNotExist) {
		return set, nil, nil
	}
	if err != nil {
		return ComponentSet{}, nil, err
	}
	var idx struct {
		Components []struct {
			Name         string          `json:"name"`
			SHA256       string          `json:"sha256"`
			Size         int64           `json:"size"`
			ImageID      string          `json:"imageID"`
			BinarySHA256 string          `json:"binarySHA256"`
			Debs         []DebianPackage `json:"debs"`
		} `json:"components"`
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return ComponentSet{}, nil, fmt.Errorf("reading the record of the local Kubernetes %s build: %w", set.Kubernetes, err)
	}
	var notices []string
	for i, c := range set.Components {
		if len(c.Debs) == 0 {
			continue
		}
		for _, local := range idx.Components {
			if local.Name != c.Name || local.SHA256 == c.SHA256 || slices.Equal(local.Debs, c.Debs) || len(local.Debs) == 0 {
				continue
			}
			bin, ok := set.Component(strings.TrimSuffix(c.Name, ".tar"))
			if !ok || local.BinarySHA256 != bin.SHA256 {
				continue
			}
			set.Components[i].SHA256, set.Components[i].Size, set.Components[i].ImageID = local.SHA256, local.Size, local.ImageID
			set.Components[i].Debs = local.Debs
			notices = append(notices, fmt.Sprintf("the %s image of Kubernetes %s was built on this machine from Debian packages other than this "+
				"release pins (%s), because Debian's archive no longer serves the pinned versions: nodes install this machine's "+
				"build (sha256 %s) instead of the release's (%s). bazel/kubernetes/build.sh --locked refuses such a build.",
				strings.TrimSuffix(c.Name, ".tar"), set.Kubernetes, debsChange(c.Debs, local.Debs), local.SHA256, c.SHA256))
		}
	}
	return set, notices, nil
}

// debsChange names the packages whose versions differ: "libc6 2.36-9+deb12u14 -> 2.36-9+deb12u15".
func debsChange(pinned, local []DebianPackage) string {
	have, want := map[string]string{}, map[string]bool{}
	for _, d := range local {
		have[d.Package] = d.Version
	}
	var out []string
	for _, d := range pinned {
		want[d.Package] = true
		switch v, ok := have[d.Package]; {
		case !ok:
			out = append(out, d.Package+" "+d.Version+" -> (none)")
		case v != d.Version:
			out = append(out, d.Package+" "+d.Version+" -> "+v)
		}
	}
	for _, d := range local {
		if !want[d.Package] {
			out = append(out, d.Package+" (none) -> "+d.Version)
		}
	}
	if len(out) == 0 {
		return "same versions, other files"
	}
	return strings.Join(out, ", ")
}
