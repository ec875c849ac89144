package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/kmsuri"
)

// fillCloud sets the account-specific fields a user must fill in for a cloud provider.
func fillCloud(c *Config) {
	c.Image = "image-0123"
	switch {
	case c.Provider.AWS != nil:
		c.Provider.AWS.Region = "eu-west-1"
		c.Provider.AWS.IAMProfileControlPlane = "cp"
		c.Provider.AWS.IAMProfileWorkerNodes = "worker"
	case c.Provider.GCP != nil:
		c.Provider.GCP.Project = "p"
		c.Provider.GCP.Region = "europe-west3"
	case c.Provider.Azure != nil:
		c.Provider.Azure.SubscriptionID = "00000000-0000-0000-0000-000000000001"
		c.Provider.Azure.TenantID = "00000000-0000-0000-0000-000000000002"
		c.Provider.Azure.Location = "westeurope"
		c.Provider.Azure.ResourceGroup = "rg"
		c.Provider.Azure.UserAssignedIdentity = "/subscriptions/x/identity"
	}
	if c.Attestation.SEVSNP != nil {
		c.Attestation.SEVSNP.LaunchMeasurements = []string{strings.Repeat("5a", 48)}
	}
	for name, g := range c.NodeGroups {
		g.Zone = "zone-a"
		c.NodeGroups[name] = g
	}
}

// onAWSSNP makes m an aws-sev-snp configuration with sevSNP as its attestation.sevSNP section.
func onAWSSNP(m map[string]any, sevSNP map[string]any) {
	sub(m, "provider")["aws"] = map[string]any{"region": "r", "iamProfileControlPlane": "a", "iamProfileWorkerNodes": "b"}
	delete(sub(m, "provider"), "local")
	sub(m, "attestation")["variant"] = "aws-sev-snp"
	sub(m, "attestation")["sevSNP"] = sevSNP
}

func TestDefaultRoundTrip(t *testing.T) {
	testCases := map[cloudprovider.Provider]struct {
		wantMissing []string // fields a user must fill in
	}{
		cloudprovider.Local: {},
		cloudprovider.QEMU:  {},
		cloudprovider.AWS: {wantMissing: []string{
			"image", "provider.aws.region", "provider.aws.iamProfileControlPlane", "provider.aws.iamProfileWorkerNodes",
			"nodeGroups.control_plane_default.zone", "nodeGroups.worker_default.zone",
			"attestation.sevSNP.launchMeasurements",
		}},
		cloudprovider.GCP: {wantMissing: []string{
			"image", "provider.gcp.project", "provider.gcp.region",
			"nodeGroups.control_plane_default.zone", "nodeGroups.worker_default.zone",
			"attestation.sevSNP.launchMeasurements",
		}},
		cloudprovider.Azure: {wantMissing: []string{
			"image", "provider.azure.subscription", "provider.azure.tenant", "provider.azure.location",
			"provider.azure.resourceGroup", "provider.azure.userAssignedIdentity",
			"nodeGroups.control_plane_default.zone", "nodeGroups.worker_default.zone",
			"attestation.sevSNP.launchMeasurements",
		}},
	}
	for provider, tc := range testCases {
		t.Run(provider.String(), func(t *testing.T) {
			cfg, err := Default(provider)
			require.NoError(t, err)
			assert.Equal(t, provider, cfg.GetProvider())
			data, err := cfg.Marshal()
			require.NoError(t, err)

			parsed, err := Parse(data)
			if len(tc.wantMissing) == 0 {
				require.NoError(t, err)
				assert.Equal(t, cfg, parsed)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			assert.ElementsMatch(t, tc.wantMissing, fieldsOf(err))
			for _, fe := range fieldErrors(err) {
				assert.ErrorContains(t, fe, "must be set")
				assert.NotZero(t, fe.Line, "field %s should point at a line", fe.Field)
			}

			fillCloud(cfg)
			data, err = cfg.Marshal()
			require.NoError(t, err)
			parsed, err = Parse(data)
			require.NoError(t, err)
			assert.Equal(t, cfg, parsed)
		})
	}
}

func TestMarshalIsCommented(t *testing.T) {
	cfg, err := Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	text := string(data)
	assert.Contains(t, text, "# Schema version of this file.")
	assert.Contains(t, text, "  # Private IPv4 prefix of the bridge")
	assert.Contains(t, text, "fetch-measurements")
	for _, line := range strings.Split(text, "\n") {
		assert.LessOrEqual(t, len(line), commentWidth+8, "line too long: %q", line)
	}
}

// mutate returns the default local configuration as YAML after edit changed its generic form.
func mutate(t *testing.T, edit func(m map[string]any)) []byte {
	t.Helper()
	cfg, err := Default(cloudprovider.Local)
	require.NoError(t, err)
	data, err := yaml.Marshal(cfg)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, yaml.Unmarshal(data, &m))
	edit(m)
	out, err := yaml.Marshal(m)
	require.NoError(t, err)
	return out
}

