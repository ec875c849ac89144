package terraform

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/terraform-exec/tfexec"
	"github.com/spf13/afero"

	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/localprovider/providerinfo"
	"github.com/constellation-go/constellation/terraform"
)

// Dir is the Terraform working directory in the workspace.
const Dir = "constellation-terraform"

// VarsFile holds the rendered variables; it contains the init secret, so it is written 0600.
const VarsFile = "terraform.tfvars.json"

// LogFile receives Terraform's output.
const LogFile = "terraform.log"

const (
	mirrorDir     = ".providers"
	cliConfigFile = ".terraformrc"
	lockFile      = ".terraform.lock.hcl"
)

// ErrNotInstalled is returned when no terraform binary is found.
var ErrNotInstalled = errors.New("terraform is not installed")

// InstallHint tells the user how to get Terraform.
const InstallHint = "install Terraform 1.5 or newer (e.g. 'GOBIN=/usr/local/bin go install github.com/hashicorp/terraform@v1.5.7', " +
	"or HashiCorp's packages), or point CONSTELLATION_TERRAFORM at the binary"

// Outputs are what every module outputs.
type Outputs struct {
	ClusterEndpoint   string                `json:"cluster_endpoint"`
	InClusterEndpoint string                `json:"in_cluster_endpoint"`
	APIServerCertSANs []string              `json:"api_server_cert_sans"`
	IPCidrNode        string                `json:"ip_cidr_node"`
	Nodes             map[string]NodeOutput `json:"nodes"`
	// ComponentURL is the local provider's component server.
	ComponentURL string `json:"component_url,omitempty"`
	// PlatformCA is the PEM certificate of the CA that certifies the nodes' vTPMs (local and qemu).
	PlatformCA string `json:"platform_ca,omitempty"`
}

// NodeOutput is a node as the module reports it.
type NodeOutput struct {
	IP   string `json:"ip"`
	Role string `json:"role"`
}

// Runner runs a provider's module in a workspace's Terraform directory.
type Runner struct {
	dir      string
	tf       *tfexec.Terraform
	progress func(string)
	// providersRun is set once `terraform init` is done: warnings after it are the providers' (what they
	// found and repaired), not Terraform's own about its working directory.
	providersRun atomic.Bool
}

// Options configure a Runner.
type Options struct {
	// Terraform is the terraform binary; empty means $CONSTELLATION_TERRAFORM, then PATH.
	Terraform string
	// Providers are installed into the working directory's filesystem mirror (the registry is not needed
	// for them).
	Providers []Provider
	// Progress receives one line per resource event (creating, created, destroying, ...); may be nil.
	Progress func(string)
}

// FindTerraform returns the terraform binary to run.
func FindTerraform(explicit string) (string, error) {
	if explicit == "" {
		explicit = os.Getenv("CONSTELLATION_TERRAFORM")
	}
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("%w at %s: %s", ErrNotInstalled, explicit, InstallHint)
		}
		return explicit, nil
	}
	p, err := exec.LookPath("terraform")
	if err != nil {
		return "", fmt.Errorf("%w (not on PATH): %s", ErrNotInstalled, InstallHint)
	}
	return p, nil
}

// Prepare renders the provider's module and variables into <workspace>/constellation-terraform and
// returns a Runner for it. Terraform's state there is kept: re-running continues where a run stopped.
func Prepare(workspace, providerName string, vars map[string]any, opts Options) (*Runner, error) {
	bin, err := FindTerraform(opts.Terraform)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Join(workspace, Dir))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	fh := file.NewHandler(afero.NewOsFs())
	if err := writeModule(fh, dir, providerName); err != nil {
		return nil, err
	}
	if vars != nil {
		if err := fh.WriteJSON(filepath.Join(dir, VarsFile), vars, file.OptOverwrite, file.OptSecret); err != nil {
			return nil, err
		}
	}
	if err := writeCLIConfig(fh, dir, providerName, opts.Providers); err != nil {
		return nil, err
	}
	return open(dir, bin, opts.Progress)
}

// Open returns a Runner for an existing working directory (for destroy and outputs).
func Open(workspace string, opts Options) (*Runner, error) {
	bin, err := FindTerraform(opts.Terraform)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Join(workspace, Dir))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, VarsFile)); err != nil {
		return nil, fmt.Errorf("no Terraform workspace at %s: %w", dir, err)
	}
	return open(dir, bin, opts.Progress)
}

