// Package cloudcmd creates, changes and destroys a cluster's infrastructure with Terraform (the modules the
// CLI embeds, the providers it ships), and locates the files the CLI ships beside its binary.
package cloudcmd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/constellation-go/constellation/cli/internal/terraform"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/localprovider/providerinfo"
)

// Artifacts are the files the CLI ships beside its binary (make build installs them into out/):
//
//	image/                              the node image (local, qemu)
//	services/<service>.tar              the services' container images (local)
//	terraform-provider-constellation    the project's Terraform provider (local)
//	terraform-provider-libvirt          the libvirt provider, built from source (qemu)
type Artifacts struct {
	Dir string
}

// ArtifactsEnv overrides the directory of the artifacts (default: the CLI's own directory).
const ArtifactsEnv = "CONSTELLATION_ARTIFACTS"

// FindArtifacts locates the artifacts: ArtifactsEnv, or the directory of the CLI's binary.
func FindArtifacts() (Artifacts, error) {
	if dir := os.Getenv(ArtifactsEnv); dir != "" {
		abs, err := filepath.Abs(dir)
		return Artifacts{Dir: abs}, err
	}
	exe, err := os.Executable()
	if err != nil {
		return Artifacts{}, fmt.Errorf("locating the CLI's files: %w", err)
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		return Artifacts{}, fmt.Errorf("locating the CLI's files: %w", err)
	}
	return Artifacts{Dir: filepath.Dir(exe)}, nil
}

// ConfiguredImageDir is the image directory the configuration names: its 'image', or the image installed
// beside the CLI.
func (a Artifacts) ConfiguredImageDir(cfg *config.Config) string {
	if cfg.Image != "" {
		return cfg.Image
	}
	return a.InstalledImageDir()
}

// ImageDir is ConfiguredImageDir, resolved, after checking that it holds a node image.
func (a Artifacts) ImageDir(cfg *config.Config) (string, error) {
	dir, err := filepath.EvalSymlinks(a.ConfiguredImageDir(cfg))
	if err != nil {
		return "", fmt.Errorf("the node image: %w (build it with 'make image', or set 'image' in %s)", err, config.FileName)
	}
	if _, err := os.Stat(filepath.Join(dir, "constellation.efi")); err != nil {
		return "", fmt.Errorf("%s is not a node image: %w (build one with 'make image')", dir, err)
	}
	return dir, nil
}

// InstalledImageDir is the node image installed beside the CLI.
func (a Artifacts) InstalledImageDir() string { return filepath.Join(a.Dir, "image") }

// ServicesDir holds the services' container image archives.
func (a Artifacts) ServicesDir() string { return filepath.Join(a.Dir, "services") }

// ProviderBinary is the project's Terraform provider.
func (a Artifacts) ProviderBinary() string {
	return filepath.Join(a.Dir, "terraform-provider-constellation")
}

// LibvirtProvider is the libvirt Terraform provider built from source.
func (a Artifacts) LibvirtProvider() string {
	return filepath.Join(a.Dir, "terraform-provider-libvirt")
}

// Terraform runs the provider's module in <workspace>/constellation-terraform.
type Terraform struct {
	Workspace string
	Artifacts Artifacts
	// Progress receives Terraform's progress lines.
	Progress func(string)
}

func (t *Terraform) options() terraform.Options {
	providers := []terraform.Provider{terraform.ConstellationProvider(t.Artifacts.ProviderBinary())}
	if _, err := os.Stat(t.Artifacts.LibvirtProvider()); err == nil {
		providers = append(providers, terraform.LibvirtProvider(t.Artifacts.LibvirtProvider()))
	}
	return terraform.Options{Providers: providers, Progress: t.Progress}
}

// Apply creates or completes the infrastructure of cfg; re-running it continues an interrupted run.
func (t *Terraform) Apply(ctx context.Context, cfg *config.Config) (terraform.Outputs, error) {
	return t.apply(ctx, cfg, nil)
}

// MoveNode reboots one node into another image, its state disk kept (local provider).
func (t *Terraform) MoveNode(ctx context.Context, cfg *config.Config, node, image string) (terraform.Outputs, error) {
	if cfg.GetProvider() != cloudprovider.Local {
		return terraform.Outputs{}, fmt.Errorf("moving a node to another image is implemented for the local provider only, not %s", cfg.GetProvider())
	}
	return t.apply(ctx, cfg, map[string]string{node: image})
}

