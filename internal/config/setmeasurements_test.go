package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/measurements"
)

func testMeasurements() measurements.M {
	return measurements.M{
		4:  {Expected: bytes.Repeat([]byte{0x44}, 32)},
		9:  {Expected: bytes.Repeat([]byte{0x99}, 32)},
		14: {Expected: bytes.Repeat([]byte{0x14}, 32), WarnOnly: true},
	}
}

func TestSetMeasurementsOnGeneratedFile(t *testing.T) {
	for _, provider := range []cloudprovider.Provider{cloudprovider.Local, cloudprovider.QEMU} {
		t.Run(provider.String(), func(t *testing.T) {
			cfg, err := Default(provider)
			require.NoError(t, err)
			data, err := cfg.Marshal()
			require.NoError(t, err)

			out, err := SetMeasurements(data, testMeasurements())
			require.NoError(t, err)

			// Exactly what generating the file with these measurements would have written.
			cfg.Attestation.Measurements = testMeasurements()
			want, err := cfg.Marshal()
			require.NoError(t, err)
			assert.Equal(t, string(want), string(out))

			// And back to none.
			out, err = SetMeasurements(out, nil)
			require.NoError(t, err)
			assert.Equal(t, string(data), string(out))
		})
	}
}

// userEdited is a configuration as a user might leave it: own comments, blank lines, quoting and a
// hand-written measurement with a comment of its own.
const userEditedHead = `# my cluster, do not touch
version: "v1"
name: prod   # the name

kubernetesVersion: v1.33


provider:
  local:
    bridgeCIDR: 10.42.0.0/24 # office LAN is 10.0/16
# attestation follows
attestation:
    variant: qemu-vtpm   # keep in sync with the images
    # my note on the measurements
`

const userEditedOldBlock = `    measurements:
        # from last week's build
        4:
            expected: "0x` + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" + `"
            warnOnly: false
        14:
            expected: "0x` + "1414141414141414141414141414141414141414141414141414141414141414" + `"
            warnOnly: true

        15: {expected: "1515151515151515151515151515151515151515151515151515151515151515", warnOnly: false}
`

const userEditedTail = `    # end of attestation

nodeGroups:
  # the only group
  cp:
    role: control-plane
    stateDiskSizeGB: 10
    initialCount: 1
# trailing comment
`

func TestSetMeasurementsKeepsEverythingElse(t *testing.T) {
	data := []byte(userEditedHead + userEditedOldBlock + userEditedTail)
	_, err := Parse(data)
	require.NoError(t, err)

	out, err := SetMeasurements(data, testMeasurements())
	require.NoError(t, err)
	text := string(out)
	require.True(t, strings.HasPrefix(text, userEditedHead), "everything before the block is unchanged:\n%s", text)
	require.True(t, strings.HasSuffix(text, userEditedTail), "everything after the block is unchanged:\n%s", text)
	block := strings.TrimSuffix(strings.TrimPrefix(text, userEditedHead), userEditedTail)
	assert.Equal(t, `    measurements:
      4:
        # Expected SHA-256 PCR value, 64 hex digits.
        expected: "4444444444444444444444444444444444444444444444444444444444444444"
        # Report a mismatch as a warning instead of failing the attestation.
        warnOnly: false
      9:
        # Expected SHA-256 PCR value, 64 hex digits.
        expected: "9999999999999999999999999999999999999999999999999999999999999999"
        # Report a mismatch as a warning instead of failing the attestation.
        warnOnly: false
      14:
        # Expected SHA-256 PCR value, 64 hex digits.
        expected: "1414141414141414141414141414141414141414141414141414141414141414"
        # Report a mismatch as a warning instead of failing the attestation.
        warnOnly: true
