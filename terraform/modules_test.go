package terraform_test

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/zclconf/go-cty/cty"

	"github.com/constellation-go/constellation/terraform"
)

// commonVariables are rendered for every provider by the CLI's terraform.Variables.
var commonVariables = []string{"name", "uid", "init_secret", "image"}

// commonOutputs are what the CLI reads from every module (terraform.Outputs).
var commonOutputs = []string{"cluster_endpoint", "in_cluster_endpoint", "api_server_cert_sans", "ip_cidr_node", "nodes"}

// wantProviders are the Terraform providers each module must pin; local uses the project's own.
var wantProviders = map[string]map[string]string{
	"qemu":  {"libvirt": "dmacvicar/libvirt", "constellation": "constellation-go/constellation"},
	"aws":   {"aws": "hashicorp/aws"},
	"gcp":   {"google": "hashicorp/google"},
	"azure": {"azurerm": "hashicorp/azurerm"},
}

// exactVersion is a version constraint that allows exactly one version.
var exactVersion = regexp.MustCompile(`^(= ?)?[0-9]+\.[0-9]+\.[0-9]+$`)

type requiredProvider struct {
	source, version string
}

// module is what the tests need of a parsed module.
type module struct {
	files     []*hclsyntax.Body
	variables map[string]*hclsyntax.Body
	outputs   map[string]bool
	providers map[string]requiredProvider
}

func parseModule(fsys fs.FS, dir string) (*module, error) {
	names, err := fs.Glob(fsys, path.Join(dir, "*.tf"))
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s has no .tf files", dir)
	}
	m := &module{variables: map[string]*hclsyntax.Body{}, outputs: map[string]bool{}, providers: map[string]requiredProvider{}}
	parser := hclparse.NewParser()
	for _, name := range names {
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		f, diags := parser.ParseHCL(data, name)
		if diags.HasErrors() {
			return nil, diags
		}
		body := f.Body.(*hclsyntax.Body)
		m.files = append(m.files, body)
		for _, b := range body.Blocks {
			switch b.Type {
			case "variable":
				m.variables[b.Labels[0]] = b.Body
			case "output":
				m.outputs[b.Labels[0]] = true
			case "terraform":
				if err := m.addRequiredProviders(b.Body); err != nil {
					return nil, fmt.Errorf("%s: %w", name, err)
				}
			}
		}
	}
	return m, nil
}

func (m *module) addRequiredProviders(tf *hclsyntax.Body) error {
	for _, b := range tf.Blocks {
		if b.Type != "required_providers" {
			continue
		}
		for name, attr := range b.Body.Attributes {
			v, diags := attr.Expr.Value(nil)
			if diags.HasErrors() {
				return diags
			}
			if !v.Type().IsObjectType() || !v.Type().HasAttribute("source") || !v.Type().HasAttribute("version") {
				return fmt.Errorf("required provider %s needs source and version", name)
			}
			m.providers[name] = requiredProvider{source: v.GetAttr("source").AsString(), version: v.GetAttr("version").AsString()}
		}
	}
	return nil
}

// contractProblems lists where a module breaks the contract the CLI relies on.
func contractProblems(provider string, m *module) []string {
	var problems []string
	for _, name := range commonVariables {
		if m.variables[name] == nil {
			problems = append(problems, fmt.Sprintf("variable %q is not declared", name))
		}
	}
	if body := m.variables["init_secret"]; body != nil {
		attr, ok := body.Attributes["sensitive"]
		var v cty.Value
		if ok {
			v, _ = attr.Expr.Value(nil)
		}
		if !ok || !v.Type().Equals(cty.Bool) || !v.IsKnown() || v.False() {
			problems = append(problems, `variable "init_secret" is not sensitive = true`)
		}
	}
	for _, name := range commonOutputs {
		if !m.outputs[name] {
			problems = append(problems, fmt.Sprintf("output %q is missing", name))
		}
	}
	if len(m.providers) == 0 {
		problems = append(problems, "no required_providers")
	}
	for name, p := range m.providers {
		if !exactVersion.MatchString(p.version) {
			problems = append(problems, fmt.Sprintf("provider %s: version %q is not an exact pin", name, p.version))
		}
	}
	for name, source := range wantProviders[provider] {
		if got := m.providers[name].source; got != source {
			problems = append(problems, fmt.Sprintf("provider %s: source %q, want %q", name, got, source))
		}
	}
	return problems
}

