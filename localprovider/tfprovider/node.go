package tfprovider

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"golang.org/x/sys/unix"

	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/localprovider/cluster"
	"github.com/constellation-go/constellation/localprovider/daemon"
	"github.com/constellation-go/constellation/localprovider/metadata"
	"github.com/constellation-go/constellation/localprovider/node"
)

type nodeResource struct{}

func newNodeResource() resource.Resource { return &nodeResource{} }

type nodeModel struct {
	ID              types.String `tfsdk:"id"`
	Network         types.String `tfsdk:"network"`
	Name            types.String `tfsdk:"name"`
	Role            types.String `tfsdk:"role"`
	Index           types.Int64  `tfsdk:"index"`
	ImageDir        types.String `tfsdk:"image_dir"`
	StateDiskSizeGB types.Int64  `tfsdk:"state_disk_size_gb"`
	IP              types.String `tfsdk:"ip"`
	PodCIDR         types.String `tfsdk:"pod_cidr"`
}

func (r *nodeResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_local_node"
}

func (r *nodeResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replace := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	replaceInt := []planmodifier.Int64{int64planmodifier.RequiresReplace()}
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "A local node: the image's verified root in namespaces of this machine with its own vTPM, containerd " +
			"and bootstrapper.",
		Attributes: map[string]schema.Attribute{
			"id":      schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"network": schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "The constellation_local_network's id."},
			"name":    schema.StringAttribute{Required: true, PlanModifiers: replace, Description: "Node name and hostname (a DNS label)."},
			"role": schema.StringAttribute{Required: true, PlanModifiers: replace,
				Validators:  []validator.String{oneOf{string(role.ControlPlane), string(role.Worker)}},
				Description: "control-plane or worker."},
			"index": schema.Int64Attribute{Required: true, PlanModifiers: replaceInt,
				Description: "Position on the bridge: the node gets address index+2 of the prefix and pod prefix 10.244.<index>.0/24."},
			// In place: a new image is a reboot into it, the state disk kept (how a node moves to another image
			// during an upgrade, then rejoins).
			"image_dir": schema.StringAttribute{Required: true,
				Description: "Directory of the node image (constellation.efi, root.erofs, root.verity). Changing it " +
					"restarts the node with the new image and keeps its state disk."},
			"state_disk_size_gb": schema.Int64Attribute{Optional: true, PlanModifiers: replaceInt,
				Description: "Size of the (sparse) state disk in GB; default 1."},
			"ip":       schema.StringAttribute{Computed: true, PlanModifiers: keep},
			"pod_cidr": schema.StringAttribute{Computed: true, PlanModifiers: keep},
		},
	}
}

// config is the node's runtime configuration; it reads the network's Spec, which must exist.
func (m *nodeModel) config() (node.Config, metadata.Instance, error) {
	var size int64
	if !m.StateDiskSizeGB.IsNull() {
		size = m.StateDiskSizeGB.ValueInt64() << 30
	}
	return localNodeConfig(m.Network.ValueString(), m.Name.ValueString(), role.Role(m.Role.ValueString()),
		int(m.Index.ValueInt64()), m.ImageDir.ValueString(), size)
}

// localNodeConfig is the runtime configuration of the node at index of a local network, booting imageDir.
func localNodeConfig(clusterName, name string, r role.Role, index int, imageDir string, stateDiskSize int64) (node.Config, metadata.Instance, error) {
	spec, err := daemon.ReadSpec(clusterName)
	if err != nil {
		return node.Config{}, metadata.Instance{}, fmt.Errorf("the local network %s: %w", clusterName, err)
	}
	nw, err := spec.Network()
	if err != nil {
		return node.Config{}, metadata.Instance{}, err
	}
	alloc, err := nw.Allocate(index)
	if err != nil {
		return node.Config{}, metadata.Instance{}, err
	}
	img, err := filepath.Abs(imageDir)
	if err != nil {
		return node.Config{}, metadata.Instance{}, err
	}
	cfg := node.Config{
		Cluster: clusterName, Name: name, Index: index, Network: nw, ImageDir: img,
		MetadataURL: cluster.MetadataURL(nw.BridgeAddr()), StateDiskSize: stateDiskSize,
	}
	in := metadata.Instance{Name: cfg.Name, Role: r, IP: alloc.IP, PodCIDR: alloc.PodCIDR}
	return cfg, in, nil
}

