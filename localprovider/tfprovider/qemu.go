package tfprovider

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/localprovider/qemuvtpm"
)

// The qemu provider's trust root: a platform CA per cluster, and per VM a vTPM that CA certified, which
// QEMU reaches through libvirt's external TPM backend (package qemuvtpm).

type platformCAResource struct{}

func newPlatformCAResource() resource.Resource { return &platformCAResource{} }

type platformCAModel struct {
	ID          types.String `tfsdk:"id"`
	Name        types.String `tfsdk:"name"`
	Directory   types.String `tfsdk:"directory"`
	Certificate types.String `tfsdk:"certificate"`
}

func (r *platformCAResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_platform_ca"
}

func (r *platformCAResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "The CA of the platform that makes a cluster's vTPMs: its key (0600) and certificate in a directory " +
			"of this machine. Its certificate is the trust root of the nodes' attestation keys.",
		Attributes: map[string]schema.Attribute{
			"id":   schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"name": schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "The CA's name (its certificate's subject)."},
			"directory": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Description: "Absolute directory of the CA's files (created 0700)."},
			"certificate": schema.StringAttribute{Computed: true, PlanModifiers: keep,
				Description: "PEM certificate of the CA, for the configuration's attestation.platformCA."},
		},
	}
}

func (r *platformCAResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m platformCAModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	dir := m.Directory.ValueString()
	if !filepath.IsAbs(dir) {
		resp.Diagnostics.AddError("Invalid platform CA", fmt.Sprintf("directory %q must be absolute", dir))
		return
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		resp.Diagnostics.AddError("Creating the platform CA", err.Error())
		return
	}
	ca, err := manufacturer.LoadOrCreateCA(dir, m.Name.ValueString())
	if err != nil {
		resp.Diagnostics.AddError("Creating the platform CA", err.Error())
		return
	}
	m.ID = m.Directory
	m.Certificate = types.StringValue(string(ca.CertificatePEM()))
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *platformCAResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m platformCAModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	ca, err := manufacturer.LoadCA(m.Directory.ValueString())
	if errors.Is(err, os.ErrNotExist) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		resp.Diagnostics.AddError("Reading the platform CA", err.Error())
		return
	}
	// As on disk: a CA replaced by hand shows in the plan.
	m.Certificate = types.StringValue(string(ca.CertificatePEM()))
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *platformCAResource) Update(_ context.Context, _ resource.UpdateRequest, resp *resource.UpdateResponse) {
	// Every attribute forces a replacement, as for constellation_local_node.
	resp.Diagnostics.AddError("Unexpected update", "constellation_platform_ca cannot be updated in place")
}

func (r *platformCAResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m platformCAModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	key, cert := manufacturer.Files(m.Directory.ValueString())
	for _, f := range []string{key, cert} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			resp.Diagnostics.AddError("Removing the platform CA", err.Error())
			return
		}
	}
	// The directory too, if nothing else is in it.
	_ = os.Remove(m.Directory.ValueString())
}

type qemuVTPMResource struct{}

func newQEMUVTPMResource() resource.Resource { return &qemuVTPMResource{} }

type qemuVTPMModel struct {
	ID          types.String `tfsdk:"id"`
	Name        types.String `tfsdk:"name"`
	Directory   types.String `tfsdk:"directory"`
	CADirectory types.String `tfsdk:"ca_directory"`
	SocketOwner types.String `tfsdk:"socket_owner"`
	Socket      types.String `tfsdk:"socket"`
}

func (r *qemuVTPMResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_qemu_vtpm"
}

func (r *qemuVTPMResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "A VM's vTPM, certified by the platform CA (EK and AK certificates in NV), run by swtpm with only a " +
			"control socket for the VM's QEMU (libvirt's external TPM backend).",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"name": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Description: "The node's name, which the AK certificate names."},
			"directory": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Description: "Absolute directory of the vTPM's state and log (0700)."},
			"ca_directory": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Description: "The constellation_platform_ca's directory."},
			"socket_owner": schema.StringAttribute{Optional: true, Computed: true, PlanModifiers: replace,
				Default:     stringdefault.StaticString(qemuvtpm.DefaultOwner),
				Description: "The user QEMU runs as, the only one who may connect to the control socket."},
			"socket": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Description: "Absolute path of the control socket, for the domain's <backend type='external'> source; " +
					"missing parents are created 0711 (below /run suits: the swtpm is started again after a reboot)."},
		},
	}
}

func (m *qemuVTPMModel) vtpm() qemuvtpm.VTPM {
	return qemuvtpm.VTPM{Dir: m.Directory.ValueString(), Socket: m.Socket.ValueString()}
}

func (m *qemuVTPMModel) ensure(ctx context.Context) error {
	ca, err := manufacturer.LoadCA(m.CADirectory.ValueString())
	if err != nil {
		return fmt.Errorf("loading the platform CA: %w", err)
	}
	if err := qemuvtpm.Ensure(ctx, m.vtpm(), ca, m.Name.ValueString(), m.SocketOwner.ValueString()); err != nil {
		return err
	}
	m.ID = m.Directory
	return nil
}

func (r *qemuVTPMResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m qemuVTPMModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := m.ensure(ctx); err != nil {
		resp.Diagnostics.AddError("Creating the vTPM", err.Error())
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// Read starts a vTPM whose swtpm is not running (after a reboot of the host), so that its VM can start.
func (r *qemuVTPMResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m qemuVTPMModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	v := m.vtpm()
	if _, err := os.Stat(v.Dir); errors.Is(err, os.ErrNotExist) {
		resp.State.RemoveResource(ctx)
		return
	}
	if !qemuvtpm.Running(v) {
		if err := m.ensure(ctx); err != nil {
			resp.Diagnostics.AddError("Restarting the vTPM", err.Error())
			return
		}
		resp.Diagnostics.AddWarning("Restarted a vTPM", fmt.Sprintf("The vTPM of %s was not running; it runs again (log: %s).",
			m.Name.ValueString(), filepath.Join(v.Dir, "swtpm.log")))
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *qemuVTPMResource) Update(_ context.Context, _ resource.UpdateRequest, resp *resource.UpdateResponse) {
	// Every attribute forces a replacement, as for constellation_local_node.
	resp.Diagnostics.AddError("Unexpected update", "constellation_qemu_vtpm cannot be updated in place")
}

func (r *qemuVTPMResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m qemuVTPMModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if err := qemuvtpm.Remove(ctx, m.vtpm()); err != nil {
		resp.Diagnostics.AddError("Removing the vTPM", err.Error())
	}
}
