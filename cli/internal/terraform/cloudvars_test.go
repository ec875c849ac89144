package terraform

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	tfmodules "github.com/constellation-go/constellation/terraform"
)

var testInitSecret = bytes.Repeat([]byte{0xab}, 32)

// validConfig returns a configuration for provider that passes config.Validate.
func validConfig(t *testing.T, provider cloudprovider.Provider) *config.Config {
	t.Helper()
	cfg, err := config.Default(provider)
	require.NoError(t, err)
	zone := ""
	switch provider {
	case cloudprovider.AWS:
		cfg.Image = "ami-0123456789abcdef0"
		cfg.Provider.AWS.Region = "eu-west-1"
		cfg.Provider.AWS.IAMProfileControlPlane = "constellation-cp"
		cfg.Provider.AWS.IAMProfileWorkerNodes = "constellation-worker"
		zone = "eu-west-1a"
	case cloudprovider.GCP:
		cfg.Image = "projects/constellation-images/global/images/constellation-v1"
		cfg.Provider.GCP.Project = "my-project"
		cfg.Provider.GCP.Region = "europe-west3"
		zone = "europe-west3-a"
	case cloudprovider.Azure:
		cfg.Image = "/subscriptions/0d202bbb-4fa7-4af8-8125-58c269a05435/resourceGroups/images/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0"
		cfg.Provider.Azure.SubscriptionID = "00000000-0000-0000-0000-000000000001"
		cfg.Provider.Azure.TenantID = "00000000-0000-0000-0000-000000000002"
		cfg.Provider.Azure.Location = "westeurope"
		cfg.Provider.Azure.ResourceGroup = "constellation-rg"
		cfg.Provider.Azure.UserAssignedIdentity = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/constellation-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nodes"
		zone = "1"
	}
	for name, g := range cfg.NodeGroups {
		g.Zone = zone
		cfg.NodeGroups[name] = g
	}
	if cfg.Attestation.SEVSNP != nil {
		cfg.Attestation.SEVSNP.LaunchMeasurements = []string{strings.Repeat("5a", 48)}
	}
	require.NoError(t, cfg.Validate())
	return cfg
}

// validInputs returns inputs that fit validConfig's configuration.
func validInputs(cfg *config.Config) Inputs {
	in := Inputs{UID: "abc123", InitSecret: testInitSecret, ImageRef: cfg.Image}
	switch cfg.GetProvider() {
	case cloudprovider.Local:
		in.ImageRef, in.ServicesDir = "/opt/constellation/image", "/opt/constellation/services"
	case cloudprovider.QEMU:
		in.ImageRef = "/opt/constellation/image"
	}
	return in
}

// fakeKVM makes the KVM probe answer usable and counts its calls.
func fakeKVM(t *testing.T, usable bool) *int {
	t.Helper()
	calls := 0
	old := kvmProbe
	kvmProbe = func() bool { calls++; return usable }
	t.Cleanup(func() { kvmProbe = old })
	return &calls
}