// bootConfig is config for a node about to boot: with the provider's log (done closes it) and the cluster's
// platform CA, which the network resource made (a node never makes its own).
func (m *nodeModel) bootConfig() (node.Config, metadata.Instance, func(), error) {
	cfg, in, err := m.config()
	if err != nil {
		return node.Config{}, metadata.Instance{}, nil, fmt.Errorf("invalid local node: %w", err)
	}
	done, err := forBoot(&cfg)
	return cfg, in, done, err
}

// forBoot completes the configuration of a node about to boot: the provider's log (done closes it) and the
// cluster's platform CA, which the network resource made (a node never makes its own).
func forBoot(cfg *node.Config) (done func(), err error) {
	log, done := logger(cfg.Cluster)
	cfg.Log = log.With("node", cfg.Name)
	if cfg.PlatformCA, err = daemon.PlatformCA(cfg.Cluster, false); err != nil {
		done()
		return nil, fmt.Errorf("the local network %s has no platform CA: %w", cfg.Cluster, err)
	}
	return done, nil
}

func (r *nodeResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m nodeModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	cfg, in, done, err := m.bootConfig()
	if err != nil {
		resp.Diagnostics.AddError("Starting the node", err.Error())
		return
	}
	defer done()
	// Registered first: the bootstrapper asks the metadata API who it is as soon as it starts.
	if err := daemon.AddInstance(cfg.Cluster, in); err != nil {
		resp.Diagnostics.AddError("Registering the node", err.Error())
		return
	}
	if err := daemon.Reload(cfg.Cluster); err != nil {
		resp.Diagnostics.AddError("Registering the node", err.Error())
		return
	}
	unlock, err := lockCluster(cfg.Cluster)
	if err != nil {
		resp.Diagnostics.AddError("Starting the node", err.Error())
		return
	}
	defer unlock()
	// A node that already runs (a state lost between Terraform runs) is adopted, not started twice.
	if !node.Running(node.StateDirFor(cfg.Cluster, cfg.Name)) {
		if _, err := node.Start(ctx, cfg); err != nil {
			// Nothing of a node that did not start may stay behind; its logs go into the error.
			logs := logTails(node.StateDirFor(cfg.Cluster, cfg.Name))
			cleanup := errors.Join(node.Destroy(context.WithoutCancel(ctx), cfg), daemon.RemoveInstance(cfg.Cluster, cfg.Name))
			msg := fmt.Sprintf("%v\n%s", err, logs)
			if cleanup != nil {
				msg += fmt.Sprintf("\nRemoving what the start left behind failed too: %v", cleanup)
			}
			resp.Diagnostics.AddError("Starting the node", msg)
			return
		}
	}
	m.ID = types.StringValue(cfg.Cluster + "/" + cfg.Name)
	m.IP = types.StringValue(in.IP.String())
	m.PodCIDR = types.StringValue(in.PodCIDR.String())
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *nodeResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m nodeModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	// A stopped node (the machine rebooted, or someone stopped it) is gone for Terraform: the next apply
	// starts it again on its existing state disk.
	if !node.Running(node.StateDirFor(m.Network.ValueString(), m.Name.ValueString())) {
		resp.State.RemoveResource(ctx)
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// Update moves the node to another image (image_dir is the only attribute that changes in place): it stops
// the node and boots the new image on the same state disk, as a reboot into an upgraded image would. A
// node that does not come up stays stopped; the next apply starts it again (Read drops it from the state).
func (r *nodeResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, prior nodeModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &prior)...)
	if resp.Diagnostics.HasError() {
		return
	}
	cfg, _, done, err := plan.bootConfig()
	if err != nil {
		resp.Diagnostics.AddError("Restarting the node", err.Error())
		return
	}
	defer done()
	cfg.Log.Info("moving the node to another image", "from", prior.ImageDir.ValueString(), "to", cfg.ImageDir)
	if err := restartNode(ctx, cfg); err != nil {
		resp.Diagnostics.AddError("Restarting the node with "+cfg.ImageDir, err.Error())
		return
	}
	plan.ID, plan.IP, plan.PodCIDR = prior.ID, prior.IP, prior.PodCIDR
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *nodeResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m nodeModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	cfg, _, err := m.config()
	if err != nil {
		resp.Diagnostics.AddError("Invalid local node", err.Error())
		return
	}
	log, done := logger(cfg.Cluster)
	defer done()
	cfg.Log = log.With("node", cfg.Name)
	unlock, err := lockCluster(cfg.Cluster)
	if err != nil {
		resp.Diagnostics.AddError("Destroying the node", err.Error())
		return
	}
	defer unlock()
	if err := node.Destroy(ctx, cfg); err != nil {
		resp.Diagnostics.AddError("Destroying the node", err.Error())
		return
	}
	if err := daemon.RemoveInstance(cfg.Cluster, cfg.Name); err != nil {
		resp.Diagnostics.AddError("Unregistering the node", err.Error())
		return
	}
	if _, running := daemon.Running(cfg.Cluster); running {
		if err := daemon.Reload(cfg.Cluster); err != nil {
			resp.Diagnostics.AddError("Unregistering the node", err.Error())
		}
	}
}

