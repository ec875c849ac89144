// Command kubecomponents is the Go half of bazel/kubernetes/build.sh and pin.sh:
//
//	kubecomponents images --kubernetes-version v1.33.13 --dir <cache>/kubernetes/v1.33.13 ...
//	    builds the container images of a version set from its binaries and writes components.json
//	kubecomponents pin --cache <cache>/kubernetes --out internal/versions/pinned_components.go v1.33.13 ...
//	    turns each version's components.json into the Go pins of internal/versions
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/constellation-go/constellation/internal/components/images"
	fileio "github.com/constellation-go/constellation/internal/file"
	"golang.org/x/mod/semver"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kubecomponents images|pin [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "images":
		err = imagesCmd(os.Args[2:])
	case "pin":
		err = pinCmd(os.Args[2:], os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q: want images or pin", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubecomponents:", err)
		os.Exit(1)
	}
}

func imagesCmd(args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	kube := fs.String("kubernetes-version", "", "Kubernetes version, e.g. v1.33.13")
	dir := fs.String("dir", "", "the version's cache directory (with bin/)")
	debsDir := fs.String("debs", "", "directory with the packages of --debs-lock")
	debsLock := fs.String("debs-lock", "", "debs.lock")
	etcdVersion := fs.String("etcd-version", "", "etcd module version, e.g. v3.5.24")
	etcdTag := fs.String("etcd-tag", "", "kubeadm's etcd image tag, e.g. 3.5.24-0")
	coredns := fs.String("coredns-version", "", "CoreDNS version, e.g. v1.12.0")
	pause := fs.String("pause-version", "", "pause version, e.g. 3.10")
	goVersion := fs.String("go-version", "", "`go version` of the toolchain that built the binaries")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for name, v := range map[string]string{
		"kubernetes-version": *kube, "dir": *dir, "debs": *debsDir, "debs-lock": *debsLock, "etcd-version": *etcdVersion,
		"etcd-tag": *etcdTag, "coredns-version": *coredns, "pause-version": *pause, "go-version": *goVersion,
	} {
		if v == "" {
			return fmt.Errorf("--%s is required", name)
		}
	}
	lock, err := os.Open(*debsLock)
	if err != nil {
		return err
	}
	debs, err := images.ParseDebsLock(lock)
	_ = lock.Close()
	if err != nil {
		return err
	}
	tool, err := selfHash()
	if err != nil {
		return err
	}
	binaryVersions := map[string]string{"etcd": *etcdVersion, "coredns": *coredns, "pause": *pause}
	for _, b := range images.BinaryNames {
		if _, ok := binaryVersions[b]; !ok {
			binaryVersions[b] = *kube
		}
	}
	_, err = images.BuildAll(images.Config{
		Dir:            *dir,
		Versions:       images.Versions{Kubernetes: *kube, EtcdTag: *etcdTag, CoreDNS: *coredns, Pause: *pause},
		DebsDir:        *debsDir,
		Debs:           debs,
		BinaryVersions: binaryVersions,
		GoVersion:      *goVersion,
		Tool:           tool,
		Log:            func(format string, args ...any) { fmt.Printf(format+"\n", args...) },
	})
	return err
}

// selfHash identifies this tool's code: a change to the image builder rebuilds the images.
func selfHash() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return fileio.SHA256(exe)
}

func pinCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("pin", flag.ContinueOnError)
	cache := fs.String("cache", "", "the kubernetes cache directory (holding <version>/components.json)")
	out := fs.String("out", "", "Go file to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cache == "" || *out == "" || fs.NArg() == 0 {
		return errors.New("usage: pin --cache DIR --out FILE VERSION [VERSION ...]")
	}
	var idxs []images.Index
	for _, v := range fs.Args() {
		idx, err := images.ReadIndex(filepath.Join(*cache, v, "components.json"))
		if err != nil {
			return fmt.Errorf("%s: %w (build the set first: bazel/kubernetes/build.sh --version %s all)", v, err, v)
		}
		if idx.Kubernetes != v {
			return fmt.Errorf("%s/components.json is for %s", v, idx.Kubernetes)
		}
		if err := complete(idx); err != nil {
			return fmt.Errorf("%s: %w (build the set first: bazel/kubernetes/build.sh --version %s all)", v, err, v)
		}
		idxs = append(idxs, idx)
	}
	src, err := generate(idxs)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%s)\n", *out, strings.Join(fs.Args(), ", "))
	return nil
}

// complete fails unless the index has every binary and image of a version set.
func complete(idx images.Index) error {
	have := map[string]bool{}
	for _, c := range idx.Components {
		have[c.Name] = true
	}
	want := slices.Clone(images.BinaryNames)
	for _, img := range images.For(images.Versions{Kubernetes: idx.Kubernetes}) {
		want = append(want, img.Name+".tar")
	}
	var missing []string
	for _, w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("components.json lacks %s", strings.Join(missing, ", "))
	}
	if len(idx.Components) != len(want) {
		return fmt.Errorf("components.json has %d components, want %d", len(idx.Components), len(want))
	}
	return nil
}

func generate(idxs []images.Index) ([]byte, error) {
	sort.Slice(idxs, func(i, j int) bool { return semver.Compare(idxs[i].Kubernetes, idxs[j].Kubernetes) < 0 })
	var b bytes.Buffer
	b.WriteString("// Code generated by bazel/kubernetes/pin.sh from a build by bazel/kubernetes/build.sh; DO NOT EDIT.\n\n")
	b.WriteString("package versions\n\n")
	b.WriteString("// pinnedComponents holds, for each supported Kubernetes version, every component's sha256 as\n")
	b.WriteString("// bazel/kubernetes/build.sh builds it. Install paths are added by Components.\n")
	b.WriteString("var pinnedComponents = map[string]ComponentSet{\n")
	for _, idx := range idxs {
		fmt.Fprintf(&b, "%q: {\nKubernetes: %q,\nGo: %q,\nComponents: []Component{\n", idx.Kubernetes, idx.Kubernetes, idx.Go)
		for _, c := range idx.Components {
			kind := "Binary"
			if c.Kind == "image" {
				kind = "Image"
			}
			fmt.Fprintf(&b, "{Name: %q, Kind: %s, Version: %q, File: %q, SHA256: %q, Size: %d", c.Name, kind, c.Version, c.File, c.SHA256, c.Size)
			if c.Image != "" {
				fmt.Fprintf(&b, ", Image: %q, ImageID: %q", c.Image, c.ImageID)
			}
			if len(c.Debs) > 0 {
				b.WriteString(", Debs: []DebianPackage{\n")
				for _, d := range c.Debs {
					fmt.Fprintf(&b, "{Package: %q, Version: %q, SHA256: %q},\n", d.Package, d.Version, d.SHA256)
				}
				b.WriteString("}")
			}
			b.WriteString("},\n")
		}
		b.WriteString("},\n},\n")
	}
	b.WriteString("}\n")
	return format.Source(b.Bytes())
}
