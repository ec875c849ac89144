package cmd

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/joinservice/attestconfig"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

// The bootstrapper's names for the attestation config the JoinService uses.
const (
	attestationConfigMap = attestconfig.ConfigMapName
	attestationConfigKey = attestconfig.FileName
)

func newStatusCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's nodes, versions and attestation config",
		Long: `Show what constellation-state.yaml records about the cluster and, once it is initialized, what
the cluster reports through the admin kubeconfig: each node's readiness and versions, and the
attestation config the JoinService checks joining nodes against.`,
		Example: `  constellation status
  constellation status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := outputFormat(cmd)
			if err != nil {
				return err
			}
			return e.status(cmd.Context(), format)
		},
	}
	addOutputFlag(cmd)
	return cmd
}

type statusNode struct {
	Name       string `json:"name"`
	Role       string `json:"role"`
	IP         string `json:"ip"`
	Ready      bool   `json:"ready"`
	InCluster  bool   `json:"inCluster"`
	Kubelet    string `json:"kubeletVersion,omitempty"`
	KernelOS   string `json:"osImage,omitempty"`
	Conditions string `json:"notReadyReason,omitempty"`
	// Image is the node image directory the node runs (local).
	Image string `json:"image,omitempty"`
	// Attested is the JoinService's last re-attestation of the node: "yes", "no", or "unknown" (not reached).
	Attested string `json:"attested,omitempty"`
	// AttestedMessage says why a node is not attested.
	AttestedMessage string `json:"attestedMessage,omitempty"`
	// Cordoned is set for an unschedulable node.
	Cordoned bool `json:"cordoned,omitempty"`
	// Upgrade is the node's report on a Kubernetes upgrade step it carries out or failed.
	Upgrade *agentapi.Status `json:"kubernetesUpgrade,omitempty"`
}

type statusResult struct {
	Cluster     string             `json:"cluster"`
	Provider    string             `json:"provider"`
	Endpoint    string             `json:"endpoint"`
	Initialized bool               `json:"initialized"`
	ClusterID   string             `json:"clusterID,omitempty"`
	Kubernetes  string             `json:"kubernetesVersion,omitempty"`
	Nodes       []statusNode       `json:"nodes"`
	Attestation *statusAttestation `json:"attestation,omitempty"`
	// Keys is the KeyService's backend: "constellation-managed" or "user-managed: <backend> (<settings>)",
	// as the cluster runs it (as configured before init).
	Keys string `json:"keys,omitempty"`
	// Target is how far the nodes are at the configuration's Kubernetes version.
	Target *statusTarget `json:"target,omitempty"`
	// ImageTarget is how far the nodes are at the configuration's node image (local).
	ImageTarget *statusImageTarget `json:"imageTarget,omitempty"`
	// UpgradeController is what the upgrade controller reports on the cluster's KubernetesUpgrade.
	UpgradeController *statusUpgradeController `json:"upgradeController,omitempty"`
	// Services is the services' Helm release.
	Services *statusServices `json:"services,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// statusServices is the services' Helm release, as `helm list -n kube-system` shows it.
type statusServices struct {
	Release  string `json:"release"`
	Version  string `json:"version"`
	Revision int    `json:"revision"`
	Status   string `json:"status"`
}

// statusImageTarget counts the nodes that run the configuration's node image.
type statusImageTarget struct {
	Image    string `json:"image"`
	AtTarget int    `json:"nodesAtTarget"`
	Nodes    int    `json:"nodes"`
}

// statusAttestation is the attestation config the JoinService enforces.
type statusAttestation struct {
	Variant string   `json:"variant"`
	PCRs    []uint32 `json:"enforcedPCRs"`
	WarnOn  []uint32 `json:"warnOnlyPCRs,omitempty"`
	// Rollout tells that a roll-out runs: the previous image's measurements are trusted too.
	Rollout bool `json:"rolloutRunning"`
}

// statusUpgradeController is the status of the cluster's KubernetesUpgrade.
type statusUpgradeController struct {
	Version string `json:"kubernetesVersion"`
	Phase   string `json:"phase"`
	Node    string `json:"node,omitempty"`
	Waiting string `json:"waiting,omitempty"`
	Error   string `json:"error,omitempty"`
}

// statusTarget counts the nodes whose kubelet runs the configuration's Kubernetes version.
type statusTarget struct {
	Kubernetes string `json:"kubernetesVersion"`
	AtTarget   int    `json:"nodesAtTarget"`
	Nodes      int    `json:"nodes"`
}

