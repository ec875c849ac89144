package images

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/constellation-go/constellation/bazel/oci/ociimage"
	fileio "github.com/constellation-go/constellation/internal/file"
)

// recipe changes when the way images are built changes in a way the stamp's other inputs do not capture.
const recipe = 1

// Config is what BuildAll needs.
type Config struct {
	// Dir is the version's cache directory: binaries are read from Dir/bin, images written to Dir/images,
	// the index to Dir/components.json.
	Dir      string
	Versions Versions
	// DebsDir holds the packages of Debs (kube-proxy's iptables).
	DebsDir string
	Debs    []Deb
	// BinaryVersions maps each binary that may be present in Dir/bin to its upstream version, for the index.
	BinaryVersions map[string]string
	// GoVersion is `go version` of the toolchain that built the binaries.
	GoVersion string
	// Tool identifies the image builder itself (e.g. the sha256 of its executable); it is part of the stamp.
	Tool string
	// Log receives one line per image.
	Log func(format string, args ...any)
}

// BinaryNames is the order binaries appear in the index.
var BinaryNames = []string{
	"kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy",
	"etcd", "coredns", "pause",
}

// stamp records an image's inputs and result; an image whose stamp matches is not rebuilt.
type stamp struct {
	Recipe  int    `json:"recipe"`
	Tool    string `json:"tool"`
	Image   Image  `json:"image"`
	Binary  string `json:"binarySHA256"`
	Debs    []Deb  `json:"debs,omitempty"`
	SHA256  string `json:"sha256,omitempty"`
	ImageID string `json:"imageID,omitempty"`
}

// BuildAll builds every image of the version set that is missing or stale, then writes the index.
func BuildAll(cfg Config) (Index, error) {
	logf := cfg.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	binDir := filepath.Join(cfg.Dir, "bin")
	imgDir := filepath.Join(cfg.Dir, "images")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return Index{}, err
	}
	var debFiles []ociimage.File
	idx := Index{Kubernetes: cfg.Versions.Kubernetes, Go: cfg.GoVersion}
	var imageEntries []IndexEntry
	for _, img := range For(cfg.Versions) {
		start := time.Now()
		bin := filepath.Join(binDir, img.Name)
		binSum, err := fileio.SHA256(bin)
		if err != nil {
			return Index{}, fmt.Errorf("image %s needs %s: %w (build it with bazel/kubernetes/build.sh --version %s %s)", img.Name, bin, err, cfg.Versions.Kubernetes, img.Name)
		}
		want := stamp{Recipe: recipe, Tool: cfg.Tool, Image: img, Binary: binSum}
		if img.Iptables {
			want.Debs = cfg.Debs
		}
		archive := filepath.Join(imgDir, img.Name+".tar")
		stampFile := filepath.Join(imgDir, "."+img.Name+".stamp")
		if got, ok := cached(stampFile, archive, want); ok {
			logf("%s: cached (%s)", img.Ref, archive)
			imageEntries = append(imageEntries, imageEntry(img, cfg.Versions, got))
			continue
		}
		binary, err := os.ReadFile(bin)
		if err != nil {
			return Index{}, err
		}
		if img.Iptables && debFiles == nil {
			if debFiles, err = DebFiles(cfg.DebsDir, cfg.Debs); err != nil {
				return Index{}, err
			}
		}
		spec, err := Build(img, binary, debFiles)
		if err != nil {
			return Index{}, err
		}
		image, err := ociimage.Build(spec)
		if err != nil {
			return Index{}, fmt.Errorf("image %s: %w", img.Name, err)
		}
		id, err := image.ConfigName()
		if err != nil {
			return Index{}, err
		}
		if err := writeArchive(archive, img.Ref, func(w *bufio.Writer) error { return ociimage.WriteArchive(w, img.Ref, image) }); err != nil {
			return Index{}, fmt.Errorf("image %s: %w", img.Name, err)
		}
		sum, err := fileio.SHA256(archive)
		if err != nil {
			return Index{}, err
		}
		want.SHA256, want.ImageID = sum, id.String()
		data, err := json.MarshalIndent(want, "", "  ")
		if err != nil {
			return Index{}, err
		}
		if err := writeFileAtomic(stampFile, append(data, '\n')); err != nil {
			return Index{}, err
		}
		logf("%s: built in %.1f s (%s)", img.Ref, time.Since(start).Seconds(), archive)
		imageEntries = append(imageEntries, imageEntry(img, cfg.Versions, want))
	}
	for _, name := range BinaryNames {
		file := filepath.Join(binDir, name)
		fi, err := os.Stat(file)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return Index{}, err
		}
		sum, err := fileio.SHA256(file)
		if err != nil {
			return Index{}, err
		}
		v, ok := cfg.BinaryVersions[name]
		if !ok {
			return Index{}, fmt.Errorf("no version given for binary %s", name)
		}
		idx.Components = append(idx.Components, IndexEntry{
			Name: name, Kind: "binary", Version: v, File: "bin/" + name, SHA256: sum, Size: fi.Size(),
		})
	}
	for i, e := range imageEntries {
		fi, err := os.Stat(filepath.Join(cfg.Dir, e.File))
		if err != nil {
			return Index{}, err
		}
		imageEntries[i].Size = fi.Size()
	}
	idx.Components = append(idx.Components, imageEntries...)
	data, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return Index{}, err
	}
	return idx, writeFileAtomic(filepath.Join(cfg.Dir, "components.json"), append(data, '\n'))
}

func imageEntry(img Image, v Versions, s stamp) IndexEntry {
	version := v.Kubernetes
	switch img.Name {
	case "etcd":
		version = v.EtcdTag
	case "coredns":
		version = v.CoreDNS
	case "pause":
		version = v.Pause
	}
	return IndexEntry{
		Name: img.Name + ".tar", Kind: "image", Version: version, File: "images/" + img.Name + ".tar",
		SHA256: s.SHA256, Image: img.Ref, ImageID: s.ImageID, BinarySHA256: s.Binary, Debs: s.Debs,
	}
}

// cached returns the stamp if the archive was built from want's inputs and still has the recorded hash.
func cached(stampFile, archive string, want stamp) (stamp, bool) {
	data, err := os.ReadFile(stampFile)
	if err != nil {
		return stamp{}, false
	}
	var got stamp
	if err := json.Unmarshal(data, &got); err != nil || got.SHA256 == "" {
		return stamp{}, false
	}
	inputs := got
	inputs.SHA256, inputs.ImageID = "", ""
	a, _ := json.Marshal(inputs)
	b, _ := json.Marshal(want)
	if !bytes.Equal(a, b) {
		return stamp{}, false
	}
	sum, err := fileio.SHA256(archive)
	if err != nil || sum != got.SHA256 {
		return stamp{}, false
	}
	return got, true
}

func writeArchive(file, ref string, write func(*bufio.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriterSize(tmp, 1<<20)
	if err := write(w); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("writing %s: %w", ref, err)
	}
	if err := w.Flush(); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

func writeFileAtomic(file string, data []byte) error {
	return writeArchive(file, file, func(w *bufio.Writer) error {
		_, err := w.Write(data)
		return err
	})
}
