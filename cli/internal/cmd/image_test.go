package cmd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

// The test key pair is made once: scrypt makes each generation and decryption cost a noticeable fraction
// of a second, more under the race detector.
type testKeyPair struct {
	priv, pub []byte
	signer    *cosign.Signer
}

var generateTestKeys = sync.OnceValues(func() (testKeyPair, error) {
	priv, pub, err := cosign.GenerateKeyPair([]byte(testPassword))
	if err != nil {
		return testKeyPair{}, err
	}
	signer, err := cosign.LoadPrivateKey(priv, []byte(testPassword))
	return testKeyPair{priv: priv, pub: pub, signer: signer}, err
})

// testKeys returns the private (cosign.key) and public (cosign.pub) test keys.
func testKeys(t *testing.T) (priv, pub []byte) {
	t.Helper()
	keys, err := generateTestKeys()
	require.NoError(t, err)
	return keys.priv, keys.pub
}

// testSigner returns the signer of the test key.
func testSigner(t *testing.T) *cosign.Signer {
	t.Helper()
	keys, err := generateTestKeys()
	require.NoError(t, err)
	return keys.signer
}

const testPassword = "test password"

func newKeyFs(t *testing.T) afero.Fs {
	t.Helper()
	priv, pub := testKeys(t)
	fs := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(fs, "cosign.key", priv, 0o600))
	require.NoError(t, afero.WriteFile(fs, "cosign.pub", pub, 0o644))
	return fs
}

// unsetEnv removes name for the test and restores it afterwards.
func unsetEnv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "")
	require.NoError(t, os.Unsetenv(name))
}