func (e *env) status(ctx context.Context, format string) error {
	st, err := e.requireState()
	if err != nil {
		return err
	}
	res := statusResult{
		Cluster: st.Infrastructure.Name, Provider: st.Infrastructure.Provider, Endpoint: st.Infrastructure.ClusterEndpoint,
		Initialized: st.IsInitialized(),
	}
	byName := map[string]int{}
	for name, n := range st.Infrastructure.Nodes {
		byName[name] = len(res.Nodes)
		res.Nodes = append(res.Nodes, statusNode{Name: name, Role: n.Role, IP: n.IP})
	}
	if st.IsInitialized() {
		res.ClusterID = st.ClusterValues.ClusterID.String()
		if err := e.clusterStatus(ctx, &res, byName); err != nil {
			res.Error = fmt.Sprintf("the cluster did not answer: %v", err)
		}
	}
	// status also serves a workspace whose configuration does not load: it then leaves the targets out.
	if cfg, err := config.Load(e.files, config.FileName); err == nil {
		if res.Keys == "" {
			res.Keys = cfg.KMS.String() + " (as configured)"
		}
		if res.Initialized && res.Error == "" {
			res.Target = nodesAtTarget(cfg.KubernetesVersion, res.Nodes)
		}
		e.nodeImages(cfg, &res, byName)
	}
	slices.SortFunc(res.Nodes, func(a, b statusNode) int { return strings.Compare(a.Name, b.Name) })
	if format == outputJSON {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(e.out, string(data))
		return nil
	}
	fmt.Fprintf(e.out, "Cluster %s (provider %s), endpoint %s\n", res.Cluster, res.Provider, res.Endpoint)
	if !res.Initialized {
		fmt.Fprintln(e.out, "Not initialized: run 'constellation apply'.")
	} else {
		fmt.Fprintf(e.out, "Cluster ID %s", res.ClusterID)
		if res.Kubernetes != "" {
			fmt.Fprintf(e.out, ", Kubernetes %s", res.Kubernetes)
		}
		fmt.Fprintln(e.out)
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tADDRESS\tREADY\tATTESTED\tKUBELET\tOS")
	for _, n := range res.Nodes {
		ready := "no"
		switch {
		case !res.Initialized:
			ready = "-"
		case n.Ready:
			ready = "yes"
		case !n.InCluster:
			ready = "not joined"
		case n.Conditions != "":
			ready = "no (" + n.Conditions + ")"
		}
		attested := dash(n.Attested)
		if n.Cordoned {
			attested += " (cordoned)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, n.IP, ready, attested, dash(n.Kubelet), dash(n.KernelOS))
	}
	_ = tw.Flush()
	for _, n := range res.Nodes {
		if n.Attested == "no" {
			fmt.Fprintf(e.out, "%s failed re-attestation: %s\n", n.Name, n.AttestedMessage)
		}
	}
	if tg := res.Target; tg != nil {
		fmt.Fprintf(e.out, "Kubernetes target %s (%s): %d of %d nodes at target\n", tg.Kubernetes, config.FileName, tg.AtTarget, tg.Nodes)
	}
	for _, n := range res.Nodes {
		if u := n.Upgrade; u != nil {
			fmt.Fprintf(e.out, "  %s, Kubernetes %s (%s): %s: %s\n", n.Name, u.Version, kubeupgrade.DescribeStep(u.Step, u.Version), u.Phase, u.Message)
		}
	}
	if uc := res.UpgradeController; uc != nil {
		fmt.Fprintf(e.out, "Upgrade controller: Kubernetes %s, %s", uc.Version, dash(uc.Phase))
		if uc.Node != "" {
			fmt.Fprintf(e.out, " at %s", uc.Node)
		}
		if uc.Waiting != "" {
			fmt.Fprintf(e.out, ": %s", uc.Waiting)
		}
		if uc.Error != "" {
			fmt.Fprintf(e.out, " (last error: %s)", uc.Error)
		}
		fmt.Fprintln(e.out)
	}
	if sv := res.Services; sv != nil {
		fmt.Fprintf(e.out, "Services: Helm release %s %s (revision %d, %s)\n", sv.Release, sv.Version, sv.Revision, sv.Status)
	}
	if it := res.ImageTarget; it != nil {
		fmt.Fprintf(e.out, "Node image target %s (%s): %d of %d nodes run it\n", it.Image, config.FileName, it.AtTarget, it.Nodes)
		for _, n := range res.Nodes {
			if n.Image != "" && n.Image != it.Image {
				fmt.Fprintf(e.out, "  %s runs %s\n", n.Name, n.Image)
			}
		}
	}
	if res.Keys != "" {
		fmt.Fprintf(e.out, "State disk keys: %s\n", res.Keys)
	}
	if a := res.Attestation; a != nil {
		fmt.Fprintf(e.out, "Attestation config (JoinService): variant %s, enforced PCRs %v", a.Variant, a.PCRs)
		if len(a.WarnOn) > 0 {
			fmt.Fprintf(e.out, ", warn-only %v", a.WarnOn)
		}
		if a.Rollout {
			fmt.Fprint(e.out, "; a roll-out runs: the previous image's measurements are trusted too")
		}
		fmt.Fprintln(e.out)
	}
	if res.Error != "" {
		fmt.Fprintf(e.out, "%s\n", res.Error)
	}
	return nil
}

// nodeImages fills in the image each node runs and how many run the configured one, where the provider
// records it (local); it leaves them out otherwise.
func (e *env) nodeImages(cfg *config.Config, res *statusResult, byName map[string]int) {
	_, images, target, err := e.imagePlacement(cfg, e.progress())
	if err != nil {
		return
	}
	res.ImageTarget = &statusImageTarget{Image: target}
	for name, img := range images {
		if i, ok := byName[name]; ok {
			res.Nodes[i].Image = img
			res.ImageTarget.Nodes++
			if img == target {
				res.ImageTarget.AtTarget++
			}
		}
	}
}

// imagePlacement returns the infrastructure of a local cluster, the image directory each node runs and the
// one the configuration names.
func (e *env) imagePlacement(cfg *config.Config, p *progress) (infra infrastructure, images map[string]string, target string, err error) {
	if cfg.GetProvider() != cloudprovider.Local {
		return nil, nil, "", fmt.Errorf("only the local provider records each node's image, not %s", cfg.GetProvider())
	}
	if infra, err = e.infra(p); err != nil {
		return nil, nil, "", err
	}
	if images, err = infra.NodeImages(); err != nil {
		return nil, nil, "", fmt.Errorf("reading which image each node runs: %w", err)
	}
	a, err := e.deps.artifacts()
	if err != nil {
		return nil, nil, "", err
	}
	if target, err = a.ImageDir(cfg); err != nil {
		return nil, nil, "", err
	}
	return infra, images, target, nil
}

// withAdminKubeconfig makes a client of the cluster with dep and the workspace's admin kubeconfig.
func withAdminKubeconfig[T any](e *env, dep func(kubeconfig []byte) (T, error)) (T, error) {
	kubeconfig, err := e.files.Read(AdminConfFile)
	if err != nil {
		var none T
		return none, err
	}
	return dep(kubeconfig)
}

// adminClient is a client of the cluster with the workspace's admin kubeconfig.
func (e *env) adminClient() (kubernetes.Interface, error) { return withAdminKubeconfig(e, e.deps.kube) }

// upgradeClient is a client of the cluster's KubernetesUpgrade, with the admin kubeconfig.
func (e *env) upgradeClient() (client.Client, error) { return withAdminKubeconfig(e, e.deps.upgrades) }

// servicesClient is the cluster's services release, with the admin kubeconfig.
func (e *env) servicesClient() (servicesRelease, error) {
	return withAdminKubeconfig(e, e.deps.services)
}

// nodesAtTarget counts the nodes in the cluster whose kubelet runs version (resolved like the
// configuration's kubernetesVersion).
func nodesAtTarget(version string, nodes []statusNode) *statusTarget {
	v, err := versions.ResolveKubernetes(version)
	if err != nil {
		return nil
	}
	t := &statusTarget{Kubernetes: v}
	for _, n := range nodes {
		if !n.InCluster {
			continue
		}
		t.Nodes++
		if n.Kubelet == v {
			t.AtTarget++
		}
	}
	return t
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (e *env) clusterStatus(ctx context.Context, res *statusResult, byName map[string]int) error {
	k8s, err := e.adminClient()
	if err != nil {
		return err
	}
	if v, err := k8s.Discovery().ServerVersion(); err == nil {
		res.Kubernetes = v.GitVersion
	}
	nodes, err := k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	res.UpgradeController = e.upgradeControllerStatus(ctx)
	res.Services = e.servicesStatus(ctx)
	for _, n := range nodes.Items {
		i, ok := byName[n.Name]
		if !ok {
			i = len(res.Nodes)
			byName[n.Name] = i
			res.Nodes = append(res.Nodes, statusNode{Name: n.Name})
		}
		sn := &res.Nodes[i]
		sn.InCluster = true
		sn.Kubelet = n.Status.NodeInfo.KubeletVersion
		sn.KernelOS = n.Status.NodeInfo.OSImage
		sn.Cordoned = n.Spec.Unschedulable
		if u, ok := agentapi.ReadStatus(&n); ok && u.Phase != agentapi.PhaseDone {
			sn.Upgrade = &u
		}
		for _, c := range n.Status.Conditions {
			switch c.Type {
			case corev1.NodeReady:
				sn.Ready = c.Status == corev1.ConditionTrue
				if !sn.Ready {
					sn.Conditions = c.Reason
				}
			case joinproto.AttestedCondition:
				sn.Attested = map[corev1.ConditionStatus]string{corev1.ConditionTrue: "yes", corev1.ConditionFalse: "no"}[c.Status]
				if sn.Attested == "" {
					sn.Attested = "unknown"
				}
				if c.Status != corev1.ConditionTrue {
					sn.AttestedMessage = c.Reason + ": " + c.Message
				}
			}
		}
	}
	cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, attestationConfigMap, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the attestation config: %w", err)
	}
	var att attestconfig.File
	if err := yaml.Unmarshal([]byte(cm.Data[attestationConfigKey]), &att); err != nil {
		return fmt.Errorf("parsing the attestation config: %w", err)
	}
	res.Attestation = &statusAttestation{Variant: att.Variant, Rollout: att.Rollout != nil}
	res.Keys = clusterKeys(ctx, k8s)
	for idx, m := range att.Measurements {
		if m.WarnOnly {
			res.Attestation.WarnOn = append(res.Attestation.WarnOn, idx)
		} else {
			res.Attestation.PCRs = append(res.Attestation.PCRs, idx)
		}
	}
	slices.Sort(res.Attestation.PCRs)
	slices.Sort(res.Attestation.WarnOn)
	return nil
}

// clusterKeys describes the KeyService's backend from its DaemonSet's --kms-uri; "" if it cannot be read.
func clusterKeys(ctx context.Context, k8s kubernetes.Interface) string {
	ds, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, keyserviceproto.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return describeKeys(keyServiceURI(ds))
}

// describeKeys describes the key backend uri names (nothing secret: credentials never go into the URI).
func describeKeys(uri string) string {
	u, err := kmsuri.Parse(uri)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	if u.Host == kmsuri.ClusterKMS {
		return "constellation-managed: derived from the master secret"
	}
	var settings []string
	for _, k := range slices.Sorted(maps.Keys(u.Query())) {
		settings = append(settings, k+"="+u.Query().Get(k))
	}
	return fmt.Sprintf("user-managed: %s (%s)", u.Host, strings.Join(settings, ", "))
}

// servicesStatus is the services' Helm release; nil if the cluster has none (services deployed by an
// earlier release) or it cannot be read.
func (e *env) servicesStatus(ctx context.Context) *statusServices {
	if e.deps.services == nil {
		return nil
	}
	helm, err := e.servicesClient()
	if err != nil {
		return nil
	}
	rel, err := helm.Current(ctx)
	if err != nil {
		return nil
	}
	return &statusServices{Release: rel.Name, Version: rel.AppVersion, Revision: rel.Revision, Status: rel.Status}
}

// upgradeControllerStatus is the KubernetesUpgrade's status; nil if there is none (no upgrade yet, or a
// cluster without the controller).
func (e *env) upgradeControllerStatus(ctx context.Context) *statusUpgradeController {
	if e.deps.upgrades == nil {
		return nil
	}
	cr, err := e.upgradeClient()
	if err != nil {
		return nil
	}
	var u v1alpha1.KubernetesUpgrade
	if err := cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u); err != nil {
		return nil
	}
	return &statusUpgradeController{Version: u.Spec.Version, Phase: u.Status.Phase, Node: u.Status.Node, Waiting: u.Status.Waiting, Error: u.Status.Error}
}
