package tfprovider

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
	"github.com/spf13/afero"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/choose"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/clusterclient"
	"github.com/constellation-go/constellation/internal/constellation/clusterupgrade"
	"github.com/constellation-go/constellation/internal/constellation/imagerollout"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/state"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/localprovider/node"
)

const (
	// clusterSecretsDir holds, per cluster name, the pending secret below; under the local provider's state
	// root, with a name that no cluster's directory there can have (it is not a DNS label).
	clusterSecretsDir = "_clusters"
	// pendingSecretFile keeps a generated master secret between the start of an init and the state that
	// Terraform saves after it: an init interrupted in between is resumed with the same secret.
	pendingSecretFile = "master-secret.json"
)

// clusterResource initializes a cluster on nodes that the infrastructure resources made, through the same
// library as `constellation apply` (clusterclient): the first control plane is attested before it gets the
// master secret; Read verifies every node again, so a node that no longer shows the measurements is an error
// in the plan.
type clusterResource struct {
	initer   clusterclient.Initer
	attester clusterclient.Attester
	booting  clusterclient.Booting
	// fs holds the pending master secrets under stateRoot and the workspaces that are imported.
	fs        afero.Fs
	stateRoot string
	// logger gives the log of a cluster's init (the local provider's provider.log).
	logger func(cluster string) (*slog.Logger, func())
	// validator makes the validator of an attestation section for reference values (choose.ForConfig).
	validator func(att config.AttestationConfig, refs measurements.M) (attestation.Validator, error)
	// kube and upgrades are clients of the cluster of an admin kubeconfig; follow times an upgrade.
	kube     func(kubeconfig []byte) (kubernetes.Interface, error)
	upgrades func(kubeconfig []byte) (client.Client, error)
	follow   clusterupgrade.Options
	// built tells whether this machine built the components of a Kubernetes version (versions.Built).
	built func(version string) bool
	// infra finds the infrastructure of the nodes (findLocalNodes); an image roll-out moves them through it.
	infra func(targets []clusterclient.Target) (clusterInfra, error)
	// recoverer and reachable unlock a control plane that rebooted into a new image.
	recoverer clusterclient.Recoverer
	reachable func(ctx context.Context, addr string) bool
	// measure precomputes what a node of an image directory shows before it joins, and the image's reference.
	measure func(dir string) (measurements.M, string, error)
	rollout imagerollout.Options
}

func newClusterResource() resource.Resource {
	return &clusterResource{
		initer: clusterclient.GRPC{}, attester: clusterclient.GRPC{}, booting: clusterclient.DefaultBooting,
		fs: afero.NewOsFs(), stateRoot: filepath.Join(node.DefaultStateRoot, clusterSecretsDir),
		logger: logger,
		validator: func(att config.AttestationConfig, refs measurements.M) (attestation.Validator, error) {
			return choose.ForConfig(att, refs, slog.New(slog.DiscardHandler))
		},
		kube: clusterupgrade.NewKubeClient, upgrades: clusterupgrade.NewUpgradeClient, follow: clusterupgrade.DefaultOptions,
		built: versions.Built,
		infra: findLocalNodes, recoverer: clusterclient.GRPC{}, reachable: clusterclient.DialReachable,
		measure: func(dir string) (measurements.M, string, error) { return measureImage(afero.NewOsFs(), dir, "local") },
		rollout: imagerollout.DefaultOptions,
	}
}

type clusterModel struct {
	ID                types.String `tfsdk:"id"`
	Name              types.String `tfsdk:"name"`
	Endpoint          types.String `tfsdk:"endpoint"`
	APIServerCertSANs types.List   `tfsdk:"api_server_cert_sans"`
	InitSecret        types.String `tfsdk:"init_secret"`
	KubernetesVersion types.String `tfsdk:"kubernetes_version"`
	ComponentURL      types.String `tfsdk:"component_url"`
	ServicesDir       types.String `tfsdk:"services_dir"`
	Attestation       types.Object `tfsdk:"attestation"`
	Nodes             types.List   `tfsdk:"nodes"`
	ImageDir          types.String `tfsdk:"image_dir"`
	MasterSecret      types.String `tfsdk:"master_secret"`
	MasterSecretSalt  types.String `tfsdk:"master_secret_salt"`
	Kubeconfig        types.String `tfsdk:"kubeconfig"`
	ClusterID         types.String `tfsdk:"cluster_id"`
	OwnerID           types.String `tfsdk:"owner_id"`
}

type clusterAttestation struct {
	Variant      types.String `tfsdk:"variant"`
	Measurements types.Map    `tfsdk:"measurements"`
	PlatformCA   types.String `tfsdk:"platform_ca_certificate"`
}

type clusterNode struct {
	Name types.String `tfsdk:"name"`
	IP   types.String `tfsdk:"ip"`
	Role types.String `tfsdk:"role"`
}

var (
	clusterAttestationType = types.ObjectType{AttrTypes: map[string]attr.Type{
		"variant": types.StringType, "measurements": types.MapType{ElemType: measurementType}, "platform_ca_certificate": types.StringType,
	}}
	clusterNodeType = types.ObjectType{AttrTypes: map[string]attr.Type{"name": types.StringType, "ip": types.StringType, "role": types.StringType}}
)

func (r *clusterResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_cluster"
}

