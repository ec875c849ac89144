package tfprovider

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/constellation-go/constellation/localprovider/cluster"
	"github.com/constellation-go/constellation/localprovider/daemon"
	"github.com/constellation-go/constellation/localprovider/metadata"
	"github.com/constellation-go/constellation/localprovider/network"
	"github.com/constellation-go/constellation/localprovider/node"
)

type networkResource struct{}

func newNetworkResource() resource.Resource { return &networkResource{} }

type networkModel struct {
	ID                types.String `tfsdk:"id"`
	Name              types.String `tfsdk:"name"`
	BridgeCIDR        types.String `tfsdk:"bridge_cidr"`
	KubernetesVersion types.String `tfsdk:"kubernetes_version"`
	ServicesDir       types.String `tfsdk:"services_dir"`
	InitSecret        types.String `tfsdk:"init_secret"`
	BridgeAddress     types.String `tfsdk:"bridge_address"`
	MetadataURL       types.String `tfsdk:"metadata_url"`
	ComponentURL      types.String `tfsdk:"component_url"`
	PlatformCA        types.String `tfsdk:"platform_ca_certificate"`
	LocalKMS          types.Bool   `tfsdk:"local_kms"`
	KMSEndpoint       types.String `tfsdk:"kms_endpoint"`
}

func (r *networkResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_local_network"
}

func (r *networkResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "A local cluster's bridge network, and the daemon serving the metadata API and the Kubernetes " +
			"components on the bridge address (and, with local_kms, a KMS).",
		Attributes: map[string]schema.Attribute{
			"id":   schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"name": schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "Cluster name (a DNS label)."},
			"bridge_cidr": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Description: "Private IPv4 prefix of the bridge; the bridge gets its first address, nodes the following ones."},
			"kubernetes_version": schema.StringAttribute{Required: true, Description: "Pinned Kubernetes version whose components are served."},
			"services_dir": schema.StringAttribute{Required: true,
				Description: "Directory with the services' image archives (joinservice.tar, keyservice.tar, verificationservice.tar, operator.tar)."},
			"init_secret": schema.StringAttribute{Required: true, Sensitive: true,
				Description: "Init secret; the metadata API serves only the SHA-256 of its text."},
			"bridge_address": schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"metadata_url":   schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"component_url":  schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"platform_ca_certificate": schema.StringAttribute{Computed: true, PlanModifiers: keep,
				Description: "PEM certificate of the CA that certifies every node's vTPM (the platform is the vTPMs' " +
					"manufacturer): the trust root of the nodes' attestation keys, for the configuration's attestation.platformCA."},
			// In place: the daemon restarts with or without the KMS; its keys stay either way.
			"local_kms": schema.BoolAttribute{Optional: true, Computed: true, Default: booldefault.StaticBool(false),
				Description: "Run a KMS of the AWS KMS API (local-kms) on the bridge address, port 4599, with a key under " +
					"alias/constellation: for user-managed keys on one machine. Its keys live in the provider's state " +
					"directory of the cluster until the network is destroyed."},
			"kms_endpoint": schema.StringAttribute{Computed: true, PlanModifiers: []planmodifier.String{kmsEndpointPlan{}},
				Description: "The KMS's endpoint, http://<bridge address>:4599, with local_kms; else empty."},
		},
	}
}

func (m *networkModel) spec() (daemon.Spec, error) {
	prefix, err := netip.ParsePrefix(m.BridgeCIDR.ValueString())
	if err != nil {
		return daemon.Spec{}, fmt.Errorf("bridge_cidr: %w", err)
	}
	// The secret is the variable's text, as every module hashes it (Terraform cannot decode hex).
	secret := []byte(m.InitSecret.ValueString())
	if len(secret) < 16 {
		return daemon.Spec{}, errors.New("init_secret: must be at least 16 characters")
	}
	// Whether the directory holds the service images is checked by the daemon when it starts (and its error
	// ends Create or Update): hashing them here too would cost every plan's Read.
	dir, err := filepath.Abs(m.ServicesDir.ValueString())
	if err != nil {
		return daemon.Spec{}, err
	}
	return daemon.Spec{
		Cluster: m.Name.ValueString(), BridgeCIDR: prefix, KubernetesVersion: m.KubernetesVersion.ValueString(),
		ServicesDir: dir, InitSecretHash: metadata.HashInitSecret(secret), LocalKMS: m.LocalKMS.ValueBool(),
	}, nil
}

