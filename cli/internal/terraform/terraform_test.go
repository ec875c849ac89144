package terraform

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPrepare(t *testing.T) {
	ws := t.TempDir()
	fakeTF := filepath.Join(t.TempDir(), "terraform")
	require.NoError(t, os.WriteFile(fakeTF, []byte("#!/bin/sh\n"), 0o755))
	providerBin := filepath.Join(t.TempDir(), "terraform-provider-constellation")
	require.NoError(t, os.WriteFile(providerBin, []byte("v1"), 0o755))
	opts := Options{Terraform: fakeTF, Providers: []Provider{ConstellationProvider(providerBin)}}
	dir := filepath.Join(ws, Dir)

	// A stale file of an earlier module version goes; Terraform's state stays.
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "old.tf"), []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "terraform.tfstate"), []byte("{}"), 0o600))

	_, err := Prepare(ws, "local", map[string]any{"init_secret": "abcd"}, opts)
	require.NoError(t, err)
	assert.FileExists(t, filepath.Join(dir, "main.tf"))
	assert.NoFileExists(t, filepath.Join(dir, "old.tf"))
	assert.FileExists(t, filepath.Join(dir, "terraform.tfstate"))
	info, err := os.Stat(filepath.Join(dir, VarsFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "the variables hold the init secret")

	rc, err := os.ReadFile(filepath.Join(dir, cliConfigFile))
	require.NoError(t, err)
	assert.Contains(t, string(rc), `path    = "`+filepath.Join(dir, mirrorDir)+`"`)
	assert.Contains(t, string(rc), `include = ["registry.terraform.io/constellation-go/constellation"]`)
	installed := filepath.Join(dir, mirrorDir, "registry.terraform.io/constellation-go/constellation/0.1.0/linux_amd64/terraform-provider-constellation_v0.1.0")
	got, err := os.ReadFile(installed)
	require.NoError(t, err)
	assert.Equal(t, "v1", string(got))

	// A rebuilt provider replaces the mirror's copy and drops the lock file that pins the old one.
	require.NoError(t, os.WriteFile(filepath.Join(dir, lockFile), []byte("lock"), 0o600))
	_, err = Prepare(ws, "local", nil, opts)
	require.NoError(t, err)
	assert.FileExists(t, filepath.Join(dir, lockFile), "an unchanged provider keeps the lock")
	require.NoError(t, os.WriteFile(providerBin, []byte("v2"), 0o755))
	_, err = Prepare(ws, "local", nil, opts)
	require.NoError(t, err)
	assert.NoFileExists(t, filepath.Join(dir, lockFile))
	got, err = os.ReadFile(installed)
	require.NoError(t, err)
	assert.Equal(t, "v2", string(got))

	// Variables survive a Prepare without new ones (destroy, outputs).
	_, err = Open(ws, opts)
	require.NoError(t, err)
	vars, err := ReadVariables(ws)
	require.NoError(t, err)
	assert.Equal(t, "abcd", vars["init_secret"])
}

// TestPrepareQEMU: the qemu module needs the project's provider (its vTPMs and platform CA) from the mirror;
// the libvirt provider comes from the mirror when it was built, otherwise from the registry.
func TestPrepareQEMU(t *testing.T) {
	fakeTF := filepath.Join(t.TempDir(), "terraform")
	require.NoError(t, os.WriteFile(fakeTF, []byte("#!/bin/sh\n"), 0o755))
	lv := filepath.Join(t.TempDir(), "terraform-provider-libvirt")
	require.NoError(t, os.WriteFile(lv, []byte("libvirt"), 0o755))
	own := filepath.Join(t.TempDir(), "terraform-provider-constellation")
	require.NoError(t, os.WriteFile(own, []byte("constellation"), 0o755))

	ws := t.TempDir()
	_, err := Prepare(ws, "qemu", nil, Options{Terraform: fakeTF, Providers: []Provider{ConstellationProvider(own), LibvirtProvider(lv)}})
	require.NoError(t, err)
	rc, err := os.ReadFile(filepath.Join(ws, Dir, cliConfigFile))
	require.NoError(t, err)
	assert.Contains(t, string(rc), `include = ["registry.terraform.io/constellation-go/constellation", "registry.terraform.io/dmacvicar/libvirt"]`)
	assert.FileExists(t, filepath.Join(ws, Dir, mirrorDir, "registry.terraform.io/dmacvicar/libvirt/0.7.6/linux_amd64/terraform-provider-libvirt_v0.7.6"))

	ws = t.TempDir()
	_, err = Prepare(ws, "qemu", nil, Options{Terraform: fakeTF, Providers: []Provider{ConstellationProvider(own)}})
	require.NoError(t, err)
	rc, err = os.ReadFile(filepath.Join(ws, Dir, cliConfigFile))
	require.NoError(t, err)
	assert.Contains(t, string(rc), `include = ["registry.terraform.io/constellation-go/constellation"]`, "libvirt from the registry")

	_, err = Prepare(t.TempDir(), "qemu", nil, Options{Terraform: fakeTF, Providers: []Provider{LibvirtProvider(lv)}})
	require.ErrorContains(t, err, "the qemu module needs the Terraform provider registry.terraform.io/constellation-go/constellation")
}