func (r *clusterResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	fixed := []planmodifier.String{immutableString{}}
	computed := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	secret := []planmodifier.String{immutableString{}, stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "An initialized Constellation cluster on nodes the infrastructure resources made: Create attests the " +
			"first control plane and initializes it (resuming an interrupted init); Read verifies every node again, so a " +
			"node that no longer shows the measurements is an error in the plan. Destroying it leaves the nodes to their " +
			"own resources.",
		Attributes: map[string]schema.Attribute{
			"id":   schema.StringAttribute{Computed: true, PlanModifiers: computed, Description: "The cluster ID (hex)."},
			"name": schema.StringAttribute{Required: true, PlanModifiers: fixed, Description: "Cluster name (a DNS label)."},
			"endpoint": schema.StringAttribute{Required: true, PlanModifiers: fixed,
				Description: "The first control plane's address, e.g. constellation_local_node.cp0.ip: it is initialized, and " +
					"the API server is reached there."},
			"api_server_cert_sans": schema.ListAttribute{Optional: true, ElementType: types.StringType,
				PlanModifiers: []planmodifier.List{immutableList{}},
				Description:   "Further names of the API server's certificate (the endpoint is always one)."},
			"init_secret": schema.StringAttribute{Required: true, Sensitive: true,
				Description: "The infrastructure's init secret (the constellation_local_network's): it proves the init " +
					"request comes from whoever created the nodes."},
			"kubernetes_version": schema.StringAttribute{Required: true,
				Description: "Pinned Kubernetes version the cluster is initialized with (see `constellation upgrade check`)."},
			"component_url": schema.StringAttribute{Required: true,
				Description: "Where the nodes download the Kubernetes components: the constellation_local_network's component_url."},
			"services_dir": schema.StringAttribute{Required: true,
				Description: "Directory with the services' image archives, as for the constellation_local_network."},
			"attestation": schema.SingleNestedAttribute{Required: true,
				Description: "What every node must show: the variant and the measurements, e.g. from data.constellation_image " +
					"or data.constellation_attestation.",
				Attributes: map[string]schema.Attribute{
					"variant": schema.StringAttribute{Required: true,
						Validators:  []validator.String{oneOf{"qemu-vtpm", "aws-sev-snp", "gcp-sev-snp", "azure-sev-snp"}},
						Description: "Attestation variant (qemu-vtpm for local nodes)."},
					"measurements": schema.MapNestedAttribute{Required: true, Description: "Reference values by PCR index.",
						NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
							"expected":  schema.StringAttribute{Required: true, Description: "SHA-256 PCR value (hex)."},
							"warn_only": schema.BoolAttribute{Required: true, Description: "Report a mismatch instead of refusing."},
						}}},
					"platform_ca_certificate": schema.StringAttribute{Optional: true,
						Description: "PEM certificate of the CA that certifies the nodes' vTPMs (qemu-vtpm): the " +
							"constellation_local_network's platform_ca_certificate. Required for qemu-vtpm."},
				},
			},
			"nodes": schema.ListNestedAttribute{Required: true,
				Description: "Every node of the cluster: Read verifies each of them.",
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"name": schema.StringAttribute{Required: true},
					"ip":   schema.StringAttribute{Required: true},
					"role": schema.StringAttribute{Required: true,
						Validators: []validator.String{oneOf{string(role.ControlPlane), string(role.Worker)}}},
				}}},
			"image_dir": schema.StringAttribute{Optional: true,
				Description: "The node image the nodes run (local). Changing it, with the attestation's measurements " +
					"changed to the new image's, rolls the nodes out to it one at a time (control planes first; each drained, " +
					"rebooted with its state disk kept, unlocked or rejoined, verified, uncordoned) while the cluster trusts " +
					"both images; afterwards only the new one. The nodes' own resources must then leave their image_dir to " +
					"this resource (lifecycle { ignore_changes = [image_dir] })."},
			"master_secret": schema.StringAttribute{Optional: true, Computed: true, Sensitive: true, PlanModifiers: secret,
				Description: "The master secret (hex, 32 bytes); generated when not given. Whoever holds it can decrypt every " +
					"node's state: keep the Terraform state as safe as the cluster. `constellation recover` needs it."},
			"master_secret_salt": schema.StringAttribute{Optional: true, Computed: true, Sensitive: true, PlanModifiers: secret,
				Description: "The master secret's salt (hex, 32 bytes); generated when not given."},
			"kubeconfig": schema.StringAttribute{Computed: true, Sensitive: true, PlanModifiers: computed,
				Description: "The admin kubeconfig."},
			"cluster_id": schema.StringAttribute{Computed: true, PlanModifiers: computed,
				Description: "The cluster ID (hex): what every node's PCR 15 holds once it belongs to the cluster."},
			"owner_id": schema.StringAttribute{Computed: true, PlanModifiers: computed, Description: "The owner ID (hex)."},
		},
	}
}

// attributeDiag turns an *attributeError into an error on its attribute.
func attributeDiag(summary string, err error) diag.Diagnostic {
	var attrErr *attributeError
	if errors.As(err, &attrErr) {
		return diag.NewAttributeErrorDiagnostic(path.Root(attrErr.attribute), summary, attrErr.Error())
	}
	return diag.NewErrorDiagnostic(summary, err.Error())
}