func TestCloudVariables(t *testing.T) {
	testCases := map[string]struct {
		provider cloudprovider.Provider
		edit     func(cfg *config.Config, in *Inputs)
		want     map[string]any // every provider-specific variable but nodes
		wantErr  string
	}{
		"qemu": {
			provider: cloudprovider.QEMU,
			edit:     func(cfg *config.Config, _ *Inputs) { cfg.Provider.QEMU.Accelerator = "tcg" },
			want: map[string]any{
				"libvirt_uri": "qemu:///system", "firmware": "/usr/share/OVMF/OVMF_CODE_4M.fd",
				"nvram_template": "/usr/share/OVMF/OVMF_VARS_4M.fd", "domain_type": "qemu", "vcpus": 2, "memory_mib": 2048,
			},
		},
		"qemu with kvm and a combined firmware image": {
			provider: cloudprovider.QEMU,
			edit: func(cfg *config.Config, _ *Inputs) {
				cfg.Provider.QEMU.Accelerator = "kvm"
				cfg.Provider.QEMU.Firmware = "/usr/share/qemu/OVMF.fd"
				cfg.Provider.QEMU.VCPUs, cfg.Provider.QEMU.MemoryMiB = 4, 8192
				cfg.Provider.QEMU.LibvirtURI = "qemu+ssh://host/system"
			},
			want: map[string]any{
				"libvirt_uri": "qemu+ssh://host/system", "firmware": "/usr/share/qemu/OVMF.fd",
				"nvram_template": "", "domain_type": "kvm", "vcpus": 4, "memory_mib": 8192,
			},
		},
		"qemu image path is relative": {
			provider: cloudprovider.QEMU,
			edit:     func(_ *config.Config, in *Inputs) { in.ImageRef = "out/image" },
			wantErr:  `absolute path, got "out/image"`,
		},
		"qemu firmware path is relative": {
			provider: cloudprovider.QEMU,
			edit:     func(cfg *config.Config, _ *Inputs) { cfg.Provider.QEMU.Firmware = "OVMF_CODE.fd" },
			wantErr:  "provider.qemu.firmware must be an absolute path",
		},
		"qemu unknown accelerator": {
			provider: cloudprovider.QEMU,
			edit:     func(cfg *config.Config, _ *Inputs) { cfg.Provider.QEMU.Accelerator = "hvf" },
			wantErr:  `accelerator "hvf" is not auto, kvm or tcg`,
		},
		"qemu without control planes": {
			provider: cloudprovider.QEMU,
			edit:     func(cfg *config.Config, _ *Inputs) { setCount(cfg, config.DefaultControlPlaneGroup, 0) },
			wantErr:  "no control-plane node",
		},
		"aws": {
			provider: cloudprovider.AWS,
			want: map[string]any{
				"region": "eu-west-1", "iam_instance_profile_control_plane": "constellation-cp",
				"iam_instance_profile_worker_nodes": "constellation-worker",
			},
		},
		"aws image is not an AMI": {
			provider: cloudprovider.AWS,
			edit:     func(_ *config.Config, in *Inputs) { in.ImageRef = "image-0123" },
			wantErr:  `needs an AMI ID (ami-...) as the image, got "image-0123"`,
		},
		"aws zone outside the region": {
			provider: cloudprovider.AWS,
			edit:     func(cfg *config.Config, _ *Inputs) { setZone(cfg, config.DefaultWorkerGroup, "us-east-1a") },
			wantErr:  `nodeGroups.worker_default.zone "us-east-1a" is not an availability zone of region eu-west-1`,
		},
		"aws zone is the region": {
			provider: cloudprovider.AWS,
			edit:     func(cfg *config.Config, _ *Inputs) { setZone(cfg, config.DefaultControlPlaneGroup, "eu-west-1") },
			wantErr:  `nodeGroups.control_plane_default.zone "eu-west-1"`,
		},
		"aws without control planes": {
			provider: cloudprovider.AWS,
			edit:     func(cfg *config.Config, _ *Inputs) { setCount(cfg, config.DefaultControlPlaneGroup, 0) },
			wantErr:  "no control-plane node",
		},
		"gcp": {
			provider: cloudprovider.GCP,
			want: map[string]any{
				"project": "my-project", "region": "europe-west3", "credentials_file": "../gcpServiceAccountKey.json",
			},
		},
		"gcp key file in a subdirectory": {
			provider: cloudprovider.GCP,
			edit:     func(cfg *config.Config, _ *Inputs) { cfg.Provider.GCP.ServiceAccountKeyPath = "keys/./sa.json" },
			want: map[string]any{
				"project": "my-project", "region": "europe-west3", "credentials_file": "../keys/sa.json",
			},
		},
		"gcp key file outside the workspace": {
			provider: cloudprovider.GCP,
			edit:     func(cfg *config.Config, _ *Inputs) { cfg.Provider.GCP.ServiceAccountKeyPath = "../shared/sa.json" },
			want: map[string]any{
				"project": "my-project", "region": "europe-west3", "credentials_file": "../../shared/sa.json",
			},
		},
		"gcp absolute key file": {
			provider: cloudprovider.GCP,
			edit:     func(cfg *config.Config, _ *Inputs) { cfg.Provider.GCP.ServiceAccountKeyPath = "/etc/keys//sa.json" },
			want: map[string]any{
				"project": "my-project", "region": "europe-west3", "credentials_file": "/etc/keys/sa.json",
			},
		},
		"gcp zone of another region": {
			provider: cloudprovider.GCP,
			edit:     func(cfg *config.Config, _ *Inputs) { setZone(cfg, config.DefaultWorkerGroup, "europe-west1-b") },
			wantErr:  `nodeGroups.worker_default.zone "europe-west1-b" is not a zone of region europe-west3`,
		},
		"gcp without key file": {
			provider: cloudprovider.GCP,
			edit:     func(cfg *config.Config, _ *Inputs) { cfg.Provider.GCP.ServiceAccountKeyPath = "" },
			wantErr:  "serviceAccountKeyPath must be set",
		},
		"gcp without image": {
			provider: cloudprovider.GCP,
			edit:     func(_ *config.Config, in *Inputs) { in.ImageRef = "" },
			wantErr:  "needs an image",
		},
		"azure": {
			provider: cloudprovider.Azure,
			want: map[string]any{
				"subscription_id": "00000000-0000-0000-0000-000000000001", "tenant_id": "00000000-0000-0000-0000-000000000002",
				"location": "westeurope", "resource_group": "constellation-rg",
				"user_assigned_identity": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/constellation-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nodes",
			},
		},
		"azure zone is a name": {
			provider: cloudprovider.Azure,
			edit:     func(cfg *config.Config, _ *Inputs) { setZone(cfg, config.DefaultControlPlaneGroup, "westeurope-1") },
			wantErr:  `nodeGroups.control_plane_default.zone "westeurope-1" is not an availability zone number`,
		},
		"azure without image": {
			provider: cloudprovider.Azure,
			edit:     func(_ *config.Config, in *Inputs) { in.ImageRef = "" },
			wantErr:  "needs an image",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fakeKVM(t, false)
			cfg := validConfig(t, tc.provider)
			in := validInputs(cfg)
			if tc.edit != nil {
				tc.edit(cfg, &in)
			}

			vars, err := Variables(cfg, in)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)

			wantKeys := []string{"name", "uid", "init_secret", "image", "nodes"}
			for k, v := range tc.want {
				wantKeys = append(wantKeys, k)
				assert.Equal(t, v, vars[k], "variable %s", k)
			}
			assert.ElementsMatch(t, wantKeys, mapKeys(vars))
			assert.Equal(t, cfg.Name, vars["name"])
			assert.Equal(t, "abc123", vars["uid"])
			assert.Equal(t, hex.EncodeToString(testInitSecret), vars["init_secret"])
			assert.Equal(t, in.ImageRef, vars["image"])

			// terraform.tfvars.json: every value must survive JSON.
			data, err := json.Marshal(vars)
			require.NoError(t, err)
			var decoded struct {
				Nodes map[string]struct {
					Role            string  `json:"role"`
					Group           string  `json:"group"`
					Index           *int    `json:"index"`
					StateDiskSizeGB int     `json:"state_disk_size_gb"`
					InstanceType    *string `json:"instance_type"`
					Zone            *string `json:"zone"`
				} `json:"nodes"`
			}
			require.NoError(t, json.Unmarshal(data, &decoded))
			require.Len(t, decoded.Nodes, 2)
			cp, worker := decoded.Nodes["cp-0"], decoded.Nodes["worker-0"]
			assert.Equal(t, config.RoleControlPlane, cp.Role)
			assert.Equal(t, config.DefaultControlPlaneGroup, cp.Group)
			require.NotNil(t, cp.Index)
			assert.Equal(t, 0, *cp.Index)
			assert.Equal(t, config.RoleWorker, worker.Role)
			require.NotNil(t, worker.Index)
			assert.Equal(t, 1, *worker.Index, "workers follow the control planes")
			assert.Equal(t, cfg.NodeGroups[config.DefaultWorkerGroup].StateDiskSizeGB, worker.StateDiskSizeGB)
			require.NotNil(t, worker.Zone)
			assert.Equal(t, cfg.NodeGroups[config.DefaultWorkerGroup].Zone, *worker.Zone)
		})
	}
}

