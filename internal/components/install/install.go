// Package install downloads, verifies and installs Kubernetes components on a node (the bootstrapper's
// side of the component server).
//
// For each component the installer streams the download into a temporary file in the destination directory
// while hashing it, checks the sha256 before the file becomes visible under its name, then sets its mode and
// renames it into place atomically. A file already installed with the right hash is not downloaded again; one
// with another hash is replaced. A container image (a docker-archive tarball) is then imported into
// containerd with `ctr --address <socket> -n k8s.io images import <file>` (every time: containerd keeps
// content it already has) and the installer checks that containerd now has the pinned reference. A wrong
// hash stops the installation with a *HashMismatchError that names the component, both hashes and what to
// do.
//
//	comps, err := install.FromProto(req.KubernetesComponents)
//	err = (&install.Installer{ContainerdAddress: "/run/containerd/containerd.sock"}).Install(ctx, comps)
package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	fileio "github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// Component is a file to install.
type Component struct {
	// Name is used in logs and errors.
	Name string
	URL  string
	// SHA256 is the expected hex sha256.
	SHA256 string
	// Size is the expected size in bytes; 0 if unknown (then Installer.MaxSize caps the download).
	Size int64
	// InstallPath is absolute.
	InstallPath string
	// Mode holds the permission bits; 0 means 0644.
	Mode os.FileMode
	// Image, if set, is the reference of the docker-archive tarball's image: after installing it the file is
	// imported into containerd.
	Image string
}

// FromProto converts the InitRequest's components.
func FromProto(pcs []*components.Component) ([]Component, error) {
	out := make([]Component, 0, len(pcs))
	for i, pc := range pcs {
		name := pc.GetName()
		if name == "" {
			name = filepath.Base(pc.GetInstallPath())
		}
		sum, ok := strings.CutPrefix(pc.GetHash(), "sha256:")
		if !ok {
			return nil, fmt.Errorf("component %d (%s): hash %q is not \"sha256:<hex>\"", i, name, pc.GetHash())
		}
		if pc.GetExtract() {
			return nil, fmt.Errorf("component %s: extracting archives is not supported", name)
		}
		if pc.GetMode() > 0o7777 {
			return nil, fmt.Errorf("component %s: mode %o is not a permission mode", name, pc.GetMode())
		}
		out = append(out, Component{
			Name: name, URL: pc.GetUrl(), SHA256: sum, Size: pc.GetSize(), InstallPath: pc.GetInstallPath(),
			Mode: os.FileMode(pc.GetMode()), Image: pc.GetImage(),
		})
	}
	return out, nil
}

// HashMismatchError is returned when a downloaded file is not the pinned one.
type HashMismatchError struct {
	Component, URL, Expected, Actual string
}

func (e *HashMismatchError) Error() string {
	return fmt.Sprintf("component %s from %s has sha256 %s, expected %s: the component server serves a different build; "+
		"rebuild with bazel/kubernetes/build.sh or fix the pin (internal/versions, bazel/kubernetes/pin.sh)",
		e.Component, e.URL, e.Actual, e.Expected)
}

// Installer installs components. The zero value is usable.
type Installer struct {
	// Client defaults to an HTTP client that uses no proxy.
	Client *http.Client
	// Root is prepended to every install path (tests); empty on nodes.
	Root string
	// Timeout bounds each component's download; default 5 minutes.
	Timeout time.Duration
	// MaxSize caps a download whose component has no Size; default 1 GiB.
	MaxSize int64
	// Attempts is how often a download is tried when it fails for a reason other than a wrong hash or
	// size (connection errors, 5xx, cut-off bodies); default 3.
	Attempts int
	// Ctr is the ctr binary; default "ctr". ContainerdAddress defaults to /run/containerd/containerd.sock.
	Ctr               string
	ContainerdAddress string
	// SandboxImage, if set, is containerd's pod sandbox image (sandbox_image in its configuration, fixed by
	// the node image): every pause image installed is also tagged with it, so that pods start whatever pause
	// image the Kubernetes version pins (v1.34's is not v1.33's; a pause container only holds the pod's
	// namespaces, any of them does).
	SandboxImage string
	// Log defaults to a discarding logger.
	Log *slog.Logger

	// importImage replaces running ctr (tests).
	importImage func(ctx context.Context, file string, c Component) error
}