`, block)

	cfg, err := Parse(out)
	require.NoError(t, err)
	assert.True(t, sameMeasurements(testMeasurements(), cfg.Attestation.Measurements))
	assert.Equal(t, "prod", cfg.Name)
}

func TestSetMeasurementsLayouts(t *testing.T) {
	base, err := Default(cloudprovider.Local)
	require.NoError(t, err)
	generated, err := base.Marshal()
	require.NoError(t, err)
	gen := string(generated)
	const emptyLine = "  measurements: {}\n"
	require.Contains(t, gen, emptyLine)

	testCases := map[string]struct {
		data         string
		wantContains []string // kept verbatim
	}{
		"last field without a final newline": {
			data: "version: v1\nname: constell\nkubernetesVersion: v1.33.13\nprovider:\n  local:\n    bridgeCIDR: 10.42.0.0/24\n" +
				"nodeGroups:\n  cp:\n    role: control-plane\n    stateDiskSizeGB: 10\n    initialCount: 1\n" +
				"attestation:\n  variant: qemu-vtpm\n  measurements: {}",
			wantContains: []string{"nodeGroups:\n  cp:\n"},
		},
		"CRLF line endings": {
			data:         strings.ReplaceAll(gen, "\n", "\r\n"),
			wantContains: []string{"# Constellation cluster configuration, schema v1.\r\n", "\r\n  measurements:\r\n    4:\r\n"},
		},
		"measurements before variant": {
			data:         strings.Replace(strings.Replace(gen, emptyLine, "", 1), "  variant: qemu-vtpm\n", emptyLine+"  variant: qemu-vtpm\n", 1),
			wantContains: []string{"  variant: qemu-vtpm\n"},
		},
		"no measurements field (re-encoded)": {
			data:         strings.Replace(gen, emptyLine, "", 1),
			wantContains: []string{"# Private IPv4 prefix of the bridge", "  # Expected PCR values by PCR index."},
		},
		"flow-style attestation (re-encoded)": {
			data:         gen[:strings.Index(gen, "attestation:\n")] + "attestation: {variant: qemu-vtpm, measurements: {}} # inline\n" + gen[strings.Index(gen, emptyLine)+len(emptyLine):],
			wantContains: []string{"# Private IPv4 prefix of the bridge", "# inline"},
		},
		"flow mapping closed at the key's indentation (re-encoded)": {
			data:         strings.Replace(gen, emptyLine, "  measurements: {\n    4: {expected: \""+strings.Repeat("0", 64)+"\", warnOnly: false}\n  }\n", 1),
			wantContains: []string{"# Private IPv4 prefix of the bridge"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			data := []byte(tc.data)
			_, err := Parse(data)
			require.NoError(t, err, "test input must be valid:\n%s", data)

			out, err := SetMeasurements(data, testMeasurements())
			require.NoError(t, err)
			cfg, err := Parse(out)
			require.NoError(t, err, "%s", out)
			assert.True(t, sameMeasurements(testMeasurements(), cfg.Attestation.Measurements))
			for _, want := range tc.wantContains {
				assert.Contains(t, string(out), want)
			}

			// The in-place update is used unless the layout needs re-encoding.
			spliced, err := spliceMeasurements(data, testMeasurements())
			if err == nil {
				err = sameConfig(spliced, cfg)
			}
			if strings.HasSuffix(name, "(re-encoded)") {
				assert.Error(t, err)
			} else {
				assert.NoError(t, err)
				assert.Equal(t, string(spliced), string(out))
			}
		})
	}
}

func TestSetMeasurementsRejects(t *testing.T) {
	cfg, err := Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)

	_, err = SetMeasurements(data, measurements.M{30: {Expected: make([]byte, 32)}})
	assert.ErrorIs(t, err, ErrInvalid)
	assert.ErrorContains(t, err, "PCR 30")

	_, err = SetMeasurements(data, measurements.M{4: {Expected: make([]byte, 3)}})
	assert.ErrorIs(t, err, ErrInvalid)

	_, err = SetMeasurements(bytes.Replace(data, []byte("name: constell"), []byte("name: Bad_Name"), 1), testMeasurements())
	assert.ErrorIs(t, err, ErrInvalid, "an invalid configuration is not edited")
}

func TestSetPlatformCA(t *testing.T) {
	const ca = "-----BEGIN CERTIFICATE-----\nMIIBfzCCASWgAwIBAgIQFbVQ5q0CNWZ0k6nNE6d1kDAKBggqhkjOPQQDAjAYMRYwFAYDVQQDEw1w\nbGF0Zm9ybSBDQSAwHhcNMjYwMTAxMDAwMDAwWhcNNDYwMTAxMDAwMDAwWjAYMRYwFAYDVQQDEw1w\n-----END CERTIFICATE-----\n"
	cfg, err := Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	data = append([]byte("# my own note\n"), data...)

	_, err = SetPlatformCA(data, ca)
	require.Error(t, err, "a PEM block that is no certificate is refused")
	assert.ErrorContains(t, err, "attestation.platformCA")

	real := testCA(t)
	out, err := SetPlatformCA(data, real)
	require.NoError(t, err)
	got, err := Parse(out)
	require.NoError(t, err)
	assert.Equal(t, real, got.Attestation.PlatformCA)
	assert.Contains(t, string(out), "# my own note")
	assert.Contains(t, string(out), "platformCA: |")

	// Replacing keeps one field.
	again, err := SetPlatformCA(out, real)
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(again), "platformCA:"))
}

// testCA returns a self-signed CA certificate in PEM.
func testCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test platform CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestSetKubernetesVersionAndImage(t *testing.T) {
	cfg, err := Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	data = append([]byte("# my own note\n"), data...)

	tests := map[string]struct {
		set     func([]byte) ([]byte, error)
		check   func(t *testing.T, c *Config)
		wantErr string
	}{
		"kubernetes version": {
			set:   func(d []byte) ([]byte, error) { return SetKubernetesVersion(d, "v1.34.10") },
			check: func(t *testing.T, c *Config) { assert.Equal(t, "v1.34.10", c.KubernetesVersion) },
		},
		"unsupported kubernetes version": {
			set:     func(d []byte) ([]byte, error) { return SetKubernetesVersion(d, "v1.20.0") },
			wantErr: "kubernetesVersion",
		},
		"image": {
			set:   func(d []byte) ([]byte, error) { return SetImage(d, "/srv/images/b") },
			check: func(t *testing.T, c *Config) { assert.Equal(t, "/srv/images/b", c.Image) },
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, err := tc.set(data)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			got, err := Parse(out)
			require.NoError(t, err)
			tc.check(t, got)
			assert.Contains(t, string(out), "# my own note", "comments are kept")
			assert.Equal(t, cfg.Attestation, got.Attestation, "nothing else changed")
			assert.Equal(t, cfg.NodeGroups, got.NodeGroups)
		})
	}
}