func TestNodesVariableOfSeveralGroups(t *testing.T) {
	cfg := validConfig(t, cloudprovider.AWS)
	cfg.NodeGroups["a_big_workers"] = config.NodeGroup{
		Role: config.RoleWorker, Zone: "eu-west-1b", InstanceType: "c6a.2xlarge", StateDiskSizeGB: 100, InitialCount: 2,
	}
	setCount(cfg, config.DefaultControlPlaneGroup, 3)
	require.NoError(t, cfg.Validate())

	vars, err := Variables(cfg, validInputs(cfg))
	require.NoError(t, err)
	data, err := json.Marshal(vars["nodes"])
	require.NoError(t, err)
	// Control planes first, then workers numbered across groups in the groups' name order.
	assert.JSONEq(t, `{
		"cp-0": {"role": "control-plane", "group": "control_plane_default", "index": 0, "state_disk_size_gb": 30, "instance_type": "m6a.xlarge", "zone": "eu-west-1a"},
		"cp-1": {"role": "control-plane", "group": "control_plane_default", "index": 1, "state_disk_size_gb": 30, "instance_type": "m6a.xlarge", "zone": "eu-west-1a"},
		"cp-2": {"role": "control-plane", "group": "control_plane_default", "index": 2, "state_disk_size_gb": 30, "instance_type": "m6a.xlarge", "zone": "eu-west-1a"},
		"worker-0": {"role": "worker", "group": "a_big_workers", "index": 3, "state_disk_size_gb": 100, "instance_type": "c6a.2xlarge", "zone": "eu-west-1b"},
		"worker-1": {"role": "worker", "group": "a_big_workers", "index": 4, "state_disk_size_gb": 100, "instance_type": "c6a.2xlarge", "zone": "eu-west-1b"},
		"worker-2": {"role": "worker", "group": "worker_default", "index": 5, "state_disk_size_gb": 30, "instance_type": "m6a.xlarge", "zone": "eu-west-1a"}
	}`, string(data))
}