// attestationConfig is the model's attestation section in the configuration's form.
func (m *clusterModel) attestationConfig(ctx context.Context) (config.AttestationConfig, error) {
	var a clusterAttestation
	if d := m.Attestation.As(ctx, &a, basetypes.ObjectAsOptions{}); d.HasError() {
		return config.AttestationConfig{}, attrErrorf("attestation", "%s", diagText(d))
	}
	refs := measurements.M{}
	var values map[string]struct {
		Expected string `tfsdk:"expected"`
		WarnOnly bool   `tfsdk:"warn_only"`
	}
	if d := a.Measurements.ElementsAs(ctx, &values, false); d.HasError() {
		return config.AttestationConfig{}, attrErrorf("attestation", "measurements: %s", diagText(d))
	}
	for idx, v := range values {
		i, err := strconv.ParseUint(idx, 10, 32)
		if err != nil {
			return config.AttestationConfig{}, attrErrorf("attestation", "measurements: PCR index %q is not a number", idx)
		}
		expected, err := measurements.ParseDigest(v.Expected)
		if err != nil {
			return config.AttestationConfig{}, attrErrorf("attestation", "measurements[%q]: %w", idx, err)
		}
		refs[uint32(i)] = measurements.Measurement{Expected: expected, WarnOnly: v.WarnOnly}
	}
	if err := refs.Validate(); err != nil {
		return config.AttestationConfig{}, attrErrorf("attestation", "measurements: %w", err)
	}
	att := config.AttestationConfig{Variant: a.Variant.ValueString(), Measurements: refs, PlatformCA: a.PlatformCA.ValueString()}
	if att.Variant == "qemu-vtpm" && att.PlatformCA == "" {
		return config.AttestationConfig{}, attrErrorf("attestation", "platform_ca_certificate is required for qemu-vtpm: "+
			"without it any software TPM could pass as a node (use the constellation_local_network's platform_ca_certificate)")
	}
	return att, nil
}

func diagText(d diag.Diagnostics) string {
	var parts []string
	for _, e := range d.Errors() {
		parts = append(parts, e.Summary()+": "+e.Detail())
	}
	return strings.Join(parts, "; ")
}

// targets are the model's nodes to verify.
func (m *clusterModel) targets(ctx context.Context) ([]clusterclient.Target, error) {
	var nodes []clusterNode
	if d := m.Nodes.ElementsAs(ctx, &nodes, false); d.HasError() {
		return nil, attrErrorf("nodes", "%s", diagText(d))
	}
	targets := make([]clusterclient.Target, 0, len(nodes))
	for _, n := range nodes {
		targets = append(targets, clusterclient.Target{Name: n.Name.ValueString(), IP: n.IP.ValueString(), Role: n.Role.ValueString()})
	}
	return targets, nil
}

// targetNames returns the nodes' names, in their order.
func targetNames(targets []clusterclient.Target) []string {
	names := make([]string, 0, len(targets))
	for _, t := range targets {
		names = append(names, t.Name)
	}
	return names
}

// givenMasterSecret is the master secret and salt of m, if m holds one (configured, or in the state).
func (m *clusterModel) givenMasterSecret() (ms crypto.MasterSecret, given bool, err error) {
	if m.MasterSecret.IsNull() || m.MasterSecret.IsUnknown() {
		return ms, false, nil
	}
	if ms.Key, err = hex.DecodeString(m.MasterSecret.ValueString()); err != nil {
		return ms, true, attrErrorf("master_secret", "not hex: %w", err)
	}
	if ms.Salt, err = hex.DecodeString(m.MasterSecretSalt.ValueString()); err != nil || m.MasterSecretSalt.IsUnknown() {
		return ms, true, attrErrorf("master_secret_salt", "must be given (hex) with master_secret")
	}
	if err := ms.Validate(); err != nil {
		return ms, true, attrErrorf("master_secret", "%w", err)
	}
	return ms, true, nil
}

// masterSecret is the configured master secret, or the one a previous attempt generated for this cluster,
// or a new one (written before it is sent). resuming says whether a node may already hold it.
func (r *clusterResource) masterSecret(m *clusterModel) (ms crypto.MasterSecret, resuming bool, err error) {
	if ms, given, err := m.givenMasterSecret(); given || err != nil {
		// Given by the admin (or kept in the state), so it existed before this attempt.
		return ms, true, err
	}
	if !m.MasterSecretSalt.IsNull() && !m.MasterSecretSalt.IsUnknown() {
		return ms, false, attrErrorf("master_secret", "must be given with master_secret_salt")
	}
	dir := filepath.Join(r.stateRoot, m.Name.ValueString())
	if err := r.fs.MkdirAll(dir, 0o700); err != nil {
		return ms, false, err
	}
	ms, created, err := crypto.LoadOrCreateMasterSecret(file.NewHandler(r.fs), filepath.Join(dir, pendingSecretFile))
	return ms, !created, err
}

