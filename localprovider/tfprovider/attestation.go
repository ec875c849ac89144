package tfprovider

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/spf13/afero"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

// fetchTimeout bounds reading a measurements file and its signature.
const fetchTimeout = time.Minute

func newAttestationDataSource() datasource.DataSource {
	return &attestationDataSource{fs: afero.NewOsFs()}
}

// attestationDataSource reads a published measurements file (measurements.json) and verifies its cosign
// signature with the publisher's key: the measurements a cluster's nodes must show. An unsigned or otherwise
// signed file is refused; insecure_skip_signature is the named way around that.
type attestationDataSource struct {
	fs afero.Fs
}

type attestationModel struct {
	MeasurementsURL       types.String `tfsdk:"measurements_url"`
	SignatureURL          types.String `tfsdk:"signature_url"`
	PublicKey             types.String `tfsdk:"public_key"`
	InsecureSkipSignature types.Bool   `tfsdk:"insecure_skip_signature"`
	Variant               types.String `tfsdk:"variant"`
	Image                 types.String `tfsdk:"image"`
	Issued                types.String `tfsdk:"issued"`
	Verified              types.Bool   `tfsdk:"verified"`
	Measurements          types.Map    `tfsdk:"measurements"`
}

// measurementType is one PCR's reference value in the data source's measurements.
var measurementType = types.ObjectType{AttrTypes: map[string]attr.Type{"expected": types.StringType, "warn_only": types.BoolType}}

func (d *attestationDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_attestation"
}

func (d *attestationDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A published measurements file (measurements.json), verified with the publisher's cosign public key: " +
			"the PCR values the cluster's nodes must show.",
		Attributes: map[string]schema.Attribute{
			"measurements_url": schema.StringAttribute{Required: true,
				Description: "The measurements file: an http(s) URL or a path."},
			"signature_url": schema.StringAttribute{Optional: true,
				Description: "Its cosign signature: an http(s) URL or a path; empty means measurements_url + \".sig\"."},
			"public_key": schema.StringAttribute{Optional: true,
				Description: "The publisher's cosign public key (PEM), e.g. file(\"cosign.pub\"). Required unless insecure_skip_signature."},
			"insecure_skip_signature": schema.BoolAttribute{Optional: true,
				Description: "Accept the file without checking any signature. Anyone who can change the file then decides " +
					"what the cluster trusts: only for measurements you computed yourself (constellation image measure)."},
			"variant": schema.StringAttribute{Optional: true, Computed: true,
				Description: "Attestation variant of the measurements. Set, it is checked: measurements for another variant are refused."},
			"image": schema.StringAttribute{Optional: true, Computed: true,
				Description: "The node image the measurements are for (e.g. sha256:<hex of the UKI>). Set, it is checked: " +
					"measurements of another image are refused."},
			"issued":       schema.StringAttribute{Computed: true, Description: "When the publisher issued the file (RFC 3339); empty for v1 files."},
			"verified":     schema.BoolAttribute{Computed: true, Description: "Whether the signature was checked (false only with insecure_skip_signature)."},
			"measurements": measurementsAttribute("Reference values by PCR index."),
		},
	}
}

func (d *attestationDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var m attestationModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	file, err := d.read(ctx, &m)
	if err != nil {
		var attrErr *attributeError
		if errors.As(err, &attrErr) {
			resp.Diagnostics.AddAttributeError(path.Root(attrErr.attribute), "Invalid measurements", attrErr.Error())
		} else {
			resp.Diagnostics.AddError("Reading the measurements", err.Error())
		}
		return
	}
	if !m.Verified.ValueBool() {
		resp.Diagnostics.AddAttributeWarning(path.Root("insecure_skip_signature"), "Measurements not verified",
			fmt.Sprintf("%s was read without checking a signature: whoever can change it decides what the cluster trusts.", m.MeasurementsURL.ValueString()))
	}
	measured, diags := measurementsValue(file.Measurements)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	m.Measurements, m.Variant, m.Image = measured, types.StringValue(file.Variant), types.StringValue(file.Image)
	m.Issued = types.StringValue("")
	if !file.Issued.IsZero() {
		m.Issued = types.StringValue(file.Issued.UTC().Format(time.RFC3339))
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// attributeError is an error about one attribute's value.
type attributeError struct {
	attribute string
	err       error
}

func (e *attributeError) Error() string { return e.err.Error() }
func (e *attributeError) Unwrap() error { return e.err }

func attrErrorf(attribute, format string, args ...any) error {
	return &attributeError{attribute: attribute, err: fmt.Errorf(format, args...)}
}

// read fetches and checks the file; it sets m.Verified.
func (d *attestationDataSource) read(ctx context.Context, m *attestationModel) (*signed.File, error) {
	src := m.MeasurementsURL.ValueString()
	skip := m.InsecureSkipSignature.ValueBool()
	m.Verified = types.BoolValue(!skip)
	var file *signed.File
	if skip {
		data, err := signed.FetchUnsigned(ctx, d.fs, src, fetchTimeout)
		if err != nil {
			return nil, attrErrorf("measurements_url", "%w", err)
		}
		if file, err = signed.Parse(data); err != nil {
			return nil, attrErrorf("measurements_url", "%s: %w", src, err)
		}
	} else {
		if m.PublicKey.ValueString() == "" {
			return nil, attrErrorf("public_key", "the publisher's cosign public key is required to verify %s "+
				"(or set insecure_skip_signature for measurements you computed yourself)", src)
		}
		verifier, err := cosign.ParsePublicKey([]byte(m.PublicKey.ValueString()))
		if err != nil {
			return nil, attrErrorf("public_key", "%w", err)
		}
		data, sig, err := signed.Fetch(ctx, d.fs, src, m.SignatureURL.ValueString(), fetchTimeout)
		if err != nil {
			return nil, attrErrorf("measurements_url", "%w", err)
		}
		if file, err = signed.Verify(data, sig, verifier); err != nil {
			return nil, attrErrorf("measurements_url", "%s: %w: only measurements the publisher's key signed are trusted", src, err)
		}
	}
	if want := m.Variant.ValueString(); want != "" && want != file.Variant {
		return nil, attrErrorf("variant", "%s holds measurements for variant %s, not %s", src, file.Variant, want)
	}
	if want := m.Image.ValueString(); want != "" && want != file.Image {
		return nil, attrErrorf("image", "%s holds measurements for image %s, not %s", src, file.Image, want)
	}
	if err := file.Measurements.Validate(); err != nil {
		return nil, attrErrorf("measurements_url", "%s: %w", src, err)
	}
	return file, nil
}
