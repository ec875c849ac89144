// Package images builds the container images kubeadm runs the Kubernetes control plane and its add-ons
// from (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, etcd, CoreDNS, pause), from the
// binaries bazel/kubernetes/build.sh builds, without a registry: each image is a docker-archive tarball
// (`ctr -n k8s.io images import`) tagged exactly as kubeadm references it, e.g.
// registry.k8s.io/kube-apiserver:v1.33.13. Images are reproducible (see bazel/oci/ociimage).
//
// kube-proxy execs iptables, iptables-save and iptables-restore (and their ip6tables variants), so its image
// also holds Debian's iptables and the libraries it needs, taken from the Debian packages pinned in
// bazel/kubernetes/debs.lock (the versions the node image has, image/mkosi/packages.lock). The plain
// iptables names point at the nf_tables variant, Debian's default and what the node's own iptables (kubelet,
// CNI plugins) uses, so all of them program the same tables.
package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/constellation-go/constellation/bazel/oci/ociimage"
	fileio "github.com/constellation-go/constellation/internal/file"
)

// Registry is the registry kubeadm's default image references name (kubeadm's DefaultImageRepository).
const Registry = "registry.k8s.io"

// Versions are the versions of one Kubernetes version set, as kubeadm of that version expects them.
type Versions struct {
	// Kubernetes is the full version, e.g. "v1.33.13".
	Kubernetes string
	// EtcdTag is kubeadm's etcd image tag (constants.SupportedEtcdVersion), e.g. "3.5.24-0".
	EtcdTag string
	// CoreDNS is kubeadm's constants.CoreDNSVersion, e.g. "v1.12.0".
	CoreDNS string
	// Pause is kubeadm's constants.PauseVersion, e.g. "3.10".
	Pause string
}

// Image describes one image.
type Image struct {
	// Name is the image's file name without ".tar" and the name of the binary it is made of.
	Name string
	// Ref is the reference kubeadm uses.
	Ref string
	// Path is where the binary is in the image.
	Path string
	// User the container runs as unless the pod says otherwise.
	User string
	// Iptables adds Debian's iptables (nf_tables) from the pinned packages, and /usr/sbin to PATH.
	Iptables bool
	// NetBindService gives the binary the file capability cap_net_bind_service=+ep (setcap), so it can bind
	// ports below 1024 as an unprivileged user.
	NetBindService bool
	// Tmp adds a world-writable /tmp (mode 1777), as distroless base images have.
	Tmp bool
}

// For returns the images of a version set, in a fixed order.
func For(v Versions) []Image {
	// kubeadm: util.KubernetesVersionToImageTag replaces anything but [-\w.] with "_".
	tag := strings.Map(func(r rune) rune {
		if r == '-' || r == '.' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
			return r
		}
		return '_'
	}, v.Kubernetes)
	// Control-plane images run as root, as upstream's do: kubeadm's static pods read root-only keys.
	kube := func(name string) Image {
		return Image{Name: name, Ref: Registry + "/" + name + ":" + tag, Path: "/usr/local/bin/" + name, User: "0:0", Tmp: true}
	}
	proxy := kube("kube-proxy")
	proxy.Iptables = true
	return []Image{
		kube("kube-apiserver"),
		kube("kube-controller-manager"),
		kube("kube-scheduler"),
		proxy,
		// kubeadm's etcd manifest runs "etcd" from PATH (/usr/local/bin is on it).
		{Name: "etcd", Ref: Registry + "/etcd:" + v.EtcdTag, Path: "/usr/local/bin/etcd", User: "0:0", Tmp: true},
		// kubeadm renames the default repository's CoreDNS to registry.k8s.io/coredns/coredns. Like upstream's
		// image, CoreDNS runs unprivileged with the file capability to bind port 53 (kubeadm's Deployment drops
		// every other capability and adds NET_BIND_SERVICE).
		{Name: "coredns", Ref: Registry + "/coredns/coredns:" + v.CoreDNS, Path: "/coredns", User: "65532:65532", NetBindService: true},
		// Upstream's pause image runs as 65535.
		{Name: "pause", Ref: Registry + "/pause:" + v.Pause, Path: "/pause", User: "65535:65535"},
	}
}