func (r *clusterResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m clusterModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	att, err := m.attestationConfig(ctx)
	if err != nil {
		resp.Diagnostics.Append(attributeDiag("Invalid attestation", err))
		return
	}
	ms, resuming, err := r.masterSecret(&m)
	if err != nil {
		resp.Diagnostics.Append(attributeDiag("The master secret", err))
		return
	}
	version, err := versions.ResolveKubernetes(m.KubernetesVersion.ValueString())
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("kubernetes_version"), "Invalid Kubernetes version", err.Error())
		return
	}
	comps, notices, err := versions.ClusterComponents(m.ComponentURL.ValueString(), version, m.ServicesDir.ValueString())
	if err != nil {
		resp.Diagnostics.AddError("The cluster's components", err.Error())
		return
	}
	for _, n := range notices {
		resp.Diagnostics.AddWarning("Kubernetes components", n)
	}
	var sans []string
	resp.Diagnostics.Append(m.APIServerCertSANs.ElementsAs(ctx, &sans, true)...)
	if resp.Diagnostics.HasError() {
		return
	}
	initReq, err := clusterclient.NewInitRequest(clusterclient.InitConfig{
		Endpoint: m.Endpoint.ValueString(), APIServerCertSANs: sans, MasterSecret: ms, Resuming: resuming,
		InitSecret: []byte(m.InitSecret.ValueString()), ClusterName: m.Name.ValueString(), KubernetesVersion: version,
		Components: comps, Attestation: att,
		Validator: func(refs measurements.M) (attestation.Validator, error) { return r.validator(att, refs) },
	})
	if err != nil {
		resp.Diagnostics.AddError("Preparing the init request", err.Error())
		return
	}
	log, done := r.logger(m.Name.ValueString())
	defer done()
	initReq.Progress = func(step, msg string) { log.Info("init", "step", step, "message", msg) }
	initReq.Notice = func(msg string) { log.Info(msg) }
	res, err := clusterclient.Init(ctx, r.initer, r.booting, initReq)
	if err != nil {
		resp.Diagnostics.AddError("Initializing the cluster", initErrorDetail(initReq.Endpoint, err))
		return
	}
	m.MasterSecret, m.MasterSecretSalt = types.StringValue(hex.EncodeToString(ms.Key)), types.StringValue(hex.EncodeToString(ms.Salt))
	m.ClusterID, m.OwnerID = types.StringValue(hex.EncodeToString(res.GetClusterId())), types.StringValue(hex.EncodeToString(res.GetOwnerId()))
	m.ID = m.ClusterID
	m.Kubeconfig = types.StringValue(string(res.GetKubeconfig()))
	resp.Diagnostics.Append(r.claim(ctx, &m)...)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// claim marks the nodes as this resource's to move to another image, so that their own resources refuse to
// restart them into one; nodes this resource cannot find are a warning (image roll-outs need them).
func (r *clusterResource) claim(ctx context.Context, m *clusterModel) diag.Diagnostics {
	var diags diag.Diagnostics
	targets, err := m.targets(ctx)
	if err == nil {
		var infra clusterInfra
		if infra, err = r.infra(targets); err == nil {
			err = infra.Claim("constellation_cluster " + m.Name.ValueString())
		}
	}
	if err != nil {
		diags.AddWarning("The nodes' infrastructure", fmt.Sprintf("%v\nImage roll-outs through image_dir need the "+
			"nodes' constellation_local_node resources.", err))
	}
	return diags
}

// initErrorDetail says what went wrong and what to do, as `constellation apply` does.
func initErrorDetail(endpoint string, err error) string {
	var failed *clusterclient.InitFailedError
	switch {
	case errors.As(err, &failed):
		logs := string(failed.Logs)
		if len(logs) > 4000 {
			logs = "…" + logs[len(logs)-4000:]
		}
		return fmt.Sprintf("%v\nFix the cause and run terraform apply again. The end of the node's log:\n%s", err, logs)
	case errors.Is(err, clusterclient.ErrInitCutOff):
		return fmt.Sprintf("initializing the node at %s: %v\nThe node restarted or lost power during its init; run terraform "+
			"apply again: the node redoes the cut-off init with the same master secret.", endpoint, err)
	case errors.Is(err, clusterclient.ErrWrongIdentity):
		return err.Error()
	default:
		return fmt.Sprintf("initializing the node at %s: %v\nIf the node failed attestation, nothing was sent to it: check "+
			"the attestation's measurements and the node image. Run terraform apply again to retry.", endpoint, err)
	}
}