func TestImageKeygen(t *testing.T) {
	testCases := map[string]struct {
		args       []string
		password   *string
		existing   []string
		wantCode   int
		wantStderr string
		wantKey    string
		wantPub    string
	}{
		"default":         {password: ptr("pw"), wantKey: "cosign.key", wantPub: "cosign.pub"},
		"prefix":          {args: []string{"--output-prefix", "keys/release"}, password: ptr("pw"), wantKey: "keys/release.key", wantPub: "keys/release.pub"},
		"empty password":  {password: ptr(""), wantKey: "cosign.key", wantPub: "cosign.pub", wantStderr: "Warning: cosign.key is not protected by a password"},
		"no password set": {wantCode: 1, wantStderr: "set COSIGN_PASSWORD"},
		"key exists": {
			password: ptr("pw"), existing: []string{"cosign.key"}, wantCode: 1,
			wantStderr: "cosign.key already exists: pass --force to replace the key pair, or choose another --output-prefix",
		},
		"public key exists": {
			password: ptr("pw"), existing: []string{"cosign.pub"}, wantCode: 1,
			wantStderr: "cosign.pub already exists: pass --force",
		},
		"force": {
			args: []string{"--force"}, password: ptr("pw"), existing: []string{"cosign.key", "cosign.pub"},
			wantKey: "cosign.key", wantPub: "cosign.pub",
		},
		"empty prefix": {args: []string{"--output-prefix", ""}, password: ptr("pw"), wantCode: 1, wantStderr: "--output-prefix must not be empty"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			if tc.password != nil {
				t.Setenv(cosign.PasswordEnv, *tc.password)
			} else {
				unsetEnv(t, cosign.PasswordEnv)
			}
			fs := afero.NewMemMapFs()
			for _, p := range tc.existing {
				require.NoError(t, afero.WriteFile(fs, p, []byte("old"), 0o600))
			}
			res := run(t, fs, append([]string{"image", "keygen"}, tc.args...)...)
			assert.Equal(t, tc.wantCode, res.code, "stderr: %s", res.stderr)
			assert.Contains(t, res.stderr, tc.wantStderr)
			if tc.wantCode != 0 {
				for _, p := range []string{"cosign.key", "cosign.pub"} {
					data, err := afero.ReadFile(fs, p)
					if slices.Contains(tc.existing, p) {
						require.NoError(t, err)
						assert.Equal(t, "old", string(data), "a refused keygen leaves existing files alone")
					} else {
						assert.Error(t, err, "a refused keygen writes nothing")
					}
				}
				return
			}
			assert.Contains(t, res.stdout, "Wrote the private key to "+tc.wantKey)
			info, err := fs.Stat(tc.wantKey)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())
			info, err = fs.Stat(tc.wantPub)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o644), info.Mode().Perm())

			priv, err := afero.ReadFile(fs, tc.wantKey)
			require.NoError(t, err)
			pub, err := afero.ReadFile(fs, tc.wantPub)
			require.NoError(t, err)
			signer, err := cosign.LoadPrivateKey(priv, []byte(*tc.password))
			require.NoError(t, err)
			got, err := signer.PublicKeyPEM()
			require.NoError(t, err)
			assert.Equal(t, string(pub), string(got), "the public key belongs to the private key")
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestImageMeasure(t *testing.T) {
	uki := precomputetest.UKI()
	ukiSum := sha256.Sum256(uki)
	parsed, err := precompute.ParseUKI(uki)
	require.NoError(t, err)
	direct, err := precompute.Precompute(parsed, precompute.Options{})
	require.NoError(t, err)
	viaBoot, err := precompute.Precompute(parsed, precompute.Options{Path: precompute.BootSystemdBoot, BootLoader: precomputetest.BootLoader()})
	require.NoError(t, err)

	testCases := map[string]struct {
		args         []string
		password     *string
		staleSig     bool
		wantCode     int
		wantStdout   []string
		wantStderr   string
		wantImage    string
		wantVariant  string
		wantResult   *precompute.Result
		wantSigned   bool
		wantOut      string
		wantNoOutput bool
		wantIssued   time.Time // zero: about now
	}{
		"unsigned": {
			wantStdout: []string{
				"PCR  EXPECTED", "4    " + hex.EncodeToString(direct.PCRs(true)[4]),
				"11   " + hex.EncodeToString(direct.PCRs(true)[11]),
				hex.EncodeToString(direct.PCRs(false)[11]) + "  (informative) PCR 11 right after systemd-stub",
				"12   " + strings.Repeat("0", 64),
				"unsigned", "Hint: sign the measurements with --sign-key",
				`firmware profile OVMF 2022.11 (QEMU q35, -nodefaults)`,
			},
			wantImage: "sha256:" + hex.EncodeToString(ukiSum[:]), wantVariant: "qemu-vtpm", wantResult: direct,
		},
		"unverified platform": {
			args: []string{"--platform", "generic"},
			wantStdout: []string{
				`Note: the firmware profile "generic UEFI (unverified)" has not been checked`,
			},
			wantImage: "sha256:" + hex.EncodeToString(ukiSum[:]), wantVariant: "qemu-vtpm", wantResult: direct,
		},
		"unsigned removes a stale signature": {
			staleSig: true, wantStdout: []string{"Removed measurements.json.sig: it signed the previous content."},
			wantImage: "sha256:" + hex.EncodeToString(ukiSum[:]), wantVariant: "qemu-vtpm", wantResult: direct,
		},
		"signed": {
			args: []string{"--sign-key", "cosign.key", "--image-ref", "constellation-node-v1.2.0", "--out", "rel/m.json"}, password: ptr(testPassword),
			wantStdout: []string{"and its signature rel/m.json.sig", "constellation config fetch-measurements --url"},
			wantImage:  "constellation-node-v1.2.0", wantVariant: "qemu-vtpm", wantResult: direct, wantSigned: true, wantOut: "rel/m.json",
		},
		"systemd-boot": {
			args:       []string{"--boot-path", "systemd-boot", "--boot-loader", "sd-boot.efi", "--variant", "aws-sev-snp"},
			wantStdout: []string{"boot chain: firmware events, systemd-boot, UKI, kernel"},
			wantImage:  "sha256:" + hex.EncodeToString(ukiSum[:]), wantVariant: "aws-sev-snp", wantResult: viaBoot,
		},
		"wrong password": {
			args: []string{"--sign-key", "cosign.key"}, password: ptr("nope"), wantCode: 1,
			wantStderr: "cosign.key: cannot decrypt the private key: wrong password, or the key file is damaged: check COSIGN_PASSWORD", wantNoOutput: true,
		},
		"missing key": {
			args: []string{"--sign-key", "missing.key"}, password: ptr(testPassword), wantCode: 1,
			wantStderr: "create a key pair with 'constellation image keygen'", wantNoOutput: true,
		},
		"systemd-boot without boot loader": {
			args: []string{"--boot-path", "systemd-boot"}, wantCode: 1, wantStderr: "pass its EFI binary with --boot-loader", wantNoOutput: true,
		},
		"boot loader on the direct path": {
			args: []string{"--boot-loader", "sd-boot.efi"}, wantCode: 1, wantStderr: "--boot-loader only applies to --boot-path systemd-boot", wantNoOutput: true,
		},
		"unknown platform": {
			args: []string{"--platform", "coreboot"}, wantCode: 1, wantStderr: `unknown --platform "coreboot": choose one of ovmf, generic`, wantNoOutput: true,
		},
		"unknown boot path": {
			args: []string{"--boot-path", "grub"}, wantCode: 1, wantStderr: `unknown --boot-path "grub": choose one of direct, systemd-boot`, wantNoOutput: true,
		},
		"unknown variant": {
			args: []string{"--variant", "tdx"}, wantCode: 1, wantStderr: `--variant: unknown attestation variant "tdx"`, wantNoOutput: true,
		},
		"bad image reference": {
			args: []string{"--image-ref", "has space"}, wantCode: 1, wantStderr: "--image-ref", wantNoOutput: true,
		},
		"fixed issue time": {
			args:       []string{"--issued", "2026-11-30T08:00:00Z"},
			wantStdout: []string{"issued 2026-11-30T08:00:00Z"},
			wantImage:  "sha256:" + hex.EncodeToString(ukiSum[:]), wantVariant: "qemu-vtpm", wantResult: direct,
			wantIssued: time.Date(2026, time.November, 30, 8, 0, 0, 0, time.UTC),
		},
		"issue time not in UTC": {
			args: []string{"--issued", "2026-11-30T09:00:00+01:00"}, wantCode: 1, wantStderr: "--issued", wantNoOutput: true,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			if tc.password != nil {
				t.Setenv(cosign.PasswordEnv, *tc.password)
			} else {
				unsetEnv(t, cosign.PasswordEnv)
			}
			fs := newKeyFs(t)
			require.NoError(t, afero.WriteFile(fs, "uki.efi", uki, 0o644))
			require.NoError(t, afero.WriteFile(fs, "sd-boot.efi", precomputetest.BootLoader(), 0o644))
			out := signed.FileName
			if tc.wantOut != "" {
				out = tc.wantOut
			}
			if tc.staleSig {
				require.NoError(t, afero.WriteFile(fs, out+".sig", []byte("old"), 0o644))
			}

			res := run(t, fs, append([]string{"image", "measure", "uki.efi"}, tc.args...)...)
			assert.Equal(t, tc.wantCode, res.code, "stderr: %s", res.stderr)
			assert.Contains(t, res.stderr, tc.wantStderr)
			for _, want := range tc.wantStdout {
				assert.Contains(t, res.stdout, want)
			}
			if tc.wantNoOutput {
				_, err := fs.Stat(out)
				assert.Error(t, err, "a failed measure writes nothing")
				return
			}

			data, err := afero.ReadFile(fs, out)
			require.NoError(t, err)
			f, err := signed.Parse(data)
			require.NoError(t, err)
			assert.Equal(t, tc.wantImage, f.Image)
			assert.Equal(t, tc.wantVariant, f.Variant)
			assert.Equal(t, signed.Version2, f.Version)
			if tc.wantIssued.IsZero() {
				assert.WithinDuration(t, time.Now(), f.Issued, time.Minute)
			} else {
				assert.Equal(t, tc.wantIssued, f.Issued)
			}
			want := tc.wantResult.Measurements(true)
			want[15] = measurements.Measurement{Expected: make(measurements.Digest, 32)}
			assert.Equal(t, want, f.Measurements, "PCR 11 includes the boot phases; PCR 15 is a fresh node's")
			assert.Equal(t, measurements.DefaultEnforced, f.Measurements.Indices(), "every PCR the validator enforces")

			sig, err := afero.ReadFile(fs, out+".sig")
			if !tc.wantSigned {
				assert.Error(t, err, "no signature is left next to an unsigned file")
				return
			}
			require.NoError(t, err)
			_, pub := testKeys(t)
			verifier, err := cosign.ParsePublicKey(pub)
			require.NoError(t, err)
			_, err = signed.Verify(data, sig, verifier)
			require.NoError(t, err)
		})
	}
}

