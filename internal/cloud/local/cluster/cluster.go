// Package cluster runs the provider side of a local cluster: the bridge network, the metadata API and the
// component server on the bridge address, and the nodes. It is what the local provider drives; tests use
// it in-process.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/cloud/local/metadata"
	"github.com/constellation-go/constellation/internal/cloud/local/network"
	"github.com/constellation-go/constellation/internal/cloud/local/node"
	"github.com/constellation-go/constellation/internal/components/server"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// ComponentPort is where the component server listens on the bridge address.
const ComponentPort = 9081

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

// MetadataURL is the base URL of the metadata API on the bridge address, as nodes reach it.
func MetadataURL(bridge netip.Addr) string {
	return "http://" + netip.AddrPortFrom(bridge, metadata.DefaultPort).String()
}

// ComponentURL is the base URL of the component server on the bridge address.
func ComponentURL(bridge netip.Addr) string {
	return "http://" + netip.AddrPortFrom(bridge, ComponentPort).String()
}

// Servers are the provider's servers on the bridge address: the metadata API (metadata.DefaultPort) and
// the component server (ComponentPort).
type Servers struct {
	Metadata *metadata.Server
	cancels  []context.CancelFunc
	wg       sync.WaitGroup
	log      *slog.Logger
}

// Serve starts the metadata API with st and the component server for the Kubernetes version's pinned set
// and the extra sets, both on the bridge address. They run until Close.
func Serve(ctx context.Context, bridge netip.Addr, st metadata.State, kubernetesVersion string, extra []versions.ExtraSet, log *slog.Logger) (_ *Servers, retErr error) {
	s := &Servers{log: log}
	defer func() {
		if retErr != nil {
			s.Close()
		}
	}()
	var err error
	if s.Metadata, err = metadata.NewServer(st, log); err != nil {
		return nil, err
	}
	metaLn, err := metadata.Listen(netip.AddrPortFrom(bridge, metadata.DefaultPort))
	if err != nil {
		return nil, fmt.Errorf("metadata API: %w", err)
	}
	s.serve(ctx, metaLn, func(ctx context.Context, ln net.Listener) error { return s.Metadata.Serve(ctx, ln) })

	set, notices, err := versions.LocalComponents(kubernetesVersion)
	if err != nil {
		return nil, err
	}
	for _, n := range notices {
		log.Warn("serving a locally built component", "notice", n)
	}
	sets := []versions.ComponentSet{set}
	dirs := map[string]string{set.Kubernetes: versions.CacheDir(set.Kubernetes)}
	for _, e := range extra {
		sets = append(sets, e.Set)
		dirs[e.Set.Kubernetes] = e.Dir
	}
	comps, err := server.New(server.Config{Sets: sets, CacheDir: func(v string) string { return dirs[v] }, Log: log})
	if err != nil {
		return nil, err
	}
	compLn, err := net.Listen("tcp", netip.AddrPortFrom(bridge, ComponentPort).String())
	if err != nil {
		return nil, fmt.Errorf("component server: %w", err)
	}
	s.serve(ctx, compLn, func(ctx context.Context, ln net.Listener) error { return comps.Serve(ctx, ln) })
	return s, nil
}

func (s *Servers) serve(ctx context.Context, ln net.Listener, serve func(context.Context, net.Listener) error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("server stopped", "addr", ln.Addr().String(), "error", err)
		}
	}()
	s.cancels = append(s.cancels, cancel)
}

// Close stops the servers and waits for them.
func (s *Servers) Close() {
	for _, cancel := range s.cancels {
		cancel()
	}
	s.wg.Wait()
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