func (m *networkModel) setComputed(nw *network.Network) {
	bridge := nw.BridgeAddr()
	m.ID = m.Name
	m.BridgeAddress = types.StringValue(bridge.String())
	m.MetadataURL = types.StringValue(cluster.MetadataURL(bridge))
	m.ComponentURL = types.StringValue(cluster.ComponentURL(bridge))
	m.KMSEndpoint = types.StringValue(kmsEndpoint(bridge, m.LocalKMS.ValueBool()))
}

func kmsEndpoint(bridge netip.Addr, on bool) string {
	if !on {
		return ""
	}
	return cluster.KMSURL(bridge)
}

// kmsEndpointPlan plans kms_endpoint from local_kms and the bridge: what depends on it (the configuration's
// KMS URI) is then known at plan time, and turning the KMS on or off shows the endpoint's change.
type kmsEndpointPlan struct{}

func (kmsEndpointPlan) Description(context.Context) string {
	return "kms_endpoint follows local_kms and the bridge's address."
}

func (p kmsEndpointPlan) MarkdownDescription(ctx context.Context) string { return p.Description(ctx) }

func (kmsEndpointPlan) PlanModifyString(ctx context.Context, req planmodifier.StringRequest, resp *planmodifier.StringResponse) {
	if req.Plan.Raw.IsNull() {
		return
	}
	var on types.Bool
	var name, cidr types.String
	for p, v := range map[string]any{"local_kms": &on, "name": &name, "bridge_cidr": &cidr} {
		if d := req.Plan.GetAttribute(ctx, path.Root(p), v); d.HasError() {
			return
		}
	}
	if on.IsUnknown() {
		return
	}
	if !on.ValueBool() {
		resp.PlanValue = types.StringValue("")
		return
	}
	if name.IsUnknown() || cidr.IsUnknown() {
		return
	}
	prefix, err := netip.ParsePrefix(cidr.ValueString())
	if err != nil {
		return
	}
	// Invalid names and prefixes are for apply to report: the value stays unknown.
	if nw, err := network.New(network.Config{Cluster: name.ValueString(), BridgeCIDR: prefix}); err == nil {
		resp.PlanValue = types.StringValue(kmsEndpoint(nw.BridgeAddr(), true))
	}
}

// ensure creates or completes the network and the daemon: Create and Read both use it, so an apply after a
// reboot or a killed daemon brings the provider side back without replacing the nodes.
func ensure(ctx context.Context, spec daemon.Spec, restart bool) (*network.Network, error) {
	nw, err := spec.Network()
	if err != nil {
		return nil, err
	}
	if err := nw.Create(); err != nil {
		return nil, fmt.Errorf("creating the bridge: %w", err)
	}
	if err := daemon.WriteSpec(spec); err != nil {
		return nil, err
	}
	if restart {
		if err := daemon.Stop(ctx, spec.Cluster); err != nil {
			return nil, err
		}
	}
	if err := daemon.Start(ctx, spec.Cluster, ""); err != nil {
		return nil, err
	}
	return nw, nil
}

func (r *networkResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	resp.Diagnostics.Append(apply(ctx, req.Plan, &resp.State, false)...)
}