const (
	defaultTimeout = 5 * time.Minute
	defaultMaxSize = 1 << 30
	// namespace is where the kubelet's CRI looks for images.
	namespace = "k8s.io"
)

// Install installs the images, then the other files, each group in order, and stops at the first failure.
// Images first: a file's arrival may start a program whose work needs them (the bootstrapper's kubelet
// supervisor starts the kubelet as soon as its binary is there, and a pod whose image is not imported yet
// fails and waits out the kubelet's back-off, 10 s and more, since nodes reach no registry).
func (in *Installer) Install(ctx context.Context, comps []Component) error {
	ordered := slices.Clone(comps)
	slices.SortStableFunc(ordered, func(a, b Component) int {
		return imageRank(a) - imageRank(b)
	})
	for _, c := range ordered {
		if err := in.InstallOne(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

func imageRank(c Component) int {
	if c.Image != "" {
		return 0
	}
	return 1
}

// InstallOne installs one component (and imports it if it is an image).
func (in *Installer) InstallOne(ctx context.Context, c Component) error {
	if err := validate(c); err != nil {
		return err
	}
	dest := filepath.Join(in.Root, c.InstallPath)
	log := in.log().With("component", c.Name, "path", dest)
	sum, err := fileio.SHA256(dest)
	switch {
	case err == nil && sum == c.SHA256:
		log.Info("already installed")
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("component %s: checking %s: %w", c.Name, dest, err)
	default:
		if err == nil {
			log.Warn("installed file has the wrong hash; downloading again", "sha256", sum, "expected", c.SHA256)
		}
		if err := in.download(ctx, c, dest); err != nil {
			return err
		}
		log.Info("installed")
	}
	// Re-apply the mode: an earlier install may have left another one.
	if err := os.Chmod(dest, mode(c)); err != nil {
		return fmt.Errorf("component %s: %w", c.Name, err)
	}
	if c.Image == "" {
		return nil
	}
	imp := in.importImage
	if imp == nil {
		imp = in.ctrImport
	}
	if err := imp(ctx, dest, c); err != nil {
		return fmt.Errorf("component %s: importing image %s into containerd: %w", c.Name, c.Image, err)
	}
	log.Info("imported image", "image", c.Image)
	return nil
}

func validate(c Component) error {
	if c.Name == "" {
		return errors.New("a component has no name")
	}
	if len(c.SHA256) != 64 {
		return fmt.Errorf("component %s: sha256 %q is not 64 hex digits", c.Name, c.SHA256)
	}
	if _, err := hex.DecodeString(c.SHA256); err != nil || strings.ToLower(c.SHA256) != c.SHA256 {
		return fmt.Errorf("component %s: sha256 %q is not lower-case hex", c.Name, c.SHA256)
	}
	if !filepath.IsAbs(c.InstallPath) || filepath.Clean(c.InstallPath) != c.InstallPath || c.InstallPath == "/" {
		return fmt.Errorf("component %s: install path %q is not a clean absolute file path", c.Name, c.InstallPath)
	}
	if c.Size < 0 {
		return fmt.Errorf("component %s: negative size", c.Name)
	}
	if c.URL == "" {
		return fmt.Errorf("component %s: no URL", c.Name)
	}
	return nil
}

func mode(c Component) os.FileMode {
	if c.Mode == 0 {
		return 0o644
	}
	return c.Mode.Perm()
}

func (in *Installer) log() *slog.Logger {
	if in.Log != nil {
		return in.Log
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// permanentError marks download failures another attempt cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func (in *Installer) download(ctx context.Context, c Component, dest string) error {
	attempts := in.Attempts
	if attempts <= 0 {
		attempts = 3
	}
	var err error
	for i := range attempts {
		if i > 0 {
			in.log().Warn("download failed; retrying", "component", c.Name, "error", err)
			select {
			case <-ctx.Done():
				return fmt.Errorf("component %s: %w (after: %w)", c.Name, ctx.Err(), err)
			case <-time.After(time.Duration(i) * 500 * time.Millisecond):
			}
		}
		err = in.downloadOnce(ctx, c, dest)
		var perm permanentError
		if err == nil || errors.As(err, &perm) || ctx.Err() != nil {
			break
		}
	}
	var perm permanentError
	if errors.As(err, &perm) {
		return perm.error
	}
	return err
}

func (in *Installer) downloadOnce(ctx context.Context, c Component, dest string) error {
	timeout := in.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	limit := in.MaxSize
	if limit <= 0 {
		limit = defaultMaxSize
	}
	if c.Size > 0 {
		limit = c.Size
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL, nil)
	if err != nil {
		return permanentError{fmt.Errorf("component %s: %w", c.Name, err)}
	}
	client := in.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{Proxy: nil, ResponseHeaderTimeout: time.Minute}}
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("component %s: downloading %s: %w", c.Name, c.URL, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode >= 500:
		return fmt.Errorf("component %s: downloading %s: %s", c.Name, c.URL, resp.Status)
	default:
		return permanentError{fmt.Errorf("component %s: downloading %s: %s (is the component server serving Kubernetes of this version?)", c.Name, c.URL, resp.Status)}
	}
	if resp.ContentLength > limit {
		return permanentError{fmt.Errorf("component %s: %s announces %d bytes, more than the allowed %d", c.Name, c.URL, resp.ContentLength, limit)}
	}

	dir := filepath.Dir(dest)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return permanentError{fmt.Errorf("component %s: %w", c.Name, err)}
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".download-*")
	if err != nil {
		return permanentError{fmt.Errorf("component %s: %w", c.Name, err)}
	}
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("component %s: downloading %s: %w after %d bytes", c.Name, c.URL, err, n)
	}
	if n > limit {
		return permanentError{fmt.Errorf("component %s: %s sent more than the allowed %d bytes", c.Name, c.URL, limit)}
	}
	if c.Size > 0 && n != c.Size {
		return fmt.Errorf("component %s: %s sent %d bytes, expected %d (truncated download)", c.Name, c.URL, n, c.Size)
	}
	if actual := hex.EncodeToString(h.Sum(nil)); actual != c.SHA256 {
		return permanentError{&HashMismatchError{Component: c.Name, URL: c.URL, Expected: c.SHA256, Actual: actual}}
	}
	if err := tmp.Chmod(mode(c)); err != nil {
		return permanentError{fmt.Errorf("component %s: %w", c.Name, err)}
	}
	if err := tmp.Sync(); err != nil {
		return permanentError{fmt.Errorf("component %s: %w", c.Name, err)}
	}
	if err := tmp.Close(); err != nil {
		return permanentError{fmt.Errorf("component %s: %w", c.Name, err)}
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return permanentError{fmt.Errorf("component %s: %w", c.Name, err)}
	}
	committed = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// ctrImport imports a docker-archive into containerd's k8s.io namespace, where the kubelet finds it.
func (in *Installer) ctrImport(ctx context.Context, file string, c Component) error {
	ctr := in.Ctr
	if ctr == "" {
		ctr = "ctr"
	}
	address := in.ContainerdAddress
	if address == "" {
		address = "/run/containerd/containerd.sock"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctr, "--address", address, "-n", namespace, "images", "import", file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s images import %s: %w: %s", ctr, file, err, strings.TrimSpace(string(out)))
	}
	// The kubelet looks the image up by reference: make sure the archive carried the pinned one.
	out, err = exec.CommandContext(ctx, ctr, "--address", address, "-n", namespace, "images", "ls", "-q").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s images ls: %w: %s", ctr, err, strings.TrimSpace(string(out)))
	}
	found := slices.Contains(strings.Fields(string(out)), c.Image)
	if !found {
		return fmt.Errorf("containerd has no image %s after importing %s (the archive holds another image)", c.Image, file)
	}
	if c.Name != pauseComponent || in.SandboxImage == "" || c.Image == in.SandboxImage {
		return nil
	}
	out, err = exec.CommandContext(ctx, ctr, "--address", address, "-n", namespace, "images", "tag", "--force", c.Image, in.SandboxImage).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s images tag %s %s (containerd's sandbox image): %w: %s", ctr, c.Image, in.SandboxImage, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// pauseComponent is the pause image's component name in every pinned Kubernetes version.
const pauseComponent = "pause.tar"
