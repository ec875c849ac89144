package tfprovider

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

// readAttestation runs the attestation data source's Read with cfg and returns its state and diagnostics.
func readAttestation(t *testing.T, fs afero.Fs, cfg map[string]tftypes.Value) (attestationModel, diag.Diagnostics) {
	t.Helper()
	var m attestationModel
	return m, readDataSource(t, &attestationDataSource{fs: fs}, cfg, &m)
}

// readDataSource runs d's Read with the given configuration (attribute → value; the rest null) and reads its
// state into model.
func readDataSource(t *testing.T, d datasource.DataSource, cfg map[string]tftypes.Value, model any) diag.Diagnostics {
	t.Helper()
	ctx := context.Background()
	var sresp datasource.SchemaResponse
	d.Schema(ctx, datasource.SchemaRequest{}, &sresp)
	typ := sresp.Schema.Type().TerraformType(ctx).(tftypes.Object)
	values := map[string]tftypes.Value{}
	for name, at := range typ.AttributeTypes {
		values[name] = tftypes.NewValue(at, nil)
		if v, ok := cfg[name]; ok {
			values[name] = v
		}
	}
	raw := tftypes.NewValue(typ, values)
	resp := &datasource.ReadResponse{State: tfsdk.State{Schema: sresp.Schema, Raw: tftypes.NewValue(typ, nil)}}
	d.Read(ctx, datasource.ReadRequest{Config: tfsdk.Config{Schema: sresp.Schema, Raw: raw}}, resp)
	if !resp.Diagnostics.HasError() {
		resp.Diagnostics.Append(resp.State.Get(ctx, model)...)
	}
	return resp.Diagnostics
}

// TestAttestationDataSource: the measurements come only from a file the publisher's key signed; another key,
// a changed file, no key, another variant or image are refused with the attribute named; skipping the
// signature is possible only by its named attribute, and warns.
func TestAttestationDataSource(t *testing.T) {
	privPEM, pubPEM, err := cosign.GenerateKeyPair(nil)
	require.NoError(t, err)
	signer, err := cosign.LoadPrivateKey(privPEM, nil)
	require.NoError(t, err)
	_, otherPub, err := cosign.GenerateKeyPair(nil)
	require.NoError(t, err)
	file := &signed.File{Version: signed.Version2, Image: "sha256:" + string(bytes.Repeat([]byte("ab"), 32)), Variant: "qemu-vtpm",
		Issued: time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC), Measurements: measurements.M{
			4:  {Expected: bytes.Repeat([]byte{4}, 32)},
			15: {Expected: make([]byte, 32), WarnOnly: true},
		}}
	data, sig, err := signed.Sign(file, signer)
	require.NoError(t, err)
	fs := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(fs, "/m/measurements.json", data, 0o644))
	require.NoError(t, afero.WriteFile(fs, "/m/measurements.json.sig", sig, 0o644))
	require.NoError(t, afero.WriteFile(fs, "/m/changed.json", bytes.Replace(data, []byte("0404"), []byte("0505"), 1), 0o644))
	require.NoError(t, afero.WriteFile(fs, "/m/changed.json.sig", sig, 0o644))

	str := func(s string) tftypes.Value { return tftypes.NewValue(tftypes.String, s) }
	yes := tftypes.NewValue(tftypes.Bool, true)
	tests := map[string]struct {
		cfg          map[string]tftypes.Value
		wantErr      string
		wantVerified bool
		wantWarning  string
	}{
		"signed by the publisher": {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json"), "public_key": str(string(pubPEM))}, wantVerified: true},
		"the variant and image it claims": {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json"), "public_key": str(string(pubPEM)),
			"variant": str("qemu-vtpm"), "image": str(file.Image)}, wantVerified: true},
		"another key":    {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json"), "public_key": str(string(otherPub))}, wantErr: "only measurements the publisher's key signed"},
		"a changed file": {cfg: map[string]tftypes.Value{"measurements_url": str("/m/changed.json"), "public_key": str(string(pubPEM))}, wantErr: "only measurements the publisher's key signed"},
		"no key":         {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json")}, wantErr: "public key is required"},
		"not a key":      {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json"), "public_key": str("x")}, wantErr: "public key"},
		"another variant": {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json"), "public_key": str(string(pubPEM)),
			"variant": str("aws-sev-snp")}, wantErr: "variant qemu-vtpm, not aws-sev-snp"},
		"another image": {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json"), "public_key": str(string(pubPEM)),
			"image": str("sha256:00")}, wantErr: "not sha256:00"},
		"no signature": {cfg: map[string]tftypes.Value{"measurements_url": str("/m/measurements.json"), "public_key": str(string(pubPEM)),
			"signature_url": str("/m/none.sig")}, wantErr: "reading /m/none.sig"},
		"unsigned, by name": {cfg: map[string]tftypes.Value{"measurements_url": str("/m/changed.json"), "insecure_skip_signature": yes},
			wantWarning: "Measurements not verified"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, diags := readAttestation(t, fs, tc.cfg)
			if tc.wantErr != "" {
				require.True(t, diags.HasError())
				assert.Contains(t, diags.Errors()[0].Detail(), tc.wantErr)
				return
			}
			require.False(t, diags.HasError(), "%v", diags)
			assert.Equal(t, tc.wantVerified, m.Verified.ValueBool())
			if tc.wantWarning != "" {
				require.Len(t, diags.Warnings(), 1)
				assert.Equal(t, tc.wantWarning, diags.Warnings()[0].Summary())
			} else {
				assert.Empty(t, diags.Warnings())
			}
			assert.Equal(t, "qemu-vtpm", m.Variant.ValueString())
			assert.Equal(t, file.Image, m.Image.ValueString())
			assert.Equal(t, "2026-12-04T18:00:00Z", m.Issued.ValueString())
			elems := m.Measurements.Elements()
			require.Len(t, elems, 2)
			assert.Contains(t, elems["15"].String(), `"warn_only":true`)
			if tc.wantVerified {
				assert.Contains(t, elems["4"].String(), `"expected":"`+measurements.Digest(bytes.Repeat([]byte{4}, 32)).String()+`"`)
			}
		})
	}
}