// LoadImage imports a container image archive into a running node's containerd (local provider) and
// returns the image references it carried.
func (t *Terraform) LoadImage(ctx context.Context, cfg *config.Config, node, archive string) ([]string, error) {
	if cfg.GetProvider() != cloudprovider.Local {
		return nil, fmt.Errorf("loading images into nodes is implemented for the local provider only, not %s: "+
			"push the image to a registry the nodes reach", cfg.GetProvider())
	}
	// The provider binary does it: the CLI links none of the node runtime.
	cmd := exec.CommandContext(ctx, t.Artifacts.ProviderBinary(), providerinfo.LoadImageCommand, cfg.Name, node, archive)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.Fields(string(out)), nil
}

// NodeImages returns the image each node runs, as the last Apply rendered it.
func (t *Terraform) NodeImages() (map[string]string, error) {
	vars, err := terraform.ReadVariables(t.Workspace)
	if err != nil {
		return nil, err
	}
	return terraform.NodeImages(vars), nil
}

// apply renders the module's variables, with the node images in moves changed, and applies it.
func (t *Terraform) apply(ctx context.Context, cfg *config.Config, moves map[string]string) (terraform.Outputs, error) {
	in, err := t.inputs(cfg)
	if err != nil {
		return terraform.Outputs{}, err
	}
	for node, image := range moves {
		in.NodeImages[node] = image
	}
	vars, err := terraform.Variables(cfg, in)
	if err != nil {
		return terraform.Outputs{}, err
	}
	if cfg.GetProvider() == cloudprovider.QEMU {
		if err := checkQEMUHostTools(); err != nil {
			return terraform.Outputs{}, err
		}
		if err := ensureLibvirtd(ctx, cfg.Provider.QEMU.LibvirtURI); err != nil {
			return terraform.Outputs{}, err
		}
	}
	r, err := terraform.Prepare(t.Workspace, cfg.GetProvider().String(), vars, t.options())
	if err != nil {
		return terraform.Outputs{}, err
	}
	return r.Apply(ctx)
}

// inputs keeps the UID and init secret of an earlier run: re-running must continue with the same
// resources, and a node that already knows the init secret's hash must still accept it. Nodes keep the
// image they run (local): only a roll-out (MoveNode) reboots a node into another one; the configuration's
// image is the one of new nodes.
func (t *Terraform) inputs(cfg *config.Config) (terraform.Inputs, error) {
	in := terraform.Inputs{}
	if uid, secret, err := t.Identity(); err == nil {
		// Rendered as hex again, so the text the nodes hashed stays the same.
		in.UID = uid
		in.InitSecret, _ = hex.DecodeString(string(secret))
	}
	if in.UID == "" {
		in.UID = randomUID()
	}
	if len(in.InitSecret) == 0 {
		in.InitSecret = make([]byte, 32)
		if _, err := rand.Read(in.InitSecret); err != nil {
			return in, err
		}
	}
	switch cfg.GetProvider() {
	case cloudprovider.Local, cloudprovider.QEMU:
		dir, err := t.Artifacts.ImageDir(cfg)
		if err != nil {
			return in, err
		}
		in.ImageRef = dir
		in.ServicesDir = t.Artifacts.ServicesDir()
		in.NodeImages = map[string]string{}
		if cfg.GetProvider() == cloudprovider.Local {
			if previous, err := t.NodeImages(); err == nil {
				in.NodeImages = previous
			}
		}
	default:
		in.ImageRef = cfg.Image
	}
	return in, nil
}

// Outputs returns the module's outputs.
func (t *Terraform) Outputs(ctx context.Context) (terraform.Outputs, error) {
	r, err := terraform.Open(t.Workspace, t.options())
	if err != nil {
		return terraform.Outputs{}, err
	}
	return r.Outputs(ctx)
}

// Identity returns the UID and the init secret the last Apply used.
func (t *Terraform) Identity() (string, []byte, error) {
	vars, err := terraform.ReadVariables(t.Workspace)
	if err != nil {
		return "", nil, err
	}
	uid, _ := vars["uid"].(string)
	secret, _ := vars["init_secret"].(string)
	if secret == "" || uid == "" {
		return "", nil, errors.New("the Terraform variables hold no UID or init secret: re-run 'constellation create'")
	}
	// The secret is the variable's text: that is what the modules hash for the nodes.
	return uid, []byte(secret), nil
}

// Destroy removes everything Apply created, and the Terraform workspace.
func (t *Terraform) Destroy(ctx context.Context) error {
	r, err := terraform.Open(t.Workspace, t.options())
	if err != nil {
		return err
	}
	// The qemu module's resources live in libvirtd, which must run to remove them.
	if vars, err := terraform.ReadVariables(t.Workspace); err == nil {
		if uri, ok := vars["libvirt_uri"].(string); ok {
			if err := ensureLibvirtd(ctx, uri); err != nil {
				return err
			}
		}
	}
	if err := r.Destroy(ctx); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(t.Workspace, terraform.Dir))
}

func randomUID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
