// Package network builds the `local` provider's network (docs/architecture.md §6): per cluster, one
// Linux bridge in the host's network namespace, and per node a network namespace joined to the bridge by a
// veth pair.
//
// # What exists where
//
// In the host's (root) network namespace there is nothing but the cluster's bridge, its address (the first
// host of the configured bridge prefix) with the kernel's connected route, and the host ends of the nodes'
// veth pairs (bridge ports without addresses, IPv6 disabled). The bridge does not forward IP packets
// (net.ipv4.conf.<bridge>.forwarding=0) and has IPv6 disabled, so nothing a node sends can be routed off
// the machine by the host; strict reverse-path filtering on the bridge makes the host drop, rather than
// answer through its default route, anything that arrives from an address outside the bridge prefix (e.g.
// a pod address a node did not masquerade).
//
// Each node's namespace (bind-mounted at /run/netns/constellation_<cluster>_<node>, so `ip netns exec`
// works for debugging) has lo up and eth0 with the node's address, and only these routes:
//
//   - the bridge prefix (the kernel's connected route);
//   - the service prefix (10.96.0.0/12 by default) on eth0, on-link: kube-proxy's DNAT of a ClusterIP
//     happens after the first routing decision of a locally generated packet, so a route must exist for
//     the packet to be created at all. It has no gateway: a packet that no DNAT rule rewrote stays on the
//     bridge (nobody answers ARP for it) instead of going to the host;
//   - each other node's pod prefix via that node's address, so pod traffic between nodes needs no overlay.
//
// There is deliberately no default route: a node cannot send a packet anywhere but to the bridge's
// prefix. IP forwarding is on inside the node (pods route through it), net.bridge.bridge-nf-call-iptables
// is 1 there (kube-proxy and kubeadm's preflight want it; the sysctl is per namespace), IPv6 is off.
//
// # Allocation
//
// Addresses and pod prefixes are derived from a node's index, so that every component computes the same
// values without asking: node i has the (i+2)-th address of the bridge prefix (the bridge has the first)
// and pod prefix i of the cluster's pod prefix, a /24 each (10.244.i.0/24 by default). Allocation gives
// both; the metadata API serves them, and the bootstrapper hands the pod prefix to the kubelet.
//
// # Idempotency and clean-up
//
// Create and AddNode converge on the state above from whatever part of it exists (a rerun after a crash
// completes it). RemoveNode and Destroy delete what belongs to the cluster, found by name, and Remains
// lists anything left. The state lives in the kernel only: Nodes rediscovers the nodes from the named
// namespaces and their addresses.
package network

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"

	"github.com/constellation-go/constellation/localprovider/providerinfo"
)

// Defaults of Config.
const (
	// DefaultServiceCIDR is Kubernetes' default service prefix (kubeadm's serviceSubnet).
	DefaultServiceCIDR = "10.96.0.0/12"
	// DefaultPodCIDR is the cluster's pod prefix, split into one /24 per node.
	DefaultPodCIDR = "10.244.0.0/16"
)

const (
	// NodeInterface is the node's end of its veth pair, inside the node's namespace.
	NodeInterface = "eth0"
	// NetnsDir is where the nodes' namespaces are bind-mounted, as `ip netns add` does.
	NetnsDir = "/run/netns"
	// netnsPrefix starts the name of every namespace this package creates; names are
	// constellation_<cluster>_<node>, unambiguous because neither name may contain '_'.
	netnsPrefix = "constellation_"
	// aliasPrefix starts the alias (IFLA_IFALIAS) of every link this package creates.
	aliasPrefix = "constellation "
	// podPrefixLen is the size of each node's pod prefix.
	podPrefixLen = 24
)

// nameRE is what cluster and node names must look like: a DNS label (which Kubernetes node names are too).
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ErrConflict means the bridge prefix overlaps an address or route this machine already has.
var ErrConflict = errors.New("the bridge prefix conflicts with this machine's network")

// Config describes a cluster's network.
type Config struct {
	// Cluster is the cluster's name (a DNS label); links and namespaces are named after it.
	Cluster string
	// BridgeCIDR is the bridge's prefix (the configuration's local.bridgeCIDR), IPv4, at most /30.
	BridgeCIDR netip.Prefix
	// ServiceCIDR is the Kubernetes service prefix; the zero value means DefaultServiceCIDR.
	ServiceCIDR netip.Prefix
	// PodCIDR is the cluster's pod prefix, split into one /24 per node; the zero value means DefaultPodCIDR.
	PodCIDR netip.Prefix
}

// Allocation is what a node index gives.
type Allocation struct {
	// Index is the node's index.
	Index int
	// IP is the node's address on the bridge.
	IP netip.Addr
	// PodCIDR is the node's pod prefix (the kubelet's podCIDR).
	PodCIDR netip.Prefix
}

// Node is a node's network.
type Node struct {
	Allocation
	// Name is the node's name.
	Name string
	// Netns is the path of the node's network namespace.
	Netns string
	// HostVeth is the name of the host's end of the node's veth pair.
	HostVeth string
}