// netBindServiceCapability is the value of the "security.capability" extended attribute that
// `setcap cap_net_bind_service=+ep` writes: struct vfs_cap_data revision 2 (magic 0x02000000 | effective
// 0x1), permitted = 1 << CAP_NET_BIND_SERVICE (10), inheritable 0, upper 32 bits 0; little endian.
var netBindServiceCapability = string([]byte{
	0x01, 0x00, 0x00, 0x02, // magic_etc
	0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // permitted, inheritable (lower 32 bits)
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // permitted, inheritable (upper 32 bits)
})

// Deb is a pinned Debian package (a line of debs.lock).
type Deb struct {
	Package string `json:"package"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
}

// FileName is the package's file name in the debs directory: "<package>_<version>.deb", ":" as "%3a".
func (d Deb) FileName() string {
	return d.Package + "_" + strings.ReplaceAll(d.Version, ":", "%3a") + ".deb"
}

// ParseDebsLock reads debs.lock: "<package> <version> <sha256>" per line; "#" starts a comment.
func ParseDebsLock(r io.Reader) ([]Deb, error) {
	var debs []Deb
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || len(f[2]) != 64 {
			return nil, fmt.Errorf("debs.lock line %d: want \"<package> <version> <sha256>\", got %q", n, line)
		}
		if _, err := hex.DecodeString(f[2]); err != nil {
			return nil, fmt.Errorf("debs.lock line %d: sha256 %q: %w", n, f[2], err)
		}
		debs = append(debs, Deb{Package: f[0], Version: f[1], SHA256: f[2]})
	}
	return debs, s.Err()
}

// skipDebPath drops what a command-line tool in a container never reads: documentation, locales,
// charset converters and package-maintenance data.
func skipDebPath(p string) bool {
	for _, prefix := range []string{"/usr/share/", "/usr/lib/x86_64-linux-gnu/gconv/", "/usr/libexec/", "/etc/ld.so.conf.d/"} {
		if strings.HasPrefix(p+"/", prefix) {
			return true
		}
	}
	return false
}

// iptablesLinks are the names Debian's update-alternatives would create, pointing at the nf_tables variant.
var iptablesLinks = []string{"iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"}

// DebFiles returns the files of the pinned packages (read with dpkg-deb from dir), verified against their
// pins, plus the iptables links, ready for an image layer.
func DebFiles(dir string, debs []Deb) ([]ociimage.File, error) {
	byPath := map[string]ociimage.File{}
	var order []string
	for _, d := range debs {
		file := filepath.Join(dir, d.FileName())
		sum, err := fileio.SHA256(file)
		if err != nil {
			return nil, fmt.Errorf("package %s=%s: %w (bazel/kubernetes/build.sh images fetches it)", d.Package, d.Version, err)
		}
		if sum != d.SHA256 {
			return nil, fmt.Errorf("package %s=%s (%s) has sha256 %s, debs.lock pins %s", d.Package, d.Version, file, sum, d.SHA256)
		}
		out, err := exec.Command("dpkg-deb", "--fsys-tarfile", file).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("%w: %s", err, ee.Stderr)
			}
			return nil, fmt.Errorf("reading %s with dpkg-deb: %w", file, err)
		}
		files, err := tarFiles(bytes.NewReader(out))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", file, err)
		}
		for _, f := range files {
			if skipDebPath(f.Path) {
				continue
			}
			if prev, ok := byPath[f.Path]; ok {
				if prev.Dir && f.Dir {
					continue
				}
				return nil, fmt.Errorf("%s is in two packages (the second is %s)", f.Path, d.Package)
			}
			byPath[f.Path] = f
			order = append(order, f.Path)
		}
	}
	for _, name := range iptablesLinks {
		p := "/usr/sbin/" + name
		if _, ok := byPath[p]; ok {
			return nil, fmt.Errorf("%s is already in the packages", p)
		}
		target := strings.Replace(name, "tables", "tables-nft", 1)
		if _, ok := byPath["/usr/sbin/"+target]; !ok {
			return nil, fmt.Errorf("/usr/sbin/%s is missing from the packages (is iptables in debs.lock?)", target)
		}
		byPath[p] = ociimage.File{Path: p, Linkname: target}
		order = append(order, p)
	}
	sort.Strings(order)
	files := make([]ociimage.File, 0, len(order))
	for _, p := range order {
		files = append(files, byPath[p])
	}
	return files, nil
}

// tarFiles turns a package's data tar into layer entries; hard links become copies.
func tarFiles(r io.Reader) ([]ociimage.File, error) {
	tr := tar.NewReader(r)
	var files []ociimage.File
	content := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		p := path.Clean("/" + h.Name)
		if p == "/" {
			continue
		}
		mode := h.Mode & 0o7777
		switch h.Typeflag {
		case tar.TypeDir:
			files = append(files, ociimage.File{Path: p, Dir: true, Mode: mode})
		case tar.TypeSymlink:
			files = append(files, ociimage.File{Path: p, Linkname: h.Linkname})
		case tar.TypeLink:
			data, ok := content[path.Clean("/"+h.Linkname)]
			if !ok {
				return nil, fmt.Errorf("hard link %s to unknown %s", p, h.Linkname)
			}
			files = append(files, ociimage.File{Path: p, Data: data, Mode: mode})
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			if data == nil {
				data = []byte{}
			}
			content[p] = data
			files = append(files, ociimage.File{Path: p, Data: data, Mode: mode})
		default:
			return nil, fmt.Errorf("%s: unsupported entry type %q", p, h.Typeflag)
		}
	}
}

// Build builds one image from its binary (and, for kube-proxy, the package files).
func Build(img Image, binary []byte, debFiles []ociimage.File) (ociimage.Spec, error) {
	spec := ociimage.Spec{Binary: binary, BinaryPath: img.Path, User: img.User, Tag: img.Ref}
	if img.NetBindService {
		spec.BinaryXattrs = map[string]string{"security.capability": netBindServiceCapability}
	}
	if img.Tmp {
		spec.Files = append(spec.Files, ociimage.File{Path: "/tmp", Dir: true, Mode: 0o1777})
	}
	if img.Iptables {
		if len(debFiles) == 0 {
			return ociimage.Spec{}, fmt.Errorf("image %s needs the iptables packages", img.Name)
		}
		spec.Files = append(spec.Files, debFiles...)
		spec.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	return spec, nil
}

// Index lists every file of a version set in the cache: bazel/kubernetes/build.sh writes it as
// components.json beside bin/ and images/, and bazel/kubernetes/pin.sh turns it into Go.
type Index struct {
	Kubernetes string `json:"kubernetes"`
	// Go is `go version` of the toolchain that built the binaries.
	Go         string       `json:"go"`
	Components []IndexEntry `json:"components"`
}

// IndexEntry is one file.
type IndexEntry struct {
	// Name is unique within the version: the binary's name, or "<image>.tar".
	Name    string `json:"name"`
	Kind    string `json:"kind"` // "binary" or "image"
	Version string `json:"version"`
	// File is relative to the version's directory: "bin/kubelet", "images/pause.tar".
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Image and ImageID (the config digest) are set for images.
	Image   string `json:"image,omitempty"`
	ImageID string `json:"imageID,omitempty"`
	// BinarySHA256 is the sha256 of the binary an image was made of (images only).
	BinarySHA256 string `json:"binarySHA256,omitempty"`
	// Debs are the Debian packages whose files the image holds (kube-proxy's iptables), as built: when
	// Debian no longer serves a version debs.lock pins, a build takes today's (see bazel/kubernetes/build.sh).
	Debs []Deb `json:"debs,omitempty"`
}

// ReadIndex reads a components.json.
func ReadIndex(file string) (Index, error) {
	var idx Index
	data, err := os.ReadFile(file)
	if err != nil {
		return idx, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&idx); err != nil {
		return idx, fmt.Errorf("%s: %w", file, err)
	}
	return idx, nil
}
