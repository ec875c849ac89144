package tfprovider

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6/tf6server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
	"github.com/constellation-go/constellation/internal/measurements/signed"
	"github.com/constellation-go/constellation/internal/testenv"
)

// providerAddress is the provider's address in Terraform configurations.
const providerAddress = "registry.terraform.io/constellation-go/constellation"

// withTerraform serves the provider from this test process and returns a function that runs real Terraform
// in dir against it (TF_REATTACH_PROVIDERS: no binary, no registry).
func withTerraform(t *testing.T, dir string) func(args ...string) string {
	t.Helper()
	bin := testenv.Need(t, "make setup installs terraform", "terraform", "/usr/local/bin/terraform")
	// The SDK's trace logs of a provider in debug mode would fill the test's output.
	for _, v := range []string{"TF_LOG_SDK", "TF_LOG_SDK_PROTO", "TF_LOG_SDK_FRAMEWORK", "TF_LOG_PROVIDER"} {
		t.Setenv(v, "OFF")
	}
	ctx, cancel := context.WithCancel(context.Background())
	reattach, closed := make(chan *plugin.ReattachConfig, 1), make(chan struct{})
	go func() {
		_ = tf6server.Serve(providerAddress, providerserver.NewProtocol6(New()), tf6server.WithDebug(ctx, reattach, closed),
			tf6server.WithoutLogStderrOverride())
	}()
	t.Cleanup(func() {
		cancel()
		<-closed
	})
	var cfg *plugin.ReattachConfig
	select {
	case cfg = <-reattach:
	case <-time.After(30 * time.Second):
		t.Fatal("the provider did not start serving")
	}
	env, err := json.Marshal(map[string]any{providerAddress: map[string]any{
		"Protocol": string(cfg.Protocol), "ProtocolVersion": cfg.ProtocolVersion, "Pid": cfg.Pid, "Test": true,
		"Addr": map[string]string{"Network": cfg.Addr.Network(), "String": cfg.Addr.String()},
	}})
	require.NoError(t, err)
	rc := filepath.Join(t.TempDir(), "terraformrc")
	require.NoError(t, os.WriteFile(rc, nil, 0o600))
	return func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "TF_REATTACH_PROVIDERS="+string(env), "TF_CLI_CONFIG_FILE="+rc, "CHECKPOINT_DISABLE=1",
			"TF_IN_AUTOMATION=1")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Run(), "terraform %v:\n%s", args, out.String())
		return out.String()
	}
}

// TestDataSourcesWithTerraform reads a signed measurements file and measures a built image with real
// Terraform, and compares them in the configuration, as a cluster's configuration would. (The provider runs in
// this test process, whose working directory is not Terraform's: the paths are absolute.)
func TestDataSourcesWithTerraform(t *testing.T) {
	dir := t.TempDir()
	uki := precomputetest.UKI()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "image"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "image", "constellation.efi"), uki, 0o644))
	_, m, err := precompute.FreshNode(uki, precompute.Options{Platform: &precompute.GenericUEFI, Path: precompute.BootDirect})
	require.NoError(t, err)
	privPEM, pubPEM, err := cosign.GenerateKeyPair(nil)
	require.NoError(t, err)
	signer, err := cosign.LoadPrivateKey(privPEM, nil)
	require.NoError(t, err)
	data, sig, err := signed.Sign(&signed.File{Version: signed.Version2, Image: precompute.ImageRef(uki), Variant: "qemu-vtpm",
		Issued: time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC), Measurements: m}, signer)
	require.NoError(t, err)
	for name, content := range map[string][]byte{"measurements.json": data, "measurements.json.sig": sig, "cosign.pub": pubPEM} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), content, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.tf"), []byte(`
terraform {
  required_providers {
    constellation = { source = "constellation-go/constellation" }
  }
}

data "constellation_attestation" "published" {
  measurements_url = abspath("measurements.json")
  public_key       = file("cosign.pub")
  variant          = "qemu-vtpm"
  image            = data.constellation_image.built.reference
}

data "constellation_image" "built" {
  path = abspath("image")
}

output "pcr4" {
  value = data.constellation_attestation.published.measurements["4"].expected
}

output "same" {
  value = data.constellation_attestation.published.measurements == data.constellation_image.built.measurements
}

output "verified" {
  value = data.constellation_attestation.published.verified
}
`), 0o644))
	terraform := withTerraform(t, dir)
	terraform("init", "-input=false", "-no-color")
	terraform("apply", "-auto-approve", "-input=false", "-no-color")
	var outputs map[string]struct {
		Value any `json:"value"`
	}
	require.NoError(t, json.Unmarshal([]byte(terraform("output", "-json")), &outputs))
	assert.Equal(t, m[4].Expected.String(), outputs["pcr4"].Value)
	assert.Equal(t, true, outputs["same"].Value, "the published measurements are the built image's")
	assert.Equal(t, true, outputs["verified"].Value)
	assert.Equal(t, measurements.DigestSize*2, len(outputs["pcr4"].Value.(string)))
}

// TestExampleValidates checks terraform/examples/local against the provider's schema with real Terraform
// (init and validate; the acceptance test applies it).
func TestExampleValidates(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join("..", "..", "terraform", "examples", "local")
	entries, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".tf" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644))
	}
	terraform := withTerraform(t, dir)
	terraform("init", "-input=false", "-no-color")
	assert.Contains(t, terraform("validate", "-no-color"), "The configuration is valid")
}