// Network is a cluster's network.
type Network struct {
	cfg    Config
	bridge string
	gw     netip.Addr
}

// New validates cfg and returns the network it describes. It changes nothing on the machine.
func New(cfg Config) (*Network, error) {
	if !nameRE.MatchString(cfg.Cluster) {
		return nil, fmt.Errorf("cluster name %q: must be a DNS label (lower-case letters, digits and '-', at most 63)", cfg.Cluster)
	}
	if !cfg.ServiceCIDR.IsValid() {
		cfg.ServiceCIDR = netip.MustParsePrefix(DefaultServiceCIDR)
	}
	if !cfg.PodCIDR.IsValid() {
		cfg.PodCIDR = netip.MustParsePrefix(DefaultPodCIDR)
	}
	named := []struct {
		name string
		p    netip.Prefix
		max  int
	}{{"bridge", cfg.BridgeCIDR, 30}, {"service", cfg.ServiceCIDR, 30}, {"pod", cfg.PodCIDR, podPrefixLen}}
	for _, n := range named {
		switch {
		case !n.p.IsValid():
			return nil, fmt.Errorf("%s prefix: missing", n.name)
		case !n.p.Addr().Is4():
			return nil, fmt.Errorf("%s prefix %s: must be IPv4", n.name, n.p)
		case n.p.Masked() != n.p:
			return nil, fmt.Errorf("%s prefix %s: host bits set, did you mean %s?", n.name, n.p, n.p.Masked())
		case n.p.Bits() > n.max:
			return nil, fmt.Errorf("%s prefix %s: must be /%d or larger", n.name, n.p, n.max)
		}
	}
	for i, a := range named {
		for _, b := range named[i+1:] {
			if a.p.Overlaps(b.p) {
				return nil, fmt.Errorf("the %s prefix %s overlaps the %s prefix %s", a.name, a.p, b.name, b.p)
			}
		}
	}
	return &Network{cfg: cfg, bridge: BridgeName(cfg.Cluster), gw: providerinfo.BridgeAddr(cfg.BridgeCIDR)}, nil
}

// Config returns the network's configuration, defaults filled in.
func (n *Network) Config() Config { return n.cfg }

// BridgeName returns the name of a cluster's bridge: "cbr" and a hash of the cluster's name, 13
// characters (interface names have at most 15).
func BridgeName(cluster string) string {
	return "cbr" + shortHash(cluster)
}

// hostVethName returns the name of the host's end of a node's veth pair: "cv" and a hash, 12 characters.
func hostVethName(cluster, node string) string {
	return "cv" + shortHash(cluster+"/"+node)
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:5])
}

// NetnsPath returns the path of a node's network namespace.
func NetnsPath(cluster, node string) string {
	return filepath.Join(NetnsDir, netnsPrefix+cluster+"_"+node)
}

// BridgeName returns the name of the cluster's bridge.
func (n *Network) BridgeName() string { return n.bridge }

// BridgeAddr returns the bridge's address, the first host of the bridge prefix: the host's address as the
// nodes see it (the metadata API listens there).
func (n *Network) BridgeAddr() netip.Addr { return n.gw }

// MaxNodes is how many nodes the bridge prefix has addresses for.
func (n *Network) MaxNodes() int {
	hosts := 1<<(32-n.cfg.BridgeCIDR.Bits()) - 2 // without network and broadcast addresses
	pods := 1 << (podPrefixLen - n.cfg.PodCIDR.Bits())
	return min(hosts-1, pods) // the bridge takes one
}

// Allocate returns node index's address and pod prefix.
func (n *Network) Allocate(index int) (Allocation, error) {
	if index < 0 || index >= n.MaxNodes() {
		return Allocation{}, fmt.Errorf("node index %d: the bridge prefix %s and pod prefix %s have room for indices 0 to %d",
			index, n.cfg.BridgeCIDR, n.cfg.PodCIDR, n.MaxNodes()-1)
	}
	ip := addIPv4(n.cfg.BridgeCIDR.Addr(), uint32(index)+2)
	pod := netip.PrefixFrom(addIPv4(n.cfg.PodCIDR.Addr(), uint32(index)<<(32-podPrefixLen)), podPrefixLen)
	return Allocation{Index: index, IP: ip, PodCIDR: pod}, nil
}

// IndexOf is the inverse of Allocate for an address: the index of the node at ip.
func (n *Network) IndexOf(ip netip.Addr) (int, bool) {
	if !ip.Is4() || !n.cfg.BridgeCIDR.Contains(ip) {
		return 0, false
	}
	idx := int(ipv4Uint(ip)-ipv4Uint(n.cfg.BridgeCIDR.Addr())) - 2
	if idx < 0 || idx >= n.MaxNodes() {
		return 0, false
	}
	return idx, true
}

func ipv4Uint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addIPv4(a netip.Addr, off uint32) netip.Addr {
	v := ipv4Uint(a) + off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

func bridgeAlias(cluster string) string { return aliasPrefix + "cluster=" + cluster }

func vethAlias(cluster, node string) string {
	return aliasPrefix + "cluster=" + cluster + " node=" + node
}