func sub(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		m = m[k].(map[string]any)
	}
	return m
}

func TestParseRejects(t *testing.T) {
	testCases := map[string]struct {
		data      []byte
		wantField string
		wantMsg   string
	}{
		"typo in a top-level field": {
			data:      mutate(t, func(m map[string]any) { m["nmae"] = m["name"]; delete(m, "name") }),
			wantField: "nmae", wantMsg: `unknown field; did you mean "name"?`,
		},
		"typo in a nested field": {
			data: mutate(t, func(m map[string]any) {
				g := sub(m, "nodeGroups", "worker_default")
				g["intialCount"] = 2
			}),
			wantField: "nodeGroups.worker_default.intialCount", wantMsg: `did you mean "initialCount"?`,
		},
		"unknown provider": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "provider")["openstack"] = map[string]any{"region": "x"}
				delete(sub(m, "provider"), "local")
			}),
			wantField: "provider.openstack", wantMsg: "known fields here: aws, azure, gcp, local, qemu",
		},
		"no provider": {
			data:      mutate(t, func(m map[string]any) { m["provider"] = map[string]any{} }),
			wantField: "provider", wantMsg: "set exactly one of local, qemu, aws, gcp, azure",
		},
		"two providers": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "provider")["qemu"] = map[string]any{"libvirtURI": "qemu:///system", "firmware": "f", "accelerator": "tcg", "vcpus": 2, "memoryMiB": 2048}
			}),
			wantField: "provider", wantMsg: "set exactly one of",
		},
		"wrong type": {
			data:      mutate(t, func(m map[string]any) { sub(m, "nodeGroups", "worker_default")["initialCount"] = "three" }),
			wantField: "nodeGroups.worker_default.initialCount", wantMsg: "cannot unmarshal",
		},
		"unsupported schema version": {
			data:      mutate(t, func(m map[string]any) { m["version"] = "v2" }),
			wantField: "version", wantMsg: `unsupported schema version "v2"`,
		},
		"bad cluster name": {
			data:      mutate(t, func(m map[string]any) { m["name"] = "My_Cluster" }),
			wantField: "name", wantMsg: "lower-case letters",
		},
		"long cluster name": {
			data:      mutate(t, func(m map[string]any) { m["name"] = strings.Repeat("a", 21) }),
			wantField: "name", wantMsg: "at most 20",
		},
		"unsupported kubernetes": {
			data:      mutate(t, func(m map[string]any) { m["kubernetesVersion"] = "v1.20.0" }),
			wantField: "kubernetesVersion", wantMsg: "not supported by this release",
		},
		"unknown variant": {
			data:      mutate(t, func(m map[string]any) { sub(m, "attestation")["variant"] = "tdx" }),
			wantField: "attestation.variant", wantMsg: `unknown attestation variant "tdx"`,
		},
		"variant of another provider": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "attestation")["variant"] = "aws-sev-snp"
				sub(m, "attestation")["sevSNP"] = map[string]any{"product": "Milan", "launchMeasurements": []string{strings.Repeat("ab", 48)}, "bootloaderVersion": 1, "teeVersion": 1, "snpVersion": 1, "microcodeVersion": 1}
			}),
			wantField: "attestation.variant", wantMsg: "local nodes cannot produce aws-sev-snp attestations; use qemu-vtpm",
		},
		"unknown sev-snp product": {
			data: mutate(t, func(m map[string]any) {
				onAWSSNP(m, map[string]any{"product": "Naples", "bootloaderVersion": 1, "teeVersion": 1, "snpVersion": 1, "microcodeVersion": 1})
			}),
			wantField: "attestation.sevSNP.product", wantMsg: `"Naples" is not one of Milan, Genoa, Turin`,
		},
		"sev-snp without launch measurements": {
			data: mutate(t, func(m map[string]any) {
				onAWSSNP(m, map[string]any{"product": "Milan", "bootloaderVersion": 3, "teeVersion": 0, "snpVersion": 8, "microcodeVersion": 115})
			}),
			wantField: "attestation.sevSNP.launchMeasurements", wantMsg: "must be set: the launch digests",
		},
		"sev-snp launch measurement of the wrong size": {
			data: mutate(t, func(m map[string]any) {
				onAWSSNP(m, map[string]any{"product": "Milan", "launchMeasurements": []string{strings.Repeat("ab", 32)}})
			}),
			wantField: "attestation.sevSNP.launchMeasurements.0", wantMsg: "must be 48 bytes (96 hex digits), got 32",
		},
		"sev-snp on Genoa without a minimum TCB": {
			data: mutate(t, func(m map[string]any) {
				onAWSSNP(m, map[string]any{"product": "Genoa", "launchMeasurements": []string{strings.Repeat("ab", 48)}})
			}),
			wantField: "attestation.sevSNP", wantMsg: "no default minimum firmware versions for Genoa",
		},
		"sev-snp section on qemu-vtpm": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "attestation")["sevSNP"] = map[string]any{"bootloaderVersion": 1, "teeVersion": 1, "snpVersion": 1, "microcodeVersion": 1}
			}),
			wantField: "attestation.sevSNP", wantMsg: "only applies to SEV-SNP variants",
		},
		"bad measurement value": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "attestation")["measurements"] = map[int]any{4: map[string]any{"expected": "abcd", "warnOnly": false}}
			}),
			wantField: "attestation.measurements.4.expected", wantMsg: "must be 32 bytes",
		},
		"measurement index out of range": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "attestation")["measurements"] = map[int]any{24: map[string]any{"expected": strings.Repeat("ab", 32), "warnOnly": false}}
			}),
			wantField: "attestation.measurements", wantMsg: "PCR 24: index out of range",
		},
		"warn-only enforced PCR": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "attestation")["measurements"] = map[int]any{9: map[string]any{"expected": strings.Repeat("ab", 32), "warnOnly": true}}
			}),
			wantField: "attestation.measurements.9.warnOnly", wantMsg: "PCR 9 is always enforced",
		},
		"platform CA that is not a certificate": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "attestation")["platformCA"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
			}),
			wantField: "attestation.platformCA", wantMsg: "not a PEM certificate",
		},
		"platform CA on an SEV-SNP variant": {
			data: mutate(t, func(m map[string]any) {
				onAWSSNP(m, map[string]any{"product": "Milan", "launchMeasurements": []string{strings.Repeat("ab", 48)}, "bootloaderVersion": 1, "teeVersion": 1, "snpVersion": 1, "microcodeVersion": 1})
				sub(m, "attestation")["platformCA"] = "x"
			}),
			wantField: "attestation.platformCA", wantMsg: "only applies to qemu-vtpm",
		},
		"bridge not private": {
			data:      mutate(t, func(m map[string]any) { sub(m, "provider", "local")["bridgeCIDR"] = "8.8.8.0/24" }),
			wantField: "provider.local.bridgeCIDR", wantMsg: "must be a private IPv4 prefix",
		},
		"bridge host bits": {
			data:      mutate(t, func(m map[string]any) { sub(m, "provider", "local")["bridgeCIDR"] = "10.42.0.1/24" }),
			wantField: "provider.local.bridgeCIDR", wantMsg: "did you mean 10.42.0.0/24?",
		},
		"bridge not a prefix": {
			data:      mutate(t, func(m map[string]any) { sub(m, "provider", "local")["bridgeCIDR"] = "bridge0" }),
			wantField: "provider.local.bridgeCIDR", wantMsg: "is not an IPv4 prefix",
		},
		"no control plane": {
			data:      mutate(t, func(m map[string]any) { sub(m, "nodeGroups", "control_plane_default")["initialCount"] = 0 }),
			wantField: "nodeGroups", wantMsg: "needs at least one node with role control-plane",
		},
		"no node groups": {
			data:      mutate(t, func(m map[string]any) { m["nodeGroups"] = map[string]any{} }),
			wantField: "nodeGroups", wantMsg: "at least one node group",
		},
		"bad role": {
			data:      mutate(t, func(m map[string]any) { sub(m, "nodeGroups", "worker_default")["role"] = "master" }),
			wantField: "nodeGroups.worker_default.role", wantMsg: `"master" is not control-plane or worker`,
		},
		"negative count": {
			data:      mutate(t, func(m map[string]any) { sub(m, "nodeGroups", "worker_default")["initialCount"] = -1 }),
			wantField: "nodeGroups.worker_default.initialCount", wantMsg: "must not be negative",
		},
		"disk too small": {
			data:      mutate(t, func(m map[string]any) { sub(m, "nodeGroups", "worker_default")["stateDiskSizeGB"] = 1 }),
			wantField: "nodeGroups.worker_default.stateDiskSizeGB", wantMsg: "must be between 10 and 16384",
		},
		"zone on local": {
			data:      mutate(t, func(m map[string]any) { sub(m, "nodeGroups", "worker_default")["zone"] = "a" }),
			wantField: "nodeGroups.worker_default.zone", wantMsg: "only applies to cloud providers",
		},
		"bad group name": {
			data: mutate(t, func(m map[string]any) {
				sub(m, "nodeGroups")["Workers!"] = sub(m, "nodeGroups", "worker_default")
			}),
			wantField: "nodeGroups.Workers!", wantMsg: "must be 1 to 30 lower-case letters",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(tc.data)
			require.ErrorIs(t, err, ErrInvalid)
			var found *FieldError
			for _, fe := range fieldErrors(err) {
				if fe.Field == tc.wantField {
					found = fe
				}
			}
			require.NotNil(t, found, "no error for field %q in:\n%v", tc.wantField, err)
			assert.Contains(t, found.Error(), tc.wantMsg)
			assert.Contains(t, err.Error(), `field "`+tc.wantField+`"`)
		})
	}
}