// TestImageDataSource: the image's reference and its precomputed measurements, as `image measure` computes
// them for the platform; PCR 15 zero (a fresh node). A directory without a UKI names the attribute.
func TestImageDataSource(t *testing.T) {
	fs := afero.NewMemMapFs()
	uki := precomputetest.UKI()
	require.NoError(t, afero.WriteFile(fs, "/out/image/constellation.efi", uki, 0o644))
	str := func(s string) tftypes.Value { return tftypes.NewValue(tftypes.String, s) }

	for _, platform := range []string{"", "local", "qemu"} {
		t.Run("platform "+platform, func(t *testing.T) {
			cfg := map[string]tftypes.Value{"path": str("/out/image")}
			p := &precompute.GenericUEFI
			if platform != "" {
				cfg["platform"] = str(platform)
			}
			if platform == "qemu" {
				p = &precompute.OVMF
			}
			var m imageModel
			diags := readDataSource(t, &imageDataSource{fs: fs}, cfg, &m)
			require.False(t, diags.HasError(), "%v", diags)
			assert.Equal(t, precompute.ImageRef(uki), m.Reference.ValueString())
			assert.Equal(t, "qemu-vtpm", m.Variant.ValueString())
			_, want, err := precompute.FreshNode(uki, precompute.Options{Platform: p, Path: precompute.BootDirect})
			require.NoError(t, err)
			elems := m.Measurements.Elements()
			require.Len(t, elems, len(want))
			for idx, v := range want {
				assert.Contains(t, elems[strconv.FormatUint(uint64(idx), 10)].String(), `"expected":"`+v.Expected.String()+`"`, "PCR %d", idx)
			}
			assert.Contains(t, elems["15"].String(), `"expected":"`+strings.Repeat("0", 64)+`"`)
		})
	}
	var m imageModel
	diags := readDataSource(t, &imageDataSource{fs: fs}, map[string]tftypes.Value{"path": str("/nowhere")}, &m)
	require.True(t, diags.HasError())
	assert.Contains(t, diags.Errors()[0].Detail(), "make image")
}