// hashFunctions may take the init secret: their result does not reveal it.
var hashFunctions = []string{"sha256", "sha512"}

// initSecretLeaks lists every reference to var.init_secret that is not inside the argument of a hash
// function, i.e. every place where the secret itself could reach a resource, an output or a node.
func initSecretLeaks(m *module) []string {
	hashed := map[hcl.Range]bool{}
	var uses []hcl.Range
	for _, body := range m.files {
		hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
			switch e := n.(type) {
			case *hclsyntax.FunctionCallExpr:
				if slices.Contains(hashFunctions, e.Name) {
					for _, arg := range e.Args {
						hclsyntax.VisitAll(arg, func(n hclsyntax.Node) hcl.Diagnostics {
							if t, ok := n.(*hclsyntax.ScopeTraversalExpr); ok {
								hashed[t.Range()] = true
							}
							return nil
						})
					}
				}
			case *hclsyntax.ScopeTraversalExpr:
				if len(e.Traversal) >= 2 && e.Traversal.RootName() == "var" {
					if attr, ok := e.Traversal[1].(hcl.TraverseAttr); ok && attr.Name == "init_secret" {
						uses = append(uses, e.Range())
					}
				}
			}
			return nil
		})
	}
	var leaks []string
	for _, r := range uses {
		if !hashed[r] {
			leaks = append(leaks, r.String())
		}
	}
	return leaks
}

func providerDirs(t *testing.T) []string {
	t.Helper()
	entries, err := fs.ReadDir(terraform.Modules, ".")
	require.NoError(t, err)
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	for provider := range wantProviders {
		require.Contains(t, dirs, provider, "the embedded modules lack %s", provider)
	}
	return dirs
}

func TestModulesContract(t *testing.T) {
	for _, provider := range providerDirs(t) {
		t.Run(provider, func(t *testing.T) {
			m, err := parseModule(terraform.Modules, provider)
			require.NoError(t, err)
			assert.Empty(t, contractProblems(provider, m))
		})
	}
}

func TestContractProblemsDetectsViolations(t *testing.T) {
	testCases := map[string]struct {
		files map[string]string
		want  []string
	}{
		"complete": {
			files: map[string]string{"m/main.tf": completeModule},
		},
		"secret not sensitive": {
			files: map[string]string{"m/main.tf": strings.Replace(completeModule, "sensitive = true", "sensitive = false", 1)},
			want:  []string{`variable "init_secret" is not sensitive = true`},
		},
		"secret sensitivity missing": {
			files: map[string]string{"m/main.tf": strings.Replace(completeModule, "sensitive = true", "", 1)},
			want:  []string{`variable "init_secret" is not sensitive = true`},
		},
		"variable and output missing": {
			files: map[string]string{"m/main.tf": strings.NewReplacer(`variable "image" {}`, "", `output "nodes" { value = {} }`, "").Replace(completeModule)},
			want:  []string{`variable "image" is not declared`, `output "nodes" is missing`},
		},
		"version range": {
			files: map[string]string{"m/main.tf": strings.Replace(completeModule, `"5.100.0"`, `"~> 5.0"`, 1)},
			want:  []string{`provider aws: version "~> 5.0" is not an exact pin`},
		},
		"wrong source": {
			files: map[string]string{"m/main.tf": strings.Replace(completeModule, "hashicorp/aws", "example/aws", 1)},
			want:  []string{`provider aws: source "example/aws", want "hashicorp/aws"`},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			m, err := parseModule(mapFS(tc.files), "m")
			require.NoError(t, err)
			assert.ElementsMatch(t, tc.want, contractProblems("aws", m))
		})
	}
}

const completeModule = `
terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }
}
variable "name" {}
variable "uid" {}
variable "init_secret" {
  sensitive = true
}
variable "image" {}
output "cluster_endpoint" { value = "" }
output "in_cluster_endpoint" { value = "" }
output "api_server_cert_sans" { value = [] }
output "ip_cidr_node" { value = "" }
output "nodes" { value = {} }
`