func TestParseReportsAllProblemsAtOnce(t *testing.T) {
	data := mutate(t, func(m map[string]any) {
		m["name"] = "BAD"
		m["version"] = "v0"
		sub(m, "nodeGroups", "worker_default")["initialCount"] = -3
	})
	_, err := Parse(data)
	require.Error(t, err)
	assert.ElementsMatch(t, []string{"name", "version", "nodeGroups.worker_default.initialCount"}, fieldsOf(err))
	for _, fe := range fieldErrors(err) {
		assert.NotZero(t, fe.Line)
	}
}

func TestParseRejectsNonMappings(t *testing.T) {
	for name, data := range map[string]string{
		"not yaml": "version: [v1",
		"a list":   "- a\n- b\n",
		"empty":    "",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(data))
			assert.ErrorIs(t, err, ErrInvalid)
		})
	}
}

func TestLoad(t *testing.T) {
	fh := file.NewHandler(afero.NewMemMapFs())
	_, err := Load(fh, FileName)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "constellation config generate")

	cfg, err := Default(cloudprovider.QEMU)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	require.NoError(t, fh.Write(FileName, data))
	got, err := Load(fh, FileName)
	require.NoError(t, err)
	assert.Equal(t, cfg, got)

	require.NoError(t, fh.Write(FileName, bytes.Replace(data, []byte("vcpus: 2"), []byte("vcpu: 2"), 1), file.OptOverwrite))
	_, err = Load(fh, FileName)
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), `field "provider.qemu.vcpu"`)
}

