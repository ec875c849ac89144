package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/localprovider/metadata"
	"github.com/constellation-go/constellation/localprovider/network"
	"github.com/constellation-go/constellation/localprovider/node"
)

// The in-process harness of TestTwoNodeCluster: it starts a cluster's network, servers (Serve) and nodes
// in the test's process, so that the test can reach into each node. Users' clusters take the provider
// path instead: the Terraform provider's resources and the daemon (package daemon), which the e2e test
// drives through the CLI.

// NodeSpec describes one node.
type NodeSpec struct {
	Name string
	Role role.Role
	// ImageDir overrides the cluster's image for this node (a test boots a tampered image this way).
	ImageDir string
}

// Config describes a cluster.
type Config struct {
	Name       string
	BridgeCIDR netip.Prefix
	// ImageDir is the node image (out/image).
	ImageDir string
	// KubernetesVersion selects the pinned component set to serve.
	KubernetesVersion string
	// InitSecret is what the CLI must present to the first control plane; the metadata API serves its hash.
	InitSecret []byte
	Nodes      []NodeSpec
	// Extra are more component sets to serve (the services' images), each from its directory.
	Extra []versions.ExtraSet
	// BootstrapperArgs are passed to every node's bootstrapper.
	BootstrapperArgs []string
	// PlatformCA certifies the nodes' vTPMs.
	PlatformCA *manufacturer.CA
	Log        *slog.Logger
}

// Cluster is a running local cluster's provider side.
type Cluster struct {
	cfg     Config
	net     *network.Network
	servers *Servers
	nodes   map[string]*node.Node
	index   map[string]int
	log     *slog.Logger
}

// Create sets up the network and the servers and starts every node. On error, everything it made is
// removed again.
func Create(ctx context.Context, cfg Config) (_ *Cluster, retErr error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	nw, err := network.New(network.Config{Cluster: cfg.Name, BridgeCIDR: cfg.BridgeCIDR})
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, net: nw, nodes: map[string]*node.Node{}, index: map[string]int{}, log: log}
	defer func() {
		if retErr != nil {
			if err := c.Destroy(context.WithoutCancel(ctx)); err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("cleaning up: %w", err))
			}
		}
	}()
	if err := nw.Create(); err != nil {
		return nil, fmt.Errorf("creating the network: %w", err)
	}

	var instances []metadata.Instance
	for i, n := range cfg.Nodes {
		alloc, err := nw.Allocate(i)
		if err != nil {
			return nil, err
		}
		c.index[n.Name] = i
		instances = append(instances, metadata.Instance{Name: n.Name, Role: n.Role, IP: alloc.IP, PodCIDR: alloc.PodCIDR})
	}
	st := metadata.State{Instances: instances, InitSecretHash: metadata.HashInitSecret(cfg.InitSecret)}
	if c.servers, err = Serve(ctx, nw.BridgeAddr(), st, cfg.KubernetesVersion, cfg.Extra, log); err != nil {
		return nil, err
	}

	for _, n := range cfg.Nodes {
		if err := c.StartNode(ctx, n.Name); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) spec(name string) (NodeSpec, bool) {
	for _, n := range c.cfg.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodeSpec{}, false
}

func (c *Cluster) nodeConfig(n NodeSpec) node.Config {
	img := c.cfg.ImageDir
	if n.ImageDir != "" {
		img = n.ImageDir
	}
	return node.Config{
		Cluster: c.cfg.Name, Name: n.Name, Index: c.index[n.Name], Network: c.net, ImageDir: img,
		MetadataURL: MetadataURL(c.net.BridgeAddr()), PlatformCA: c.cfg.PlatformCA,
		BootstrapperArgs: c.cfg.BootstrapperArgs, Log: c.log.With("node", n.Name),
	}
}

// StartNode starts a node of the configuration.
func (c *Cluster) StartNode(ctx context.Context, name string) error {
	n, ok := c.spec(name)
	if !ok {
		return fmt.Errorf("no node %q in the cluster", name)
	}
	start := time.Now()
	nd, err := node.Start(ctx, c.nodeConfig(n))
	if err != nil {
		return fmt.Errorf("starting node %s: %w", name, err)
	}
	c.nodes[name] = nd
	c.log.Info("node started", "node", name, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Node returns a started node.
func (c *Cluster) Node(name string) *node.Node { return c.nodes[name] }

// NodeIP returns a node's address on the bridge.
func (c *Cluster) NodeIP(name string) (netip.Addr, error) {
	i, ok := c.index[name]
	if !ok {
		return netip.Addr{}, fmt.Errorf("no node %q in the cluster", name)
	}
	a, err := c.net.Allocate(i)
	return a.IP, err
}

// Components returns what the first control plane installs (and hands to joining nodes through the
// JoinService): the Kubernetes set's node components and every extra set, with URLs on the component
// server.
func (c *Cluster) Components() ([]*components.Component, error) {
	comps, _, err := versions.ComponentsAt(ComponentURL(c.net.BridgeAddr()), c.cfg.KubernetesVersion, c.cfg.Extra)
	return comps, err
}

// Destroy stops and removes every node, the servers and the network.
func (c *Cluster) Destroy(ctx context.Context) error {
	var errs []error
	for _, n := range c.cfg.Nodes {
		if err := node.Destroy(ctx, c.nodeConfig(n)); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
	}
	if c.servers != nil {
		c.servers.Close()
	}
	if err := c.net.Destroy(); err != nil {
		errs = append(errs, fmt.Errorf("network: %w", err))
	}
	return errors.Join(errs...)
}