func open(dir, bin string, progress func(string)) (*Runner, error) {
	tf, err := tfexec.NewTerraform(dir, bin)
	if err != nil {
		return nil, err
	}
	env := map[string]string{"TF_CLI_CONFIG_FILE": filepath.Join(dir, cliConfigFile), "CHECKPOINT_DISABLE": "1"}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if _, set := env[k]; !set {
			env[k] = v
		}
	}
	if err := tf.SetEnv(tfexec.CleanEnv(env)); err != nil {
		return nil, err
	}
	r := &Runner{dir: dir, tf: tf, progress: progress}
	logf, err := os.OpenFile(filepath.Join(dir, LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	// Closed with the process: the Runner lives as long as the command.
	out := io.MultiWriter(logf, &lineWriter{fn: r.event})
	tf.SetStdout(out)
	tf.SetStderr(logf)
	return r, nil
}

// writeModule replaces the working directory's .tf files with the provider's module.
func writeModule(fh file.Handler, dir, providerName string) error {
	if info, err := fs.Stat(terraform.Modules, providerName); err != nil || !info.IsDir() {
		return fmt.Errorf("no Terraform module for provider %q", providerName)
	}
	mod, err := fs.Sub(terraform.Modules, providerName)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	err = fs.WalkDir(mod, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(mod, p)
		if err != nil {
			return err
		}
		want[filepath.FromSlash(p)] = true
		return fh.Write(filepath.Join(dir, filepath.FromSlash(p)), data, file.OptOverwrite, file.OptMkdirAll)
	})
	if err != nil {
		return fmt.Errorf("writing the %s module: %w", providerName, err)
	}
	// A .tf file of an earlier CLI version would still be part of the module.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tf") && !want[e.Name()] {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// Provider is a Terraform provider binary the CLI installs into the working directory's filesystem mirror.
type Provider struct {
	// Address is the provider's source address, e.g. registry.terraform.io/dmacvicar/libvirt.
	Address string
	Version string
	Binary  string
}

// ConstellationProvider is the project's own provider, built as binary.
func ConstellationProvider(binary string) Provider {
	return Provider{Address: providerinfo.Address, Version: providerinfo.Version, Binary: binary}
}

// LibvirtProvider is the libvirt provider the qemu module pins, built from source as binary.
func LibvirtProvider(binary string) Provider {
	return Provider{Address: "registry.terraform.io/dmacvicar/libvirt", Version: "0.7.6", Binary: binary}
}

// requiredProviders are the providers a module cannot do without here (no registry).
var requiredProviders = map[string]string{"local": providerinfo.Address, "qemu": providerinfo.Address}

// writeCLIConfig installs the given providers into the working directory's filesystem mirror and points
// Terraform at it for them, so `terraform init` needs no registry for them; other providers come from
// their registries.
func writeCLIConfig(fh file.Handler, dir, providerName string, providers []Provider) error {
	mirror := filepath.Join(dir, mirrorDir)
	var mirrored []string
	changed := false
	for _, p := range providers {
		if p.Binary == "" {
			continue
		}
		c, err := installProvider(mirror, p)
		if err != nil {
			return err
		}
		changed = changed || c
		mirrored = append(mirrored, p.Address)
	}
	if want, ok := requiredProviders[providerName]; ok && !slices.Contains(mirrored, want) {
		return fmt.Errorf("the %s module needs the Terraform provider %s (terraform-provider-constellation): build it with 'make build'", providerName, want)
	}
	if changed {
		// The lock file pins the old binaries' hashes; Terraform would refuse the new ones.
		for _, p := range []string{filepath.Join(dir, lockFile), filepath.Join(dir, ".terraform", "providers")} {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	var cfg strings.Builder
	cfg.WriteString("provider_installation {\n")
	if len(mirrored) > 0 {
		quoted := make([]string, len(mirrored))
		for i, m := range mirrored {
			quoted[i] = fmt.Sprintf("%q", m)
		}
		list := strings.Join(quoted, ", ")
		fmt.Fprintf(&cfg, "  filesystem_mirror {\n    path    = %q\n    include = [%s]\n  }\n", mirror, list)
		fmt.Fprintf(&cfg, "  direct {\n    exclude = [%s]\n  }\n", list)
	} else {
		cfg.WriteString("  direct {}\n")
	}
	cfg.WriteString("}\n")
	return fh.Write(filepath.Join(dir, cliConfigFile), []byte(cfg.String()), file.OptOverwrite)
}

// installProvider copies a provider binary into the mirror's unpacked layout; it reports whether the
// binary there changed.
func installProvider(mirror string, p Provider) (bool, error) {
	src, err := os.ReadFile(p.Binary)
	if err != nil {
		return false, fmt.Errorf("reading the Terraform provider %s: %w (build it with 'make build')", p.Address, err)
	}
	parts := strings.Split(p.Address, "/")
	if len(parts) != 3 {
		return false, fmt.Errorf("provider address %q is not host/namespace/type", p.Address)
	}
	target := filepath.Join(mirror, parts[0], parts[1], parts[2], p.Version, "linux_amd64",
		fmt.Sprintf("terraform-provider-%s_v%s", parts[2], p.Version))
	if old, err := os.ReadFile(target); err == nil && bytes.Equal(old, src) {
		return false, nil
	}
	if err := file.NewHandler(afero.NewOsFs()).Write(target, src, file.OptOverwrite, file.OptMkdirAll); err != nil {
		return false, err
	}
	return true, os.Chmod(target, 0o755)
}

// detach keeps a cancelled command from signalling Terraform: Ctrl-C in a terminal reaches Terraform
// directly (same process group), which then stops gracefully and saves its state; a second SIGINT from
// terraform-exec would make it exit at once ("Two interrupts received"), possibly losing state. Terraform
// stops on its own; the command returns once it has.
func detach(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// Apply initializes the working directory, applies the module and returns its outputs.
func (r *Runner) Apply(ctx context.Context) (Outputs, error) {
	ctx = detach(ctx)
	if err := r.tf.Init(ctx); err != nil {
		return Outputs{}, r.wrap("terraform init", err)
	}
	r.providersRun.Store(true)
	if err := r.tf.Apply(ctx); err != nil {
		return Outputs{}, r.wrap("terraform apply", err)
	}
	return r.Outputs(ctx)
}

// Destroy destroys everything the module created.
func (r *Runner) Destroy(ctx context.Context) error {
	ctx = detach(ctx)
	if err := r.tf.Init(ctx); err != nil {
		return r.wrap("terraform init", err)
	}
	r.providersRun.Store(true)
	if err := r.tf.Destroy(ctx); err != nil {
		return r.wrap("terraform destroy", err)
	}
	return nil
}

// Outputs reads the module's outputs from Terraform's state.
func (r *Runner) Outputs(ctx context.Context) (Outputs, error) {
	raw, err := r.tf.Output(ctx)
	if err != nil {
		return Outputs{}, r.wrap("terraform output", err)
	}
	values := map[string]json.RawMessage{}
	for k, v := range raw {
		values[k] = v.Value
	}
	data, err := json.Marshal(values)
	if err != nil {
		return Outputs{}, err
	}
	var out Outputs
	if err := json.Unmarshal(data, &out); err != nil {
		return Outputs{}, fmt.Errorf("parsing Terraform's outputs: %w", err)
	}
	if out.ClusterEndpoint == "" || len(out.Nodes) == 0 {
		return Outputs{}, fmt.Errorf("terraform's outputs are incomplete (no endpoint or no nodes): re-run the command")
	}
	return out, nil
}

// ReadVariables returns the variables last rendered into the workspace's Terraform directory (e.g. to learn
// the init secret); it needs no Terraform.
func ReadVariables(workspace string) (map[string]any, error) {
	var vars map[string]any
	if err := file.NewHandler(afero.NewOsFs()).ReadJSON(filepath.Join(workspace, Dir, VarsFile), &vars); err != nil {
		return nil, err
	}
	return vars, nil
}

func (r *Runner) wrap(step string, err error) error {
	return fmt.Errorf("%s failed (full output in %s): %w", step, filepath.Join(r.dir, LogFile), err)
}

// resourceEvent matches Terraform's per-resource progress lines, e.g.
// `constellation_local_node.node["cp-0"]: Creation complete after 1s [id=c/cp-0]`.
var resourceEvent = regexp.MustCompile(`^(\S+): (Creating|Creation complete|Still creating|Destroying|Destruction complete|Still destroying|Modifying|Modifications complete)`)

// warning matches the summary line of a warning a provider reported (plain or boxed, as -no-color prints it),
// e.g. that the local provider restarted its daemon: the user should see what was repaired.
var warning = regexp.MustCompile(`^(?:│ )?Warning: (.+)$`)

func (r *Runner) event(line string) {
	if r.progress == nil {
		return
	}
	if m := resourceEvent.FindStringSubmatch(line); m != nil {
		r.progress(strings.TrimSpace(line))
	} else if m := warning.FindStringSubmatch(line); m != nil && r.providersRun.Load() {
		r.progress("warning: " + strings.TrimSpace(m[1]))
	}
}

// lineWriter calls fn for each complete line written to it.
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := strings.TrimRight(string(w.buf[:i]), "\r")
		w.buf = w.buf[i+1:]
		w.fn(line)
	}
}