// The schema must accept what the CLI generates and reject what Parse rejects for shape reasons.
func TestSchemaAgreesWithParse(t *testing.T) {
	raw, err := Schema()
	require.NoError(t, err)
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	require.NoError(t, err)
	c := jsonschema.NewCompiler()
	require.NoError(t, c.AddResource("schema.json", doc))
	schema, err := c.Compile("schema.json")
	require.NoError(t, err)

	toInstance := func(data []byte) any {
		var generic any
		require.NoError(t, yaml.Unmarshal(data, &generic))
		// JSON Schema sees JSON: map keys become strings.
		js, err := json.Marshal(stringKeys(generic))
		require.NoError(t, err)
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
		require.NoError(t, err)
		return inst
	}
	for _, p := range cloudprovider.All() {
		cfg, err := Default(p)
		require.NoError(t, err)
		fillCloud(cfg)
		cfg.Attestation.Measurements = nil
		data, err := cfg.Marshal()
		require.NoError(t, err)
		assert.NoError(t, schema.Validate(toInstance(data)), "provider %s", p)
	}
	for name, data := range map[string][]byte{
		"unknown field": mutate(t, func(m map[string]any) { m["nmae"] = "x" }),
		"bad version":   mutate(t, func(m map[string]any) { m["version"] = "v2" }),
		"bad role":      mutate(t, func(m map[string]any) { sub(m, "nodeGroups", "worker_default")["role"] = "master" }),
		"bad pcr key": mutate(t, func(m map[string]any) {
			sub(m, "attestation")["measurements"] = map[string]any{"24": map[string]any{"expected": strings.Repeat("ab", 32), "warnOnly": false}}
		}),
	} {
		assert.Error(t, schema.Validate(toInstance(data)), name)
	}
}