func TestMissingProviderSection(t *testing.T) {
	cfg := validConfig(t, cloudprovider.QEMU)
	in := validInputs(cfg)
	for name, render := range map[string]func(*config.Config, Inputs) (map[string]any, error){
		"qemu": qemuVariables, "aws": awsVariables, "gcp": gcpVariables, "azure": azureVariables,
	} {
		t.Run(name, func(t *testing.T) {
			empty := *cfg
			empty.Provider = config.ProviderConfig{}
			_, err := render(&empty, in)
			assert.ErrorContains(t, err, "no provider."+name+" section")
		})
	}
}

func TestQEMUDomainType(t *testing.T) {
	testCases := map[string]struct {
		accelerator string
		env         string
		kvmUsable   bool
		want        string
		wantProbe   bool
		wantErr     bool
	}{
		"kvm":                            {accelerator: "kvm", want: "kvm"},
		"kvm although the probe says no": {accelerator: "kvm", kvmUsable: false, want: "kvm"},
		"tcg":                            {accelerator: "tcg", kvmUsable: true, want: "qemu"},
		"tcg ignores the environment":    {accelerator: "tcg", env: "1", want: "qemu"},
		"auto, KVM usable":               {accelerator: "auto", kvmUsable: true, want: "kvm", wantProbe: true},
		"auto, KVM not usable":           {accelerator: "auto", kvmUsable: false, want: "qemu", wantProbe: true},
		"auto, environment forces KVM":   {accelerator: "auto", env: "1", kvmUsable: false, want: "kvm"},
		"auto, environment forces TCG":   {accelerator: "auto", env: "0", kvmUsable: true, want: "qemu"},
		"auto, bad environment value":    {accelerator: "auto", env: "yes", wantErr: true},
		"unknown accelerator":            {accelerator: "whpx", wantErr: true},
		"empty accelerator":              {accelerator: "", wantErr: true},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			t.Setenv(EnvQEMUKVM, tc.env)
			calls := fakeKVM(t, tc.kvmUsable)
			got, err := qemuDomainType(tc.accelerator)
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.wantProbe, *calls > 0, "probe called %d times", *calls)
		})
	}
}

