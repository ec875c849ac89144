// Package terraform renders a provider's embedded Terraform module into the workspace and runs it with
// terraform-exec: the variables come from constellation-conf.yaml, the outputs go into
// constellation-state.yaml.
package terraform

import (
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/versions"
)

// Node is one node the module creates.
type Node struct {
	// Name is the node's name (and hostname): cp-<n> or worker-<n>.
	Name string
	Role string
	// Group is the node group of the configuration the node belongs to.
	Group string
	// Index is the node's position in the list of Nodes (control planes first); the local and qemu modules
	// derive its address from it, so adding a control plane moves the workers.
	Index           int
	StateDiskSizeGB int
	InstanceType    string
	Zone            string
}

// Inputs are the values of a module that do not come from the configuration.
type Inputs struct {
	// UID makes resource names unique: <name>-<uid>.
	UID string
	// InitSecret is rendered as hex; the hex text is the secret `apply` shows the first control plane (the
	// modules hand the SHA-256 of the text to the nodes: Terraform cannot decode hex).
	InitSecret []byte
	// ImageRef is the node image: a directory for local and qemu, the provider's image ID for clouds.
	ImageRef string
	// ServicesDir is where the services' image archives are (local only: the provider serves them).
	ServicesDir string
	// NodeImages are the image directories of nodes that do not run ImageRef (local only): a node keeps the
	// image it runs until a roll-out moves it, so rendering the module never reboots a node by surprise.
	NodeImages map[string]string
}

// Nodes lists the nodes the configuration asks for, control planes first, each role numbered across its
// groups in the groups' name order. Index is the position in that list.
func Nodes(cfg *config.Config) []Node {
	groups := make([]string, 0, len(cfg.NodeGroups))
	for name := range cfg.NodeGroups {
		groups = append(groups, name)
	}
	slices.Sort(groups)
	var cps, workers []Node
	for _, name := range groups {
		g := cfg.NodeGroups[name]
		for range g.InitialCount {
			node := Node{Role: g.Role, Group: name, StateDiskSizeGB: g.StateDiskSizeGB, InstanceType: g.InstanceType, Zone: g.Zone}
			if g.Role == config.RoleControlPlane {
				node.Name = fmt.Sprintf("cp-%d", len(cps))
				cps = append(cps, node)
			} else {
				node.Name = fmt.Sprintf("worker-%d", len(workers))
				workers = append(workers, node)
			}
		}
	}
	nodes := append(cps, workers...)
	for i := range nodes {
		nodes[i].Index = i
	}
	return nodes
}

// NodeImages returns the image directory each node of rendered local-module variables runs: its own image, or
// the module's image.
func NodeImages(vars map[string]any) map[string]string {
	out := map[string]string{}
	fallback, _ := vars["image"].(string)
	nodes, _ := vars["nodes"].(map[string]any)
	for name, n := range nodes {
		out[name] = fallback
		if fields, ok := n.(map[string]any); ok {
			if image, ok := fields["image"].(string); ok && image != "" {
				out[name] = image
			}
		}
	}
	return out
}

// Variables renders the module variables of the configuration's provider.
func Variables(cfg *config.Config, in Inputs) (map[string]any, error) {
	if len(in.InitSecret) == 0 || in.UID == "" {
		return nil, fmt.Errorf("rendering variables: the UID and the init secret must be set")
	}
	common := map[string]any{
		"name":        cfg.Name,
		"uid":         in.UID,
		"init_secret": hex.EncodeToString(in.InitSecret),
		"image":       in.ImageRef,
	}
	var specific map[string]any
	var err error
	switch p := cfg.GetProvider(); p {
	case cloudprovider.Local:
		specific, err = localVariables(cfg, in)
	case cloudprovider.QEMU:
		specific, err = qemuVariables(cfg, in)
	case cloudprovider.AWS:
		specific, err = awsVariables(cfg, in)
	case cloudprovider.GCP:
		specific, err = gcpVariables(cfg, in)
	case cloudprovider.Azure:
		specific, err = azureVariables(cfg, in)
	default:
		return nil, fmt.Errorf("rendering variables: no module for provider %q", p)
	}
	if err != nil {
		return nil, err
	}
	for k, v := range specific {
		common[k] = v
	}
	return common, nil
}

// nodesVariable is the `nodes` map every module takes.
func nodesVariable(nodes []Node) map[string]any {
	out := map[string]any{}
	for _, n := range nodes {
		out[n.Name] = map[string]any{
			"role": n.Role, "group": n.Group, "index": n.Index, "state_disk_size_gb": n.StateDiskSizeGB,
			"instance_type": n.InstanceType, "zone": n.Zone,
		}
	}
	return out
}

func localVariables(cfg *config.Config, in Inputs) (map[string]any, error) {
	if in.ServicesDir == "" {
		return nil, fmt.Errorf("rendering variables: the local provider needs the services' directory")
	}
	version, err := versions.ResolveKubernetes(cfg.KubernetesVersion)
	if err != nil {
		return nil, err
	}
	nodes, err := moduleNodes(cfg)
	if err != nil {
		return nil, err
	}
	for name, image := range in.NodeImages {
		if n, ok := nodes[name].(map[string]any); ok && image != in.ImageRef {
			n["image"] = image
		}
	}
	return map[string]any{
		"bridge_cidr":        cfg.Provider.Local.BridgeCIDR,
		"local_kms":          cfg.Provider.Local.LocalKMS,
		"kubernetes_version": version,
		"services_dir":       in.ServicesDir,
		"nodes":              nodes,
	}, nil
}