func TestImageMeasureJSON(t *testing.T) {
	t.Setenv(cosign.PasswordEnv, testPassword)
	fs := newKeyFs(t)
	require.NoError(t, afero.WriteFile(fs, "uki.efi", precomputetest.UKI(), 0o644))
	res := run(t, fs, "image", "measure", "uki.efi", "--sign-key", "cosign.key", "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)

	var got measureResult
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&got))
	data, err := afero.ReadFile(fs, signed.FileName)
	require.NoError(t, err)
	f, err := signed.Parse(data)
	require.NoError(t, err)

	assert.Equal(t, "uki.efi", got.UKI)
	assert.Equal(t, f.Image, got.Image)
	assert.Equal(t, "direct", got.BootPath)
	assert.True(t, got.PlatformVerified, "the default profile, OVMF, was checked against a real boot")
	assert.Equal(t, "measurements.json.sig", got.Signature)
	require.Len(t, got.PCRs, 6, "PCRs 4, 9, 11, 12, 13 and 15")
	for _, row := range got.PCRs {
		assert.Equal(t, f.Measurements[row.PCR].Expected.String(), row.Expected)
		assert.NotEmpty(t, row.Description)
	}
	assert.Len(t, got.PCR11AfterStub, 64)
	assert.NotEqual(t, got.PCR11AfterStub, f.Measurements[11].Expected.String())
}