func (r *clusterResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m clusterModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(r.refresh(ctx, &m, req.Private)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// refresh verifies every node; during a roll-out that did not finish (its private record), a node may show
// the target image's measurements instead of the state's.
func (r *clusterResource) refresh(ctx context.Context, m *clusterModel, private privateState) diag.Diagnostics {
	var diags diag.Diagnostics
	var pending *pendingRollout
	if data, d := private.GetKey(ctx, rolloutKey); !d.HasError() && len(data) > 0 {
		pending = &pendingRollout{}
		if err := json.Unmarshal(data, pending); err != nil {
			diags.AddError("The cluster's unfinished image roll-out", err.Error())
			return diags
		}
		diags.AddWarning("An image roll-out did not finish", fmt.Sprintf("nodes may run the image before or "+
			"%s, and both are trusted until it finishes: run terraform apply to continue it", pending.Image))
	}
	diags.Append(r.verify(ctx, m, pending)...)
	return diags
}

// memberValidator validates nodes of m's cluster that show refs, with the cluster's ID in PCR 15.
func (r *clusterResource) memberValidator(m *clusterModel, att config.AttestationConfig, refs measurements.M) (attestation.Validator, error) {
	clusterID, err := hex.DecodeString(m.ClusterID.ValueString())
	if err != nil {
		return nil, attrErrorf("cluster_id", "invalid cluster ID: %w", err)
	}
	joined, err := refs.WithClusterID(clusterID)
	if err != nil {
		return nil, err
	}
	return r.validator(att, joined)
}

// verify verifies every node against the attestation with the cluster's ID in PCR 15; during an unfinished
// roll-out (pending), a node may show the measurements of its target image instead. A node that answers
// with other measurements, or with another node's attestation, is an error; one that does not answer is a
// warning (it may be stopped, and a destroy must still be planned).
func (r *clusterResource) verify(ctx context.Context, m *clusterModel, pending *pendingRollout) diag.Diagnostics {
	var diags diag.Diagnostics
	att, err := m.attestationConfig(ctx)
	if err != nil {
		diags.Append(attributeDiag("Invalid attestation", err))
		return diags
	}
	validator, err := r.memberValidator(m, att, att.Measurements)
	if err != nil {
		diags.Append(attributeDiag("Verifying the nodes", err))
		return diags
	}
	targets, err := m.targets(ctx)
	if err != nil {
		diags.Append(attributeDiag("Invalid nodes", err))
		return diags
	}
	results := clusterclient.VerifyNodes(ctx, r.attester, targets, validator)
	if pending != nil {
		if validator, err = r.memberValidator(m, att, pending.Measurements); err != nil {
			diags.Append(attributeDiag("Verifying the nodes", err))
			return diags
		}
		for i, res := range results {
			if !res.Verified && !res.Unreachable {
				results[i] = clusterclient.VerifyNode(ctx, r.attester, targets[i], validator)
			}
		}
	}
	for _, res := range results {
		switch {
		case res.Verified:
		case res.Unreachable:
			diags.AddWarning("Node "+res.Name+" did not answer", fmt.Sprintf("%s (%s) was not verified: %s", res.Name, res.IP, res.Error))
		default:
			diags.AddError("Node "+res.Name+" no longer verifies", fmt.Sprintf("%s (%s) does not show what the attestation "+
				"requires: %s\nDo not trust it: find out what changed (constellation verify -o json lists the differing PCRs), "+
				"then replace the node. To destroy the cluster anyway, run terraform destroy -refresh=false.", res.Name, res.IP, res.Error))
		}
	}
	return diags
}

func (r *clusterResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var plan, prior clusterModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &prior)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(r.update(ctx, &plan, &prior, resp.Private)...)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// update applies plan to the cluster of prior: a Kubernetes upgrade, then an image roll-out, whose
// unfinished state it records in private.
func (r *clusterResource) update(ctx context.Context, plan, prior *clusterModel, private privateState) diag.Diagnostics {
	var diags diag.Diagnostics
	if err := attestationChange(ctx, prior, plan); err != nil {
		diags.Append(attributeDiag("Attestation change refused", err))
		return diags
	}
	plan.ID, plan.Kubeconfig, plan.ClusterID, plan.OwnerID = prior.ID, prior.Kubeconfig, prior.ClusterID, prior.OwnerID
	plan.MasterSecret, plan.MasterSecretSalt = prior.MasterSecret, prior.MasterSecretSalt
	log, done := r.logger(plan.Name.ValueString())
	defer done()
	// Kubernetes first, as `constellation apply` does: the new image's bootstrapper pins the new version.
	if !plan.KubernetesVersion.Equal(prior.KubernetesVersion) {
		if err := r.upgradeKubernetes(ctx, plan, log); err != nil {
			diags.Append(attributeDiag("Upgrading Kubernetes", err))
			return diags
		}
	}
	if !plan.Attestation.Equal(prior.Attestation) || !plan.ImageDir.Equal(prior.ImageDir) {
		if err := r.rollImage(ctx, plan, private, log); err != nil {
			diags.Append(attributeDiag("Rolling the nodes out to "+plan.ImageDir.ValueString(), err))
			return diags
		}
	}
	// What is left changes nothing on the cluster: the node list (verified from now on and claimed), the
	// component URL, the services directory and the init secret (used only at init).
	diags.Append(r.claim(ctx, plan)...)
	diags.Append(r.verify(ctx, plan, nil)...)
	return diags
}

// attestationChange refuses a change of the attestation other than new measurements (an image roll-out):
// another variant or platform CA is not applied to a running cluster through Terraform yet.
func attestationChange(ctx context.Context, prior, plan *clusterModel) error {
	if plan.Attestation.Equal(prior.Attestation) {
		return nil
	}
	before, err := prior.attestationConfig(ctx)
	if err != nil {
		return err
	}
	after, err := plan.attestationConfig(ctx)
	if err != nil {
		return err
	}
	if before.Variant != after.Variant || before.PlatformCA != after.PlatformCA {
		return attrErrorf("attestation", "only the measurements of a running cluster change through Terraform (an image "+
			"roll-out with image_dir); set variant and platform_ca_certificate back to %s and the cluster's CA", before.Variant)
	}
	return nil
}

// ModifyPlan refuses, when the plan is made, a kubernetes_version the cluster cannot move to: a downgrade,
// a skipped minor version (both from what its API server and kubelets run), or a version whose components
// this machine did not build. The apply would refuse it too, but only after the resources it depends on (the
// network) changed.
func (r *clusterResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	plan, prior, ok := plannedUpdate[clusterModel](ctx, req, &resp.Diagnostics)
	if !ok {
		return
	}
	resp.Diagnostics.Append(unfinishedRollout(ctx, &plan, req.Private)...)
	resp.Diagnostics.Append(r.planImage(ctx, &prior, &plan)...)
	if plan.KubernetesVersion.IsUnknown() || plan.KubernetesVersion.Equal(prior.KubernetesVersion) {
		return
	}
	to, err := r.upgradeTarget(plan.KubernetesVersion.ValueString())
	if err != nil {
		resp.Diagnostics.Append(attributeDiag("Kubernetes version refused", err))
		return
	}
	// Only a refusal is reported here: a cluster that does not answer is planned as asked, and the apply
	// waits for it or says why not.
	if _, err := r.planKubernetes(ctx, prior.Kubeconfig.ValueString(), to); errors.As(err, new(*attributeError)) {
		resp.Diagnostics.Append(attributeDiag("Kubernetes version refused", err))
	}
}

// unfinishedRollout refuses a plan that does not finish an image roll-out an earlier apply left halfway:
// the cluster trusts both images until it finishes, so moving to a third image, or going back, would leave
// nodes of the unfinished one trusted (as `constellation apply` refuses it).
func unfinishedRollout(ctx context.Context, plan *clusterModel, private privateState) diag.Diagnostics {
	var diags diag.Diagnostics
	data, d := private.GetKey(ctx, rolloutKey)
	if d.HasError() || len(data) == 0 || plan.Attestation.IsUnknown() {
		return diags
	}
	var pending pendingRollout
	if err := json.Unmarshal(data, &pending); err != nil {
		diags.AddError("The cluster's unfinished image roll-out", err.Error())
		return diags
	}
	att, err := plan.attestationConfig(ctx)
	if err != nil {
		diags.Append(attributeDiag("Invalid attestation", err))
		return diags
	}
	if !imagerollout.Same(att.Measurements, pending.Measurements) {
		diags.AddAttributeError(path.Root("attestation"), "An image roll-out did not finish",
			fmt.Sprintf("an earlier apply began to move the nodes to %s and stopped; the cluster trusts that image and the "+
				"one before until the roll-out finishes. Set image_dir to %s and the attestation to its measurements, and "+
				"apply to finish it; then move on.", pending.Image, pending.Image))
	}
	return diags
}

// planImage refuses, when the plan is made, an image roll-out that the apply would refuse: an attestation
// change other than the measurements, or an image_dir that does not boot to them.
func (r *clusterResource) planImage(ctx context.Context, prior, plan *clusterModel) diag.Diagnostics {
	var diags diag.Diagnostics
	if plan.Attestation.IsUnknown() || plan.ImageDir.IsUnknown() ||
		(plan.Attestation.Equal(prior.Attestation) && plan.ImageDir.Equal(prior.ImageDir)) {
		return diags
	}
	if err := attestationChange(ctx, prior, plan); err != nil {
		diags.Append(attributeDiag("Attestation change refused", err))
		return diags
	}
	att, err := plan.attestationConfig(ctx)
	if err != nil {
		diags.Append(attributeDiag("Invalid attestation", err))
		return diags
	}
	if plan.ImageDir.IsNull() || plan.ImageDir.ValueString() == "" {
		if !plan.Attestation.Equal(prior.Attestation) {
			diags.Append(attributeDiag("Image roll-out refused", attrErrorf("image_dir", "new measurements are a roll-out "+
				"to another node image: set image_dir to the image whose measurements they are")))
		}
		return diags
	}
	image, err := filepath.Abs(plan.ImageDir.ValueString())
	if err == nil {
		err = r.checkImage(image, att.Measurements)
	}
	if err != nil {
		diags.Append(attributeDiag("Image roll-out refused", err))
	}
	return diags
}

// upgradeTarget resolves a configured Kubernetes version and refuses one whose components this machine did
// not build.
func (r *clusterResource) upgradeTarget(version string) (string, error) {
	to, err := versions.ResolveKubernetes(version)
	if err != nil {
		return "", attrErrorf("kubernetes_version", "%w", err)
	}
	if !r.built(to) {
		return "", attrErrorf("kubernetes_version", "%v, then run terraform again", clusterupgrade.NotBuiltError(to))
	}
	return to, nil
}

// planKubernetes plans the move of the cluster of kubeconfig to the version to; a refusal is an error on
// kubernetes_version that says what to set it back to.
func (r *clusterResource) planKubernetes(ctx context.Context, kubeconfig, to string) (*clusterupgrade.Plan, error) {
	k8s, err := r.kube([]byte(kubeconfig))
	if err != nil {
		return nil, fmt.Errorf("the kubeconfig in the state: %w", err)
	}
	plan, err := clusterupgrade.PlanKubernetes(ctx, k8s, to)
	if refused := (*clusterupgrade.RefusedError)(nil); errors.As(err, &refused) {
		return nil, attrErrorf("kubernetes_version", "%s: %v; set kubernetes_version back to %s", to, refused, refused.From)
	}
	return plan, err
}

// upgradeKubernetes moves the cluster to m's Kubernetes version through its upgrade controller, as
// `constellation apply` does (clusterupgrade): it refuses a downgrade or a skipped minor version before
// anything changes, and follows the controller until every node runs the version. An apply that stopped
// halfway is run again: the controller went on meanwhile, and the same target is followed to its end.
func (r *clusterResource) upgradeKubernetes(ctx context.Context, m *clusterModel, log *slog.Logger) error {
	to, err := r.upgradeTarget(m.KubernetesVersion.ValueString())
	if err != nil {
		return err
	}
	plan, err := r.planKubernetes(ctx, m.Kubeconfig.ValueString(), to)
	if errors.Is(err, clusterupgrade.ErrNotAnswering) {
		return fmt.Errorf("%w: start the nodes (terraform apply starts stopped local nodes) and run terraform apply again", err)
	}
	if err != nil || plan == nil {
		return err
	}
	joinComps, _, err := versions.ClusterComponents(m.ComponentURL.ValueString(), to, m.ServicesDir.ValueString())
	if err != nil {
		return err
	}
	comps, err := clusterupgrade.KubernetesOnly(joinComps, to)
	if err != nil {
		return err
	}
	if err := r.waitNodesJoined(ctx, m, log); err != nil {
		return err
	}
	cr, err := r.upgrades([]byte(m.Kubeconfig.ValueString()))
	if err != nil {
		return err
	}
	spec := kubeupgrade.Spec{Version: to, Components: comps, JoinComponents: joinComps}
	if err := clusterupgrade.Submit(ctx, cr, spec); errors.Is(err, clusterupgrade.ErrNoController) {
		return fmt.Errorf("%w (an earlier release created it): upgrade it with 'constellation apply' in its workspace", err)
	} else if err != nil {
		return fmt.Errorf("handing the upgrade to the cluster's upgrade controller: %w", err)
	}
	log.Info("Kubernetes upgrade handed to the cluster's upgrade controller", "from", plan.From, "to", to)
	err = clusterupgrade.Follow(ctx, cr, to, r.follow, func(last, prog kubeupgrade.Progress) {
		if clusterupgrade.Progressed(last, prog) {
			log.Info("Kubernetes upgrade", "phase", prog.Phase, "node", prog.Node, "step", prog.Step, "waiting", prog.Waiting)
		}
	})
	var failed *clusterupgrade.StepFailedError
	var stalled *clusterupgrade.StalledError
	switch {
	case errors.As(err, &failed):
		return fmt.Errorf("%w\nThe node keeps what it ran; fix the cause and run terraform apply again to retry", err)
	case errors.As(err, &stalled):
		return fmt.Errorf("%w\nThe upgrade controller goes on in the cluster; run terraform apply again to follow it", err)
	case err != nil:
		return fmt.Errorf("%w\nThe upgrade controller goes on in the cluster; run terraform apply again to follow it", err)
	}
	log.Info("Kubernetes upgrade done", "version", to)
	return nil
}

// waitNodesJoined waits until m's nodes are Ready nodes of the cluster, as `constellation apply` does before an
// upgrade: workers join on their own after Create returned, and a node that joins while the upgrade runs
// misses its staging.
func (r *clusterResource) waitNodesJoined(ctx context.Context, m *clusterModel, log *slog.Logger) error {
	targets, err := m.targets(ctx)
	if err != nil {
		return err
	}
	k8s, err := r.kube([]byte(m.Kubeconfig.ValueString()))
	if err != nil {
		return fmt.Errorf("the kubeconfig in the state: %w", err)
	}
	err = clusterupgrade.WaitNodesJoined(ctx, k8s, targetNames(targets), r.follow, func(missing []string) {
		log.Info("waiting until the nodes are Ready nodes of the cluster before the upgrade starts (a node may still be joining)", "nodes", missing)
	})
	if notJoined := (*clusterupgrade.NotJoinedError)(nil); errors.As(err, &notJoined) {
		return fmt.Errorf("%w. Start or fix it (a local node logs to logs/bootstrapper.log in its state directory, "+
			"/var/lib/constellation/local/<network>/<node>) and run terraform apply again", err)
	}
	return err
}

func (r *clusterResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m clusterModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	// The nodes belong to their own resources; only the pending secret of an earlier init and the claim on
	// the nodes' images are removed here.
	if err := r.fs.RemoveAll(filepath.Join(r.stateRoot, m.Name.ValueString())); err != nil {
		resp.Diagnostics.AddError("Removing the cluster's pending master secret", err.Error())
	}
	if targets, err := m.targets(ctx); err == nil {
		if infra, err := r.infra(targets); err == nil {
			if err := infra.Claim(""); err != nil {
				resp.Diagnostics.AddWarning("Releasing the nodes' images", err.Error())
			}
		}
	}
}

// ImportState adopts a cluster that `constellation apply` initialized, from its workspace directory:
// terraform import constellation_cluster.x <workspace dir>.
func (r *clusterResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	m, err := r.importWorkspace(ctx, req.ID)
	if err != nil {
		resp.Diagnostics.AddError("Importing the cluster", fmt.Sprintf("%s: %v\nThe ID to import is the directory of the "+
			"CLI workspace of an initialized cluster (where constellation-state.yaml is).", req.ID, err))
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, m)...)
}

func (r *clusterResource) importWorkspace(ctx context.Context, dir string) (*clusterModel, error) {
	fh := file.NewHandler(afero.NewBasePathFs(r.fs, dir))
	st, err := state.Read(fh, state.FileName)
	if err != nil {
		return nil, err
	}
	if !st.IsInitialized() {
		return nil, errors.New("the workspace's cluster is not initialized: initialize it with constellation apply, or let Terraform create it")
	}
	cfg, err := config.Load(fh, config.FileName)
	if err != nil {
		return nil, err
	}
	ms, err := crypto.ReadMasterSecret(fh, crypto.MasterSecretFileName)
	if err != nil {
		return nil, err
	}
	kubeconfig, err := fh.Read(state.AdminConfFileName)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	measured, d := measurementsValue(cfg.Attestation.Measurements)
	if d.HasError() {
		return nil, errors.New(diagText(d))
	}
	platformCA := types.StringNull()
	if cfg.Attestation.PlatformCA != "" {
		platformCA = types.StringValue(cfg.Attestation.PlatformCA)
	}
	att, d := types.ObjectValue(clusterAttestationType.AttrTypes, map[string]attr.Value{
		"variant": types.StringValue(cfg.Attestation.Variant), "measurements": measured, "platform_ca_certificate": platformCA,
	})
	if d.HasError() {
		return nil, errors.New(diagText(d))
	}
	var nodes []attr.Value
	for _, name := range slices.Sorted(maps.Keys(st.Infrastructure.Nodes)) {
		n := st.Infrastructure.Nodes[name]
		v, d := types.ObjectValue(clusterNodeType.AttrTypes, map[string]attr.Value{
			"name": types.StringValue(name), "ip": types.StringValue(n.IP), "role": types.StringValue(n.Role),
		})
		if d.HasError() {
			return nil, errors.New(diagText(d))
		}
		nodes = append(nodes, v)
	}
	nodeList, d := types.ListValue(clusterNodeType, nodes)
	if d.HasError() {
		return nil, errors.New(diagText(d))
	}
	sans := types.ListNull(types.StringType)
	if len(st.Infrastructure.APIServerCertSANs) > 0 {
		if sans, d = types.ListValueFrom(ctx, types.StringType, st.Infrastructure.APIServerCertSANs); d.HasError() {
			return nil, errors.New(diagText(d))
		}
	}
	version, err := versions.ResolveKubernetes(cfg.KubernetesVersion)
	if err != nil {
		return nil, err
	}
	clusterID := hex.EncodeToString(st.ClusterValues.ClusterID)
	return &clusterModel{
		ID: types.StringValue(clusterID), Name: types.StringValue(st.Infrastructure.Name),
		Endpoint: types.StringValue(st.Infrastructure.ClusterEndpoint), APIServerCertSANs: sans,
		// Used only at init: the configuration's values are taken as they are.
		InitSecret: types.StringNull(), ComponentURL: types.StringNull(), ServicesDir: types.StringNull(),
		KubernetesVersion: types.StringValue(version), Attestation: att, Nodes: nodeList,
		MasterSecret: types.StringValue(hex.EncodeToString(ms.Key)), MasterSecretSalt: types.StringValue(hex.EncodeToString(ms.Salt)),
		Kubeconfig: types.StringValue(string(kubeconfig)), ClusterID: types.StringValue(clusterID),
		OwnerID: types.StringValue(hex.EncodeToString(st.ClusterValues.OwnerID)),
	}, nil
}

// immutableString refuses, when the plan is made, a new value for what an initialized cluster was made with
// (its name, endpoint, master secret): such a change would need a new cluster, and Terraform must never
// replace a cluster on its own.
type immutableString struct{}

func (immutableString) Description(context.Context) string { return immutableDescription }

func (m immutableString) MarkdownDescription(ctx context.Context) string { return m.Description(ctx) }

func (immutableString) PlanModifyString(_ context.Context, req planmodifier.StringRequest, resp *planmodifier.StringResponse) {
	refuseChange(req.State.Raw, req.Plan.Raw, req.StateValue, req.PlanValue, req.Path, &resp.Diagnostics)
}

// immutableList is immutableString for lists.
type immutableList struct{}

func (immutableList) Description(context.Context) string { return immutableDescription }

func (m immutableList) MarkdownDescription(ctx context.Context) string { return m.Description(ctx) }

func (immutableList) PlanModifyList(_ context.Context, req planmodifier.ListRequest, resp *planmodifier.ListResponse) {
	refuseChange(req.State.Raw, req.Plan.Raw, req.StateValue, req.PlanValue, req.Path, &resp.Diagnostics)
}

const immutableDescription = "Cannot change once the cluster is initialized."

// refuseChange adds an error on p when an initialized cluster's value (prior, in state) would change to a
// known other one. A create or destroy (no state or no plan) and a value set for the first time (after an
// import) are no change.
func refuseChange(state, plan tftypes.Value, prior, next attr.Value, p path.Path, diags *diag.Diagnostics) {
	if state.IsNull() || plan.IsNull() || prior.IsNull() || next.IsUnknown() || next.Equal(prior) {
		return
	}
	diags.AddAttributeError(p, "Cannot change "+p.String()+" of an initialized cluster",
		"The cluster was initialized with another value. Set it back; a cluster with the new value is a new cluster "+
			"(destroy this one first, which does not happen on its own: its data would be lost).")
}
