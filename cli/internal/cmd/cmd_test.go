package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
)

type result struct {
	code   int
	stdout string
	stderr string
}

func run(t *testing.T, fs afero.Fs, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Execute(context.Background(), args, strings.NewReader(""), &out, &errOut, fs)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

func TestConfigGenerate(t *testing.T) {
	testCases := map[string]struct {
		args        []string
		existing    bool
		wantCode    int
		wantPath    string
		wantStdout  string
		wantStderr  string
		wantValid   bool
		wantK8s     string
		wantName    string
		wantVariant string
	}{
		"local": {
			args: []string{"config", "generate", "local"}, wantPath: config.FileName,
			wantStdout: "Wrote constellation-conf.yaml for provider local", wantValid: true,
			wantK8s: "v1.33.13", wantName: "constell", wantVariant: "qemu-vtpm",
		},
		"qemu in a new workspace": {
			args: []string{"-C", "ws/new", "config", "generate", "qemu"}, wantPath: "ws/new/" + config.FileName,
			wantStdout: "Wrote ws/new/constellation-conf.yaml", wantValid: true,
			wantK8s: "v1.33.13", wantName: "constell", wantVariant: "qemu-vtpm",
		},
		"flags": {
			args:     []string{"config", "generate", "local", "--kubernetes", "1.33", "--name", "prod"},
			wantPath: config.FileName, wantValid: true, wantK8s: "v1.33.13", wantName: "prod", wantVariant: "qemu-vtpm",
		},
		"aws needs filling in": {
			args: []string{"config", "generate", "AWS"}, wantPath: config.FileName,
			wantStdout: "Fill in the account-specific fields", wantK8s: "v1.33.13", wantName: "constell", wantVariant: "aws-sev-snp",
		},
		"user-managed keys": {
			args: []string{"config", "generate", "local", "--kms", "aws-kms"}, wantPath: config.FileName,
			wantStdout: "Fill in the account-specific fields", wantK8s: "v1.33.13", wantName: "constell", wantVariant: "qemu-vtpm",
		},
		"unknown key backend": {
			args: []string{"config", "generate", "local", "--kms", "vault"}, wantCode: 1,
			wantStderr: `--kms: "vault" is not one of constellation-managed, aws-kms`,
		},
		"unknown provider": {
			args: []string{"config", "generate", "openstack"}, wantCode: 1,
			wantStderr: `unknown provider "openstack": choose one of local, qemu, aws, gcp, azure`,
		},
		"missing provider": {
			args: []string{"config", "generate"}, wantCode: 1, wantStderr: "accepts 1 arg(s), received 0",
		},
		"unsupported kubernetes": {
			args: []string{"config", "generate", "local", "--kubernetes", "v1.20"}, wantCode: 1,
			wantStderr: "--kubernetes: kubernetes version \"v1.20\" is not supported",
		},
		"bad name": {
			args: []string{"config", "generate", "local", "--name", "Bad_Name"}, wantCode: 1,
			wantStderr: `field "name"`,
		},
		"refuses to overwrite": {
			args: []string{"config", "generate", "local"}, existing: true, wantCode: 1,
			wantStderr: "constellation-conf.yaml already exists: pass --force",
		},
		"force overwrites": {
			args: []string{"config", "generate", "local", "--force"}, existing: true, wantPath: config.FileName,
			wantValid: true, wantK8s: "v1.33.13", wantName: "constell", wantVariant: "qemu-vtpm",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			if tc.existing {
				require.NoError(t, afero.WriteFile(fs, config.FileName, []byte("old"), 0o644))
			}
			res := run(t, fs, tc.args...)
			assert.Equal(t, tc.wantCode, res.code, "stderr: %s", res.stderr)
			assert.Contains(t, res.stdout, tc.wantStdout)
			assert.Contains(t, res.stderr, tc.wantStderr)
			if tc.wantCode != 0 {
				if tc.existing {
					got, err := afero.ReadFile(fs, config.FileName)
					require.NoError(t, err)
					assert.Equal(t, "old", string(got), "a failed generate must not touch the existing file")
				}
				return
			}
			data, err := afero.ReadFile(fs, tc.wantPath)
			require.NoError(t, err)
			assert.Contains(t, string(data), "# Schema version of this file.", "the file must be commented")
			cfg, err := config.Parse(data)
			if tc.wantValid {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, config.ErrInvalid)
				cfg = &config.Config{}
				require.NoError(t, file.NewHandler(fs).ReadYAML(tc.wantPath, cfg))
			}
			assert.Equal(t, tc.wantK8s, cfg.KubernetesVersion)
			assert.Equal(t, tc.wantName, cfg.Name)
			assert.Equal(t, tc.wantVariant, cfg.Attestation.Variant)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	valid, err := config.Default(cloudprovider.Local)
	require.NoError(t, err)
	validData, err := valid.Marshal()
	require.NoError(t, err)
	typo := bytes.Replace(validData, []byte("bridgeCIDR:"), []byte("bridgeCIRD:"), 1)

	testCases := map[string]struct {
		content      []byte
		args         []string
		wantCode     int
		wantStdout   string
		wantStderr   string
		wantProblems []validationProblem
	}{
		"valid": {content: validData, wantStdout: "constellation-conf.yaml is valid."},
		"typo": {
			content: typo, wantCode: 1,
			wantStderr: `field "provider.local.bridgeCIRD" (line `,
		},
		"missing file": {wantCode: 1, wantStderr: "constellation config generate"},
		"valid json":   {content: validData, args: []string{"-o", "json"}, wantStdout: `"valid": true`},
		"typo json": {
			content: typo, args: []string{"-o", "json"}, wantCode: 1,
			wantProblems: []validationProblem{{Field: "provider.local.bridgeCIRD", Message: `unknown field; did you mean "bridgeCIDR"?`}},
		},
		"bad output format": {content: validData, args: []string{"-o", "xml"}, wantCode: 1, wantStderr: `unknown output format "xml"`},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			if tc.content != nil {
				require.NoError(t, afero.WriteFile(fs, config.FileName, tc.content, 0o644))
			}
			res := run(t, fs, append([]string{"config", "validate"}, tc.args...)...)
			assert.Equal(t, tc.wantCode, res.code, "stderr: %s", res.stderr)
			assert.Contains(t, res.stdout, tc.wantStdout)
			assert.Contains(t, res.stderr, tc.wantStderr)
			if tc.wantProblems != nil {
				var got validationResult
				require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
				assert.False(t, got.Valid)
				require.Len(t, got.Problems, len(tc.wantProblems))
				for i, want := range tc.wantProblems {
					assert.Equal(t, want.Field, got.Problems[i].Field)
					assert.Equal(t, want.Message, got.Problems[i].Message)
					assert.NotZero(t, got.Problems[i].Line)
				}
				assert.Empty(t, res.stderr, "JSON output reports problems on stdout only")
			}
		})
	}
}