func TestQEMUVariablesUseTheProbe(t *testing.T) {
	for usable, want := range map[bool]string{true: "kvm", false: "qemu"} {
		t.Run(fmt.Sprint(usable), func(t *testing.T) {
			t.Setenv(EnvQEMUKVM, "")
			fakeKVM(t, usable)
			cfg := validConfig(t, cloudprovider.QEMU)
			require.Equal(t, "auto", cfg.Provider.QEMU.Accelerator)
			vars, err := Variables(cfg, validInputs(cfg))
			require.NoError(t, err)
			assert.Equal(t, want, vars["domain_type"])
		})
	}
}

func TestProbeKVM(t *testing.T) {
	const (
		intelFlags = "processor\t: 0\nflags\t\t: fpu vme de pse vmx ssse3\nmodel name\t: x\n"
		amdFlags   = "processor\t: 0\nflags\t\t: fpu svm sse2\n"
		noFlags    = "processor\t: 0\nflags\t\t: fpu vme hypervisor\nbugs\t\t: vmx_virt\nmodel name\t: vmx svm\n"
	)
	testCases := map[string]struct {
		device  bool
		cpuinfo string
		pvm     bool
		want    bool
	}{
		"intel":                      {device: true, cpuinfo: intelFlags, want: true},
		"amd":                        {device: true, cpuinfo: amdFlags, want: true},
		"no device":                  {cpuinfo: intelFlags},
		"no hardware virtualization": {device: true, cpuinfo: noFlags},
		"no cpuinfo":                 {device: true},
		"pvm":                        {device: true, cpuinfo: intelFlags, pvm: true},
		"pvm without hardware flags": {device: true, cpuinfo: noFlags, pvm: true},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p := kvmPaths{
				Device:    filepath.Join(dir, "kvm"),
				CPUInfo:   filepath.Join(dir, "cpuinfo"),
				PVMModule: filepath.Join(dir, "module", "kvm_pvm"),
			}
			if tc.device {
				require.NoError(t, os.WriteFile(p.Device, nil, 0o600))
			}
			if tc.cpuinfo != "" {
				require.NoError(t, os.WriteFile(p.CPUInfo, []byte(tc.cpuinfo), 0o600))
			}
			if tc.pvm {
				require.NoError(t, os.MkdirAll(p.PVMModule, 0o755))
			}
			assert.Equal(t, tc.want, probeKVM(p))
		})
	}
}

func TestNVRAMTemplate(t *testing.T) {
	testCases := map[string]string{
		"/usr/share/OVMF/OVMF_CODE_4M.fd":      "/usr/share/OVMF/OVMF_VARS_4M.fd",
		"/usr/share/OVMF/OVMF_CODE.fd":         "/usr/share/OVMF/OVMF_VARS.fd",
		"/usr/share/edk2/ovmf/OVMF_CODE.cc.fd": "/usr/share/edk2/ovmf/OVMF_VARS.cc.fd",
		"/opt/CODE/OVMF.fd":                    "",
		"/usr/share/qemu/OVMF.fd":              "",
	}
	for firmware, want := range testCases {
		t.Run(firmware, func(t *testing.T) {
			assert.Equal(t, want, nvramTemplate(firmware))
		})
	}
}

// moduleVariables parses the variable blocks of an embedded module: name -> has a default.
func moduleVariables(t *testing.T, provider string) map[string]bool {
	t.Helper()
	names, err := fs.Glob(tfmodules.Modules, path.Join(provider, "*.tf"))
	require.NoError(t, err)
	require.NotEmpty(t, names, "module %s has no .tf files", provider)
	parser := hclparse.NewParser()
	declared := map[string]bool{}
	for _, name := range names {
		data, err := fs.ReadFile(tfmodules.Modules, name)
		require.NoError(t, err)
		f, diags := parser.ParseHCL(data, name)
		require.False(t, diags.HasErrors(), diags.Error())
		for _, b := range f.Body.(*hclsyntax.Body).Blocks {
			if b.Type == "variable" {
				_, hasDefault := b.Body.Attributes["default"]
				declared[b.Labels[0]] = hasDefault
			}
		}
	}
	return declared
}