// restartNode stops a node and boots cfg's image on the same state disk, as a reboot into an upgraded image
// would. A node that does not come up stays stopped; the next apply starts it again (Read drops it from the
// state).
func restartNode(ctx context.Context, cfg node.Config) error {
	unlock, err := lockCluster(cfg.Cluster)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := node.Restart(ctx, cfg); err != nil {
		return fmt.Errorf("%w\n%s\nThe node is stopped with its state disk kept; the next apply starts it again",
			err, logTails(node.StateDirFor(cfg.Cluster, cfg.Name)))
	}
	return nil
}

// ModifyPlan refuses, when the plan is made, to restart a node of a cluster that a constellation_cluster
// resource initialized into another image: all nodes would reboot at once, none drained, and the cluster's
// JoinService would not trust the new image yet. The cluster resource moves them (its image_dir).
func (r *nodeResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	plan, prior, ok := plannedUpdate[nodeModel](ctx, req, &resp.Diagnostics)
	if !ok || plan.ImageDir.IsUnknown() || plan.ImageDir.Equal(prior.ImageDir) {
		return
	}
	if owner := clusterClaim(prior.Network.ValueString()); owner != "" {
		resp.Diagnostics.AddAttributeError(path.Root("image_dir"), "The node's image moves with its cluster",
			fmt.Sprintf("the cluster on network %s was initialized by a constellation_cluster resource (%s): it moves "+
				"initialized nodes to another image one at a time, drained, while its JoinService trusts both images. "+
				"Set that resource's image_dir and attestation to the new image, and add lifecycle { ignore_changes = "+
				"[image_dir] } to this resource, so that its image_dir only names the image of nodes it creates.",
				prior.Network.ValueString(), owner))
	}
}

// plannedUpdate reads the plan and the prior state of an update being planned; ok is false for a create or
// a destroy, and when reading them failed (the errors are in diags).
func plannedUpdate[T any](ctx context.Context, req resource.ModifyPlanRequest, diags *diag.Diagnostics) (plan, prior T, ok bool) {
	if req.State.Raw.IsNull() || req.Plan.Raw.IsNull() {
		return plan, prior, false
	}
	diags.Append(req.Plan.Get(ctx, &plan)...)
	diags.Append(req.State.Get(ctx, &prior)...)
	return plan, prior, !diags.HasError()
}

// lockCluster serializes node starts and removals of a cluster across goroutines and processes: Terraform
// creates resources in parallel, and a node's network set-up reads the other nodes' namespaces.
func lockCluster(cluster string) (func(), error) {
	if err := os.MkdirAll(daemon.Dir(cluster), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(daemon.Dir(cluster), ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking cluster %s: %w", cluster, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// logTails returns the last lines of a node's logs, for an error message.
func logTails(stateDir string) string {
	var b strings.Builder
	for _, name := range []string{"init", "swtpm", "containerd", "bootstrapper"} {
		data, err := os.ReadFile(node.LogFile(stateDir, name))
		if err != nil || len(data) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		fmt.Fprintf(&b, "--- %s.log (last lines) ---\n%s\n", name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

// oneOf accepts only the listed strings.
type oneOf []string

func (o oneOf) Description(context.Context) string             { return fmt.Sprintf("one of %v", []string(o)) }
func (o oneOf) MarkdownDescription(ctx context.Context) string { return o.Description(ctx) }
func (o oneOf) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	for _, v := range o {
		if req.ConfigValue.ValueString() == v {
			return
		}
	}
	resp.Diagnostics.AddAttributeError(req.Path, "Invalid value", fmt.Sprintf("%q is not one of %v", req.ConfigValue.ValueString(), []string(o)))
}
