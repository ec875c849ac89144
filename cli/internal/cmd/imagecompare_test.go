package cmd

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

// publishedFS holds uki.efi, the signed measurements.json that 'image measure' writes for it, the key pair,
// and other.efi, a UKI with one changed command-line byte.
func publishedFS(t *testing.T) afero.Fs {
	t.Helper()
	t.Setenv(cosign.PasswordEnv, testPassword)
	fs := newKeyFs(t)
	require.NoError(t, afero.WriteFile(fs, "uki.efi", precomputetest.UKI(), 0o644))
	other := strings.Replace(string(precomputetest.UKI()), "console=ttyS0", "console=ttyS1", 1)
	require.NoError(t, afero.WriteFile(fs, "other.efi", []byte(other), 0o644))
	res := run(t, fs, "image", "measure", "uki.efi", "--sign-key", "cosign.key", "--image-ref", "constellation-node-v1.2.0")
	require.Equal(t, 0, res.code, res.stderr)
	return fs
}

func TestImageCompare(t *testing.T) {
	testCases := map[string]struct {
		args       []string
		edit       func(t *testing.T, fs afero.Fs)
		wantCode   int
		wantStdout []string
		wantStderr string
	}{
		"match, signature checked": {
			args:       []string{"uki.efi", "--measurements", "measurements.json", "--public-key", "cosign.pub"},
			wantStdout: []string{"All 6 PCRs match: uki.efi reproduces the published measurements.", "signature verified with cosign.pub", "image constellation-node-v1.2.0"},
		},
		"match, unsigned check": {
			args:       []string{"uki.efi", "--measurements", "measurements.json"},
			wantStdout: []string{"All 6 PCRs match", "signature NOT checked"},
		},
		"another command line": {
			args:     []string{"other.efi", "--measurements", "measurements.json", "--public-key", "cosign.pub"},
			wantCode: 1,
			wantStdout: []string{"3 of 6 PCRs differ (PCR 4, 9, 11)", "DIFFERS: boot chain", "DIFFERS: kernel command line and initrd",
				"DIFFERS: UKI sections, then the boot phases up to ready", "other.efi is not the image"},
		},
		"a PCR the file lacks": {
			args: []string{"uki.efi", "--measurements", "fewer.json"},
			edit: func(t *testing.T, fs afero.Fs) {
				data, err := afero.ReadFile(fs, "measurements.json")
				require.NoError(t, err)
				f, err := signed.Parse(data)
				require.NoError(t, err)
				delete(f.Measurements, measurements.PCRSystemd)
				out, err := f.Marshal()
				require.NoError(t, err)
				require.NoError(t, afero.WriteFile(fs, "fewer.json", out, 0o644))
			},
			wantCode:   1,
			wantStdout: []string{"1 of 6 PCRs differ (PCR 13)", "(none)"},
		},
		"another boot path": {
			args: []string{"uki.efi", "--measurements", "measurements.json", "--boot-path", "systemd-boot", "--boot-loader", "sd-boot.efi"},
			edit: func(t *testing.T, fs afero.Fs) {
				require.NoError(t, afero.WriteFile(fs, "sd-boot.efi", precomputetest.BootLoader(), 0o644))
			},
			wantCode:   1,
			wantStdout: []string{"PCR 4, 12"},
		},
		"changed after signing": {
			args: []string{"uki.efi", "--measurements", "measurements.json", "--public-key", "cosign.pub"},
			edit: func(t *testing.T, fs afero.Fs) {
				data, err := afero.ReadFile(fs, "measurements.json")
				require.NoError(t, err)
				require.NoError(t, afero.WriteFile(fs, "measurements.json", []byte(strings.Replace(string(data), "v1.2.0", "v1.2.1", 1)), 0o644))
			},
			wantCode:   1,
			wantStderr: "measurements.json is not signed by cosign.pub",
		},
		"signature missing": {
			args:       []string{"uki.efi", "--measurements", "measurements.json", "--public-key", "cosign.pub", "--signature", "none.sig"},
			wantCode:   1,
			wantStderr: "pass the file's signature with --signature",
		},
		"signature without key": {
			args:       []string{"uki.efi", "--measurements", "measurements.json", "--signature", "measurements.json.sig"},
			wantCode:   1,
			wantStderr: "--signature needs --public-key",
		},
		"no measurements flag": {
			args:       []string{"uki.efi"},
			wantCode:   1,
			wantStderr: `required flag(s) "measurements" not set`,
		},
		"not a UKI": {
			args:       []string{"cosign.pub", "--measurements", "measurements.json"},
			wantCode:   1,
			wantStderr: "cosign.pub is not a usable UKI",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := publishedFS(t)
			if tc.edit != nil {
				tc.edit(t, fs)
			}
			res := run(t, fs, append([]string{"image", "compare"}, tc.args...)...)
			assert.Equal(t, tc.wantCode, res.code, "stdout: %s\nstderr: %s", res.stdout, res.stderr)
			for _, want := range tc.wantStdout {
				assert.Contains(t, res.stdout, want)
			}
			assert.Contains(t, res.stderr, tc.wantStderr)
		})
	}
}

func TestImageCompareJSON(t *testing.T) {
	fs := publishedFS(t)
	res := run(t, fs, "image", "compare", "other.efi", "--measurements", "measurements.json", "-o", "json")
	require.Equal(t, 1, res.code, res.stderr)
	var got compareResult
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&got))
	assert.False(t, got.Match)
	assert.False(t, got.SignatureVerified)
	assert.Equal(t, []uint32{4, 9, 11}, got.Differing, "the UKI's own hash is in PCR 4")
	require.Len(t, got.PCRs, 6)
	for _, row := range got.PCRs {
		assert.Equal(t, row.PCR > 11, row.Match, "PCR %d", row.PCR)
		assert.Len(t, row.Published, 64)
		assert.Len(t, row.Reproduced, 64)
	}

	res = run(t, fs, "image", "compare", "uki.efi", "--measurements", "measurements.json", "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
	assert.True(t, got.Match)
	assert.Empty(t, got.Differing)
}