// coverageProblems compares rendered variables with a module's declarations (name -> has a default):
// Terraform rejects an undeclared variable in terraform.tfvars.json only with a warning and asks for a
// missing one interactively, so both must be caught here.
func coverageProblems(declared map[string]bool, rendered map[string]any) []string {
	var problems []string
	for _, name := range mapKeys(rendered) {
		if _, ok := declared[name]; !ok {
			problems = append(problems, fmt.Sprintf("variable %s is rendered but not declared", name))
		}
	}
	for _, name := range mapKeys(declared) {
		if _, ok := rendered[name]; !ok && !declared[name] {
			problems = append(problems, fmt.Sprintf("variable %s has no default and is not rendered", name))
		}
	}
	return problems
}

func TestModulesDeclareTheRenderedVariables(t *testing.T) {
	entries, err := fs.ReadDir(tfmodules.Modules, ".")
	require.NoError(t, err)
	tested := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		provider, err := cloudprovider.Parse(e.Name())
		require.NoError(t, err, "module directory %s is not a provider", e.Name())
		t.Run(e.Name(), func(t *testing.T) {
			fakeKVM(t, false)
			cfg := validConfig(t, provider)
			vars, err := Variables(cfg, validInputs(cfg))
			require.NoError(t, err)
			assert.Empty(t, coverageProblems(moduleVariables(t, e.Name()), vars))
		})
		tested++
	}
	assert.GreaterOrEqual(t, tested, 4)
}

func TestCoverageProblemsDetectsGaps(t *testing.T) {
	cfg := validConfig(t, cloudprovider.AWS)
	vars, err := Variables(cfg, validInputs(cfg))
	require.NoError(t, err)
	declared := moduleVariables(t, "aws")
	require.Empty(t, coverageProblems(declared, vars))

	delete(vars, "region")
	vars["region_name"] = "eu-west-1"
	assert.ElementsMatch(t, []string{
		"variable region has no default and is not rendered",
		"variable region_name is rendered but not declared",
	}, coverageProblems(declared, vars))

	// A variable with a default may be left out.
	declared["region"] = true
	assert.Equal(t, []string{"variable region_name is rendered but not declared"}, coverageProblems(declared, vars))
}

func TestWorkspaceRelative(t *testing.T) {
	testCases := map[string]string{
		"key.json":           "../key.json",
		"./keys/key.json":    "../keys/key.json",
		"../outside.json":    "../../outside.json",
		Dir + "/key.json":    "key.json",
		"/abs/path/key.json": "/abs/path/key.json",
		"/abs/../key.json":   "/key.json",
	}
	for in, want := range testCases {
		t.Run(in, func(t *testing.T) {
			got, err := workspaceRelative(in)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			if !filepath.IsAbs(in) {
				// Resolved from Terraform's working directory, the path names the same file.
				assert.Equal(t, filepath.Clean(in), filepath.Join(Dir, got))
			}
		})
	}
}

func setZone(cfg *config.Config, group, zone string) {
	g := cfg.NodeGroups[group]
	g.Zone = zone
	cfg.NodeGroups[group] = g
}

func setCount(cfg *config.Config, group string, n int) {
	g := cfg.NodeGroups[group]
	g.InitialCount = n
	cfg.NodeGroups[group] = g
}

func mapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestLocalNodeImages: a node that runs another image than the module's keeps it in its own entry, and
// NodeImages reads back what every node runs.
func TestLocalNodeImages(t *testing.T) {
	cfg := validConfig(t, cloudprovider.Local)
	in := validInputs(cfg)
	in.ImageRef = "/images/b"
	in.NodeImages = map[string]string{"cp-0": "/images/a", "worker-0": "/images/b", "worker-9": "/images/a"}
	vars, err := Variables(cfg, in)
	require.NoError(t, err)
	nodes := vars["nodes"].(map[string]any)
	assert.Equal(t, "/images/a", nodes["cp-0"].(map[string]any)["image"])
	assert.NotContains(t, nodes["worker-0"].(map[string]any), "image", "a node on the module's image needs no entry")
	assert.NotContains(t, nodes, "worker-9", "a node the configuration does not have is not made by its image")

	// Through JSON, as the workspace stores them.
	data, err := json.Marshal(vars)
	require.NoError(t, err)
	var stored map[string]any
	require.NoError(t, json.Unmarshal(data, &stored))
	assert.Equal(t, map[string]string{"cp-0": "/images/a", "worker-0": "/images/b"}, NodeImages(stored))
}