func TestPrepareErrors(t *testing.T) {
	fakeTF := filepath.Join(t.TempDir(), "terraform")
	require.NoError(t, os.WriteFile(fakeTF, []byte("#!/bin/sh\n"), 0o755))
	testCases := map[string]struct {
		provider string
		opts     Options
		want     string
	}{
		"no terraform":           {provider: "local", opts: Options{Terraform: "/nonexistent/terraform"}, want: "go install github.com/hashicorp/terraform"},
		"no provider binary":     {provider: "local", opts: Options{Terraform: fakeTF}, want: "terraform-provider-constellation"},
		"missing provider build": {provider: "local", opts: Options{Terraform: fakeTF, Providers: []Provider{ConstellationProvider("/nonexistent")}}, want: "make build"},
		"unknown module":         {provider: "openstack", opts: Options{Terraform: fakeTF}, want: "no Terraform module"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := Prepare(t.TempDir(), tc.provider, nil, tc.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestProgressLines(t *testing.T) {
	var got []string
	r := &Runner{progress: func(s string) { got = append(got, s) }}
	w := &lineWriter{fn: r.event}
	_, _ = w.Write([]byte("constellation_local_node.node[\"cp-0\"]: Creating...\nPlan: 3 to add"))
	_, _ = w.Write([]byte(", 0 to change\nconstellation_local_node.node[\"cp-0\"]: Creation complete after 1s [id=c/cp-0]\n"))
	assert.Equal(t, []string{`constellation_local_node.node["cp-0"]: Creating...`,
		`constellation_local_node.node["cp-0"]: Creation complete after 1s [id=c/cp-0]`}, got)
	assert.False(t, strings.Contains(strings.Join(got, ""), "Plan"))
}

// TestProgressEvents: the user sees each resource's progress and every warning a provider reported (what it
// repaired), nothing else of Terraform's output.
func TestProgressEvents(t *testing.T) {
	testCases := map[string]struct {
		line        string
		beforeApply bool
		want        []string
	}{
		"a resource event": {
			line: `constellation_local_node.node["cp-0"]: Creation complete after 1s [id=c/cp-0]`,
			want: []string{`constellation_local_node.node["cp-0"]: Creation complete after 1s [id=c/cp-0]`},
		},
		"a plain warning":        {line: "Warning: Restarted the local provider daemon", want: []string{"warning: Restarted the local provider daemon"}},
		"a boxed warning":        {line: "│ Warning: Restarted the local provider daemon", want: []string{"warning: Restarted the local provider daemon"}},
		"other output":           {line: "Apply complete! Resources: 0 added, 0 changed, 0 destroyed."},
		"a warning's detail":     {line: "│ The daemon serving cluster c's metadata API was not running"},
		"a resource's attribute": {line: `      + image_dir = "/x"`},
		"terraform init's own warning": {
			line: "Warning: Incomplete lock file information for providers", beforeApply: true,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			var got []string
			r := &Runner{progress: func(s string) { got = append(got, s) }}
			r.providersRun.Store(!tc.beforeApply)
			r.event(tc.line)
			assert.Equal(t, tc.want, got)
		})
	}
}