func TestInitSecretIsOnlyHashed(t *testing.T) {
	for _, provider := range providerDirs(t) {
		if provider == "local" {
			// The local module hands the secret to the project's own provider, which hashes it for the
			// metadata API it serves.
			continue
		}
		t.Run(provider, func(t *testing.T) {
			m, err := parseModule(terraform.Modules, provider)
			require.NoError(t, err)
			uses := 0
			for _, body := range m.files {
				hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
					if e, ok := n.(*hclsyntax.ScopeTraversalExpr); ok && len(e.Traversal) >= 2 && e.Traversal.RootName() == "var" {
						if attr, ok := e.Traversal[1].(hcl.TraverseAttr); ok && attr.Name == "init_secret" {
							uses++
						}
					}
					return nil
				})
			}
			assert.NotZero(t, uses, "the module never hands the nodes the init secret's hash")
			assert.Empty(t, initSecretLeaks(m))
		})
	}
}

func TestInitSecretLeaksDetectsLeaks(t *testing.T) {
	testCases := map[string]struct {
		tf        string
		wantLeaks int
	}{
		"hashed": {
			tf: `locals { h = nonsensitive(sha256(var.init_secret)) }`,
		},
		"hashed inside a template": {
			tf: `locals { p = sha512("salt ${var.init_secret}") }`,
		},
		"in a tag": {
			tf:        `resource "aws_instance" "n" { tags = { secret = var.init_secret } }`,
			wantLeaks: 1,
		},
		"in an output": {
			tf:        `output "s" { value = var.init_secret }`,
			wantLeaks: 1,
		},
		"re-encoded, not hashed": {
			tf:        `locals { b = base64encode(var.init_secret) }`,
			wantLeaks: 1,
		},
		"one hashed, one leaked": {
			tf:        "locals {\n  h = sha256(var.init_secret)\n  s = upper(var.init_secret)\n}\n",
			wantLeaks: 1,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			m, err := parseModule(mapFS(map[string]string{"m/main.tf": tc.tf}), "m")
			require.NoError(t, err)
			assert.Len(t, initSecretLeaks(m), tc.wantLeaks)
		})
	}
}

// terraformBinary finds terraform, or skips the test (fails it where testenv is strict).
func terraformBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CONSTELLATION_TERRAFORM"); p != "" {
		return p
	}
	if p, err := exec.LookPath("terraform"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/local/bin/terraform"); err == nil {
		return "/usr/local/bin/terraform"
	}
	testenv.SkipOrFail(t, "terraform is not installed (make setup installs it)")
	return ""
}

// terraformFmtCheck runs `terraform fmt -check` on dir and returns its complaint.
func terraformFmtCheck(t *testing.T, bin, dir string) error {
	t.Helper()
	cliConfig := filepath.Join(t.TempDir(), "terraformrc")
	require.NoError(t, os.WriteFile(cliConfig, nil, 0o600))
	cmd := exec.Command(bin, "fmt", "-check", "-recursive", "-diff", "-no-color", dir)
	cmd.Env = append(os.Environ(), "TF_CLI_CONFIG_FILE="+cliConfig, "CHECKPOINT_DISABLE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// copyModule copies an embedded module into a fresh directory.
func copyModule(t *testing.T, provider string) string {
	t.Helper()
	dir := t.TempDir()
	sub, err := fs.Sub(terraform.Modules, provider)
	require.NoError(t, err)
	require.NoError(t, fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(sub, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	}))
	return dir
}

func TestModulesAreFormatted(t *testing.T) {
	bin := terraformBinary(t)
	for _, provider := range providerDirs(t) {
		t.Run(provider, func(t *testing.T) {
			assert.NoError(t, terraformFmtCheck(t, bin, copyModule(t, provider)))
		})
	}
}

func TestFmtCheckDetectsUnformatted(t *testing.T) {
	bin := terraformBinary(t)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.tf"), []byte("variable \"x\" {\ndefault=1\n}\n"), 0o644))
	assert.Error(t, terraformFmtCheck(t, bin, dir))
}

// mapFS is an in-memory file system of text files.
func mapFS(files map[string]string) fs.FS {
	out := fstest.MapFS{}
	for name, content := range files {
		out[name] = &fstest.MapFile{Data: []byte(content)}
	}
	return out
}
