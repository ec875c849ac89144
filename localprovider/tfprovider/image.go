package tfprovider

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/spf13/afero"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
)

// ukiFile is the UKI in a built image directory.
const ukiFile = "constellation.efi"

// The firmware a node boots the UKI with, by the data source's platform names.
var imagePlatforms = map[string]*precompute.Platform{
	// The local provider's launcher starts the UKI directly, as a generic UEFI firmware would.
	"local": &precompute.GenericUEFI,
	// QEMU with OVMF, booting the UKI directly (the qemu provider).
	"qemu": &precompute.OVMF,
}

func newImageDataSource() datasource.DataSource { return &imageDataSource{fs: afero.NewOsFs()} }

// imageDataSource precomputes the measurements of a built node image: the values a node booted from it shows,
// computed from the image alone (no boot), as `constellation image measure` does.
type imageDataSource struct {
	fs afero.Fs
}

type imageModel struct {
	Path         types.String `tfsdk:"path"`
	Platform     types.String `tfsdk:"platform"`
	Reference    types.String `tfsdk:"reference"`
	Variant      types.String `tfsdk:"variant"`
	Measurements types.Map    `tfsdk:"measurements"`
}

func (d *imageDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_image"
}

func (d *imageDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A built node image (a directory with constellation.efi, e.g. out/image): its reference and the measurements " +
			"a node booted from it shows before it joins a cluster (PCR 15 zero), precomputed from the image.",
		Attributes: map[string]schema.Attribute{
			"path": schema.StringAttribute{Required: true, Description: "The image directory."},
			"platform": schema.StringAttribute{Optional: true, Validators: []validator.String{oneOf{"local", "qemu"}},
				Description: "The firmware that boots it: local (the local provider's launcher, the default) or qemu (OVMF)."},
			"reference":    schema.StringAttribute{Computed: true, Description: "sha256:<hex of the UKI>, as measurements files name the image."},
			"variant":      schema.StringAttribute{Computed: true, Description: "The attestation variant of such nodes (qemu-vtpm)."},
			"measurements": measurementsAttribute("Reference values by PCR index, as data.constellation_attestation gives them."),
		},
	}
}

func (d *imageDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var m imageModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	platformName := m.Platform.ValueString()
	if platformName == "" {
		platformName = "local"
	}
	fresh, ref, err := measureImage(d.fs, m.Path.ValueString(), platformName)
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("path"), "Measuring the image", err.Error())
		return
	}
	measured, diags := measurementsValue(fresh)
	resp.Diagnostics.Append(diags...)
	if resp.Diagnostics.HasError() {
		return
	}
	m.Reference, m.Variant, m.Measurements = types.StringValue(ref), types.StringValue(variant.QEMUVTPM.String()), measured
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// measureImage precomputes what a node booted from the image in dir shows before it joins (PCR 15 zero), on
// the platform named platformName, and the image's reference.
func measureImage(fs afero.Fs, dir, platformName string) (measurements.M, string, error) {
	uki := filepath.Join(dir, ukiFile)
	data, err := afero.ReadFile(fs, uki)
	if err != nil {
		return nil, "", fmt.Errorf("reading the image: %w (build an image with 'make image', which links out/image)", err)
	}
	_, fresh, err := precompute.FreshNode(data, precompute.Options{Platform: imagePlatforms[platformName], Path: precompute.BootDirect})
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", uki, err)
	}
	return fresh, precompute.ImageRef(data), nil
}

// measurementsAttribute is the data sources' measurements: reference values by PCR index (measurementType).
func measurementsAttribute(description string) schema.MapNestedAttribute {
	return schema.MapNestedAttribute{Computed: true, Description: description,
		NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
			"expected":  schema.StringAttribute{Computed: true, Description: "Expected SHA-256 PCR value, 64 hex digits."},
			"warn_only": schema.BoolAttribute{Computed: true, Description: "A mismatch is reported, not refused."},
		}},
	}
}

// measurementsValue is m as the data sources' measurements attribute.
func measurementsValue(m measurements.M) (types.Map, diag.Diagnostics) {
	var diags diag.Diagnostics
	values := map[string]attr.Value{}
	for _, idx := range m.Indices() {
		v := m[idx]
		obj, d := types.ObjectValue(measurementType.AttrTypes, map[string]attr.Value{
			"expected": types.StringValue(v.Expected.String()), "warn_only": types.BoolValue(v.WarnOnly),
		})
		diags.Append(d...)
		values[strconv.FormatUint(uint64(idx), 10)] = obj
	}
	out, d := types.MapValue(measurementType, values)
	diags.Append(d...)
	return out, diags
}
