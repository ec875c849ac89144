package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/testenv"
	"github.com/constellation-go/constellation/localprovider/node"
)

// terraformCluster is the cluster name the Terraform test gives the example.
const terraformCluster = "tf-e2e"

// TestTerraformCluster applies terraform/examples/local with real Terraform and the provider of the build,
// installed offline through a filesystem mirror (`make terraform-test`): both nodes become Ready with the
// kubeconfig output, `constellation verify` accepts both from the outputs alone (an auditor's view: signed
// measurements of the image, the cluster ID, the platform CA), a plan shows no changes (its refresh verified
// every node), a new kubernetes_version upgrades both nodes (and going back is refused), and a destroy leaves
// nothing.
func TestTerraformCluster(t *testing.T) {
	c, ctx := newCLI(t, "terraform-test")
	out := filepath.Dir(c.bin)
	bin := os.Getenv("CONSTELLATION_TERRAFORM")
	if bin == "" {
		bin = "terraform"
	}
	dir, mirror := t.TempDir(), t.TempDir()
	example := filepath.Join("..", "..", "terraform", "examples", "local")
	files, err := filepath.Glob(filepath.Join(example, "*.tf"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644))
	}
	providerDir := filepath.Join(mirror, "registry.terraform.io", "constellation-go", "constellation", "0.1.0", "linux_amd64")
	require.NoError(t, os.MkdirAll(providerDir, 0o755))
	provider, err := os.ReadFile(filepath.Join(out, "terraform-provider-constellation"))
	require.NoError(t, err, "make build puts the provider beside the CLI")
	require.NoError(t, os.WriteFile(filepath.Join(providerDir, "terraform-provider-constellation"), provider, 0o755))
	rc := filepath.Join(mirror, "terraformrc")
	require.NoError(t, os.WriteFile(rc, fmt.Appendf(nil, "provider_installation {\n  filesystem_mirror {\n    path = %q\n  }\n}\n", mirror), 0o600))
	secret := make([]byte, 16)
	_, err = rand.Read(secret)
	require.NoError(t, err)
	image, err := filepath.EvalSymlinks(filepath.Join(out, "image"))
	require.NoError(t, err)
	env := append(os.Environ(), "TF_CLI_CONFIG_FILE="+rc, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1",
		"TF_VAR_name="+terraformCluster, "TF_VAR_image_dir="+image, "TF_VAR_services_dir="+filepath.Join(out, "services"),
		"TF_VAR_init_secret="+hex.EncodeToString(secret))
	terraform := func(ctx context.Context, args ...string) (string, error) {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, append(args, "-no-color")...)
		cmd.Dir, cmd.Env = dir, env
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		err := cmd.Run()
		shown := buf.String()
		if args[0] == "output" {
			shown = "(the outputs, secrets among them, are not logged)"
		}
		fmt.Fprintf(c.logs, "$ terraform %s\n%s\n", strings.Join(args, " "), shown)
		return buf.String(), err
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.nodeLogs = nodeLogTails(terraformCluster, 25)
		}
		// Whatever happened: the nodes go, even one that no longer verifies.
		_, err := terraform(context.Background(), "destroy", "-auto-approve", "-input=false", "-refresh=false")
		assert.NoError(t, err, "terraform destroy")
		assertNothingLeft(t, terraformCluster)
	})

	_, err = terraform(ctx, "init", "-input=false")
	require.NoError(t, err, "terraform init (offline, from the mirror)")
	start := time.Now()
	_, err = terraform(ctx, "apply", "-auto-approve", "-input=false")
	require.NoError(t, err, "terraform apply of the example")
	t.Logf("FIGURES terraform apply of the example (network, 2 nodes, cluster): %s", time.Since(start).Round(100*time.Millisecond))

	outputs := terraformOutputs(ctx, t, terraform)
	kubeconfig := filepath.Join(t.TempDir(), "admin.conf")
	require.NoError(t, os.WriteFile(kubeconfig, []byte(outputs["kubeconfig"].(string)), 0o600))
	var nodes string
	require.Eventually(t, func() bool {
		nodes = kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json")
		return readyNodes(nodes) == 2
	}, 10*time.Minute, 2*time.Second, "the 2 nodes are not Ready:\n%s", nodes)

	// An auditor's check from the outputs: the image's signed measurements, the cluster ID, the platform CA.
	t.Setenv("COSIGN_PASSWORD", "")
	keys := t.TempDir()
	code, _, stderr := c.run(ctx, "image", "keygen", "--output-prefix", filepath.Join(keys, "cosign"))
	require.Zero(t, code, "image keygen: %s", stderr)
	measurements := filepath.Join(keys, "measurements.json")
	code, _, stderr = c.run(ctx, "image", "measure", filepath.Join(image, "constellation.efi"), "--out", measurements,
		"--sign-key", filepath.Join(keys, "cosign.key"))
	require.Zero(t, code, "image measure: %s", stderr)
	ca := filepath.Join(keys, "platform-ca.pem")
	require.NoError(t, os.WriteFile(ca, []byte(outputs["platform_ca_certificate"].(string)), 0o644))
	args := []string{"verify", "--cluster-id", outputs["cluster_id"].(string), "--measurements", measurements,
		"--public-key", filepath.Join(keys, "cosign.pub"), "--platform-ca", ca}
	for _, ip := range outputs["nodes"].(map[string]any) {
		args = append(args, "--endpoint", ip.(string))
	}
	var verifyOut string
	require.Eventually(t, func() bool {
		code, verifyOut, _ = c.run(ctx, args...)
		return code == 0
	}, 5*time.Minute, 3*time.Second, "constellation verify does not accept both nodes:\n%s", verifyOut)
	assert.Contains(t, verifyOut, "All 2 nodes verified.")

	verifyWith := func(image string) (int, string) {
		t.Helper()
		m := filepath.Join(keys, filepath.Base(image)+"-measurements.json")
		code, _, stderr := c.run(ctx, "image", "measure", filepath.Join(image, "constellation.efi"), "--out", m,
			"--sign-key", filepath.Join(keys, "cosign.key"))
		require.Zero(t, code, "image measure: %s", stderr)
		args := []string{"verify", "--cluster-id", outputs["cluster_id"].(string), "--measurements", m,
			"--public-key", filepath.Join(keys, "cosign.pub"), "--platform-ca", ca}
		for _, ip := range outputs["nodes"].(map[string]any) {
			args = append(args, "--endpoint", ip.(string))
		}
		code, stdout, _ := c.run(ctx, args...)
		return code, stdout
	}

	// The refresh verifies every node; nothing differs from the configuration.
	plan, err := terraform(ctx, "plan", "-detailed-exitcode", "-input=false")
	require.NoError(t, err, "terraform plan shows changes or failed:\n%s", plan)
	assert.Contains(t, plan, "No changes.")

	// An upgrade: the next Kubernetes version through the library the CLI uses; the plan after it is empty.
	next, built := builtNextKubernetes(t, "terraform-test")
	if built {
		start = time.Now()
		_, err = terraform(ctx, "apply", "-auto-approve", "-input=false", "-var", "kubernetes_version="+next)
		require.NoError(t, err, "terraform apply of kubernetes_version %s", next)
		t.Logf("FIGURES terraform apply upgrading the 2 nodes to Kubernetes %s: %s", next, time.Since(start).Round(100*time.Millisecond))
		kubelets := kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.nodeInfo.kubeletVersion} {end}")
		assert.Equal(t, "cp-0="+next+" worker-0="+next, strings.TrimSpace(kubelets))
		plan, err = terraform(ctx, "plan", "-detailed-exitcode", "-input=false", "-var", "kubernetes_version="+next)
		require.NoError(t, err, "terraform plan after the upgrade shows changes or failed:\n%s", plan)
		// Back is a downgrade: refused when the plan is made, naming the attribute, before anything changed
		// (the network would otherwise move back first).
		downgrade, err := terraform(ctx, "apply", "-auto-approve", "-input=false")
		var exit *exec.ExitError
		require.True(t, errors.As(err, &exit), "a downgrade must be refused:\n%s", downgrade)
		assert.Contains(t, downgrade, "downgrades are not supported")
		assert.Contains(t, downgrade, "kubernetes_version")
		assert.NotContains(t, downgrade, "Modifying...", "nothing changes for a refused plan")
	}

	// An image roll-out: image_dir names image B, whose measurements data.constellation_image computes; the
	// cluster resource moves the nodes one at a time. Afterwards every node shows image B's measurements
	// alone, image A's are refused, and the plan is empty.
	imageB := os.Getenv(imageBEnv)
	switch {
	case imageB == "" && testenv.Strict():
		t.Fatalf("%s must be set: 'make terraform-test' builds image B", imageBEnv)
	case imageB == "":
		t.Logf("SKIPPED the image roll-out: %s is not set (make terraform-test sets it)", imageBEnv)
	default:
		vars := []string{"-var", "image_dir=" + imageB}
		if built {
			vars = append(vars, "-var", "kubernetes_version="+next)
		}
		start = time.Now()
		_, err = terraform(ctx, append([]string{"apply", "-auto-approve", "-input=false"}, vars...)...)
		require.NoError(t, err, "terraform apply of image_dir %s", imageB)
		t.Logf("FIGURES terraform apply rolling the 2 nodes out to image B: %s", time.Since(start).Round(100*time.Millisecond))
		code, stdout := verifyWith(imageB)
		assert.Zero(t, code, "constellation verify with image B's measurements:\n%s", stdout)
		code, stdout = verifyWith(image)
		assert.NotZero(t, code, "image A's measurements must no longer verify the nodes:\n%s", stdout)
		plan, err = terraform(ctx, append([]string{"plan", "-detailed-exitcode", "-input=false"}, vars...)...)
		require.NoError(t, err, "terraform plan after the roll-out shows changes or failed:\n%s", plan)
		for _, name := range []string{"cp-0", "worker-0"} {
			assert.Equal(t, imageB, node.RunningImage(node.StateDirFor(terraformCluster, name)), "%s runs image B", name)
		}
	}

	for _, secret := range []string{hex.EncodeToString(secret), outputs["master_secret"].(string)} {
		assert.NotContains(t, c.logs.String(), secret, "a secret in Terraform's output")
	}
}

// terraformOutputs reads every output, sensitive ones included, as Terraform's JSON values.
func terraformOutputs(ctx context.Context, t *testing.T, terraform func(context.Context, ...string) (string, error)) map[string]any {
	t.Helper()
	raw, err := terraform(ctx, "output", "-json")
	require.NoError(t, err)
	var outputs map[string]struct {
		Value any `json:"value"`
	}
	require.NoError(t, json.Unmarshal([]byte(raw), &outputs), raw)
	values := map[string]any{}
	for name, o := range outputs {
		values[name] = o.Value
	}
	return values
}