func TestImageMeasureRejectsNonUKI(t *testing.T) {
	fs := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(fs, "kernel.efi", precomputetest.BootLoader(), 0o644))
	require.NoError(t, afero.WriteFile(fs, "junk", bytes.Repeat([]byte{0x4d}, 100), 0o644))

	res := run(t, fs, "image", "measure", "kernel.efi")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "kernel.efi is not a usable UKI")
	res = run(t, fs, "image", "measure", "junk")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "junk is not a usable UKI")
	res = run(t, fs, "image", "measure", "missing.efi")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "missing.efi")
	_, err := fs.Stat(signed.FileName)
	assert.Error(t, err)
}

func TestImageHelp(t *testing.T) {
	res := run(t, afero.NewMemMapFs(), "--help")
	require.Equal(t, 0, res.code)
	assert.Contains(t, res.stdout, "image")
	for _, args := range [][]string{
		{"image", "keygen", "--help"},
		{"image", "measure", "--help"},
		{"config", "fetch-measurements", "--help"},
	} {
		res := run(t, afero.NewMemMapFs(), args...)
		require.Equal(t, 0, res.code, args)
		assert.Contains(t, res.stdout, "Examples:", args)
	}
	res = run(t, afero.NewMemMapFs(), "__complete", "image", "measure", "uki.efi", "--boot-path", "")
	require.Equal(t, 0, res.code)
	assert.Contains(t, res.stdout, "systemd-boot\n")
}