func TestConfigSchema(t *testing.T) {
	res := run(t, afero.NewMemMapFs(), "config", "schema")
	require.Equal(t, 0, res.code, res.stderr)
	var schema map[string]any
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &schema))
	assert.Equal(t, config.SchemaID, schema["$id"])
}

func TestVersion(t *testing.T) {
	res := run(t, afero.NewMemMapFs(), "version")
	require.Equal(t, 0, res.code)
	assert.Contains(t, res.stdout, "Version:")
	assert.Contains(t, res.stdout, "Go version:")

	res = run(t, afero.NewMemMapFs(), "version", "-o", "json")
	require.Equal(t, 0, res.code)
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &info))
	assert.Contains(t, info, "version")
	assert.Contains(t, info, "goVersion")
	assert.NotContains(t, res.stdout, "time", "no timestamps: builds must be reproducible")
}

func TestWorkspaceMustBeDirectory(t *testing.T) {
	fs := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(fs, "afile", nil, 0o644))
	res := run(t, fs, "-C", "afile", "config", "generate", "local")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "workspace afile is not a directory")
}

func TestCompletion(t *testing.T) {
	res := run(t, afero.NewMemMapFs(), "__complete", "config", "generate", "")
	require.Equal(t, 0, res.code)
	for _, p := range cloudprovider.Names() {
		assert.Contains(t, res.stdout, p+"\n")
	}
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		res := run(t, afero.NewMemMapFs(), "completion", shell)
		assert.Equal(t, 0, res.code, shell)
		assert.NotEmpty(t, res.stdout, shell)
	}
}

func TestHelp(t *testing.T) {
	res := run(t, afero.NewMemMapFs(), "--help")
	require.Equal(t, 0, res.code)
	for _, want := range []string{"--workspace", "--debug", "config", "version", "completion"} {
		assert.Contains(t, res.stdout, want)
	}
	res = run(t, afero.NewMemMapFs(), "config", "generate", "--help")
	assert.Contains(t, res.stdout, "Example")
}