func stringKeys(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = stringKeys(e)
		}
		return x
	case map[any]any:
		out := map[string]any{}
		for k, e := range x {
			b, _ := json.Marshal(k)
			out[strings.Trim(string(b), `"`)] = stringKeys(e)
		}
		return out
	case []any:
		for i, e := range x {
			x[i] = stringKeys(e)
		}
	}
	return v
}

func fieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		var fe *FieldError
		if errors.As(e, &fe) && e == error(fe) {
			out = append(out, fe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				walk(inner)
			}
			return
		}
		if inner := errors.Unwrap(e); inner != nil {
			walk(inner)
		}
	}
	walk(err)
	return out
}

func fieldsOf(err error) []string {
	var fields []string
	for _, fe := range fieldErrors(err) {
		fields = append(fields, fe.Field)
	}
	return fields
}

func TestKMS(t *testing.T) {
	cfg, err := Default(cloudprovider.Local)
	require.NoError(t, err)
	assert.Equal(t, "constellation-managed", cfg.KMS.Mode())
	assert.Equal(t, kmsuri.Default, cfg.KMS.URI())

	// config generate --kms aws-kms: the section to fill in, each missing field named with its line.
	cfg.KMS.AWSKMS = &AWSKMSConfig{Endpoint: "ftp://kms.example"}
	data, err := cfg.Marshal()
	require.NoError(t, err)
	assert.Contains(t, string(data), "Credentials are never in this file", "the section is commented")
	_, err = Parse(data)
	require.ErrorIs(t, err, ErrInvalid)
	assert.ElementsMatch(t, []string{"kms.awsKMS.region", "kms.awsKMS.keyID", "kms.awsKMS.endpoint"}, fieldsOf(err))
	for _, fe := range fieldErrors(err) {
		assert.NotZero(t, fe.Line, "field %s should point at a line", fe.Field)
	}

	cfg.KMS.AWSKMS = &AWSKMSConfig{Region: "eu-west-1", KeyID: "alias/constellation", Endpoint: "http://10.42.0.1:4599"}
	data, err = cfg.Marshal()
	require.NoError(t, err)
	parsed, err := Parse(data)
	require.NoError(t, err)
	assert.Equal(t, "user-managed", parsed.KMS.Mode())
	assert.Equal(t, "user-managed: AWS KMS key alias/constellation (region eu-west-1 at http://10.42.0.1:4599)", parsed.KMS.String())
	u, err := kmsuri.Parse(parsed.KMS.URI())
	require.NoError(t, err)
	assert.Equal(t, kmsuri.AWSKMS, u.Host)
	assert.Equal(t, "alias/constellation", u.Query().Get(kmsuri.AWSKeyID))
	assert.Equal(t, "eu-west-1", u.Query().Get(kmsuri.AWSRegion))
	assert.Equal(t, "http://10.42.0.1:4599", u.Query().Get(kmsuri.AWSEndpoint))
}