// apply brings the network and the daemon to the plan; restart restarts a running daemon, whose component
// sets are fixed at its start.
func apply(ctx context.Context, plan tfsdk.Plan, st *tfsdk.State, restart bool) diag.Diagnostics {
	var m networkModel
	diags := plan.Get(ctx, &m)
	if diags.HasError() {
		return diags
	}
	spec, err := m.spec()
	if err != nil {
		diags.AddError("Invalid local network", err.Error())
		return diags
	}
	log, done := logger(spec.Cluster)
	defer done()
	nw, err := ensure(ctx, spec, restart)
	if err != nil {
		diags.AddError("Setting up the local network", err.Error())
		return diags
	}
	ca, err := daemon.PlatformCA(spec.Cluster, true)
	if err != nil {
		diags.AddError("Setting up the local platform CA", err.Error())
		return diags
	}
	log.Info("network ready", "bridge", nw.BridgeName(), "address", nw.BridgeAddr(), "daemonRestarted", restart,
		"localKMS", spec.LocalKMS)
	m.setComputed(nw)
	m.PlatformCA = types.StringValue(string(ca.CertificatePEM()))
	return append(diags, st.Set(ctx, &m)...)
}

func (r *networkResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m networkModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	// State written before local_kms existed: the KMS was off.
	if m.LocalKMS.IsNull() {
		m.LocalKMS = types.BoolValue(false)
	}
	if m.KMSEndpoint.IsNull() {
		m.KMSEndpoint = types.StringValue("")
	}
	if _, err := daemon.ReadSpec(m.Name.ValueString()); errors.Is(err, os.ErrNotExist) {
		resp.State.RemoveResource(ctx)
		return
	}
	spec, err := m.spec()
	if err != nil {
		resp.Diagnostics.AddError("Invalid local network", err.Error())
		return
	}
	if _, running := daemon.Running(spec.Cluster); !running {
		nw, err := ensure(ctx, spec, false)
		if err != nil {
			resp.Diagnostics.AddError("Restarting the local provider daemon", err.Error())
			return
		}
		resp.Diagnostics.AddWarning("Restarted the local provider daemon",
			fmt.Sprintf("The daemon serving cluster %s's metadata API and components was not running; it runs again (log: %s).",
				spec.Cluster, daemon.LogFile(spec.Cluster)))
		m.setComputed(nw)
	}
	// The CA's certificate as it is on disk: if it changed (files replaced by hand), the plan shows it.
	if ca, err := daemon.PlatformCA(spec.Cluster, false); err == nil {
		m.PlatformCA = types.StringValue(string(ca.CertificatePEM()))
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *networkResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	resp.Diagnostics.Append(apply(ctx, req.Plan, &resp.State, true)...)
}

func (r *networkResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m networkModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	name := m.Name.ValueString()
	if err := daemon.Stop(ctx, name); err != nil {
		resp.Diagnostics.AddError("Stopping the local provider daemon", err.Error())
		return
	}
	spec, err := m.spec()
	if err != nil {
		resp.Diagnostics.AddError("Invalid local network", err.Error())
		return
	}
	// Nodes that stopped outside Terraform (a power cut, a crash) are no longer in its state, so their
	// resources were not destroyed: what they left goes with the network.
	if err := removeStoppedNodes(ctx, name); err != nil {
		resp.Diagnostics.AddError("Removing stopped nodes", err.Error())
		return
	}
	nw, err := spec.Network()
	if err == nil {
		err = nw.Destroy()
	}
	if err != nil {
		resp.Diagnostics.AddError("Removing the local network", err.Error())
		return
	}
	if err := daemon.Remove(name); err != nil {
		resp.Diagnostics.AddError("Removing the local provider's files", err.Error())
	}
}

// removeStoppedNodes stops (cleaning up after a crash) and removes every node state directory left in the
// cluster's directory.
func removeStoppedNodes(ctx context.Context, cluster string) error {
	entries, err := os.ReadDir(daemon.Dir(cluster))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(daemon.Dir(cluster), e.Name())
		if !e.IsDir() || !node.IsStateDir(dir) {
			continue
		}
		if err := node.Stop(ctx, dir, 0); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", e.Name(), err))
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}
