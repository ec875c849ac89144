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
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
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
	return &Network{cfg: cfg, bridge: BridgeName(cfg.Cluster), gw: cfg.BridgeCIDR.Addr().Next()}, nil
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

// indexOf is the inverse of Allocate for an address.
func (n *Network) indexOf(ip netip.Addr) (int, bool) {
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

// Create creates the bridge, or completes and checks an existing one. It refuses a bridge prefix that
// overlaps an address or route the machine has (ErrConflict), and a link of the bridge's name that is not
// this cluster's bridge.
func (n *Network) Create() error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(n.bridge)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("looking up bridge %s: %w", n.bridge, err)
	}
	if link == nil {
		if err := n.checkConflicts(h); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("creating bridge %s: %w", n.bridge, err)
		}
		if link, err = h.LinkByName(n.bridge); err != nil {
			return fmt.Errorf("looking up the new bridge %s: %w", n.bridge, err)
		}
		if err := h.LinkSetAlias(link, bridgeAlias(n.cfg.Cluster)); err != nil {
			return fmt.Errorf("naming bridge %s: %w", n.bridge, err)
		}
	} else if err := n.checkOwnBridge(link); err != nil {
		return err
	}
	// No IPv6 (not even link-local addresses), and no forwarding of what arrives on the bridge.
	if err := writeSysctl("net/ipv6/conf/"+n.bridge+"/disable_ipv6", "1"); err != nil {
		return err
	}
	if err := writeSysctl("net/ipv4/conf/"+n.bridge+"/forwarding", "0"); err != nil {
		return err
	}
	// Strict reverse-path filtering: the host drops what arrives on the bridge from a source it would not
	// route back over the bridge (a pod address that no node masqueraded), instead of answering it through
	// its default route, off the machine.
	if err := writeSysctl("net/ipv4/conf/"+n.bridge+"/rp_filter", "1"); err != nil {
		return err
	}
	want := netip.PrefixFrom(n.gw, n.cfg.BridgeCIDR.Bits())
	if err := setOnlyAddr(h, link, want); err != nil {
		return fmt.Errorf("addressing bridge %s: %w", n.bridge, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing bridge %s up: %w", n.bridge, err)
	}
	return nil
}

// checkOwnBridge refuses a link of the bridge's name that this package did not create for this cluster.
func (n *Network) checkOwnBridge(link netlink.Link) error {
	if link.Type() != "bridge" || link.Attrs().Alias != bridgeAlias(n.cfg.Cluster) {
		return fmt.Errorf("a %s link named %s (alias %q) exists but is not cluster %s's bridge: remove it or rename the cluster",
			link.Type(), n.bridge, link.Attrs().Alias, n.cfg.Cluster)
	}
	return nil
}

// checkConflicts refuses a bridge prefix that overlaps an address or a route (other than a default route)
// of the host's namespace: nodes would shadow or be shadowed by a network the machine uses.
func (n *Network) checkConflicts(h *netlink.Handle) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("listing the host's addresses: %w", err)
	}
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p.Overlaps(n.cfg.BridgeCIDR) {
			return fmt.Errorf("%w: the bridge prefix %s overlaps the address %s of link %d; choose another local.bridgeCIDR",
				ErrConflict, n.cfg.BridgeCIDR, p, a.LinkIndex)
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("listing the host's routes: %w", err)
	}
	for _, r := range routes {
		p, ok := prefixOf(r.Dst)
		if !ok || p.Bits() == 0 {
			continue // default routes overlap everything and are fine: the bridge's route is more specific
		}
		if p.Overlaps(n.cfg.BridgeCIDR) {
			return fmt.Errorf("%w: the bridge prefix %s overlaps the route to %s (table %d); choose another local.bridgeCIDR",
				ErrConflict, n.cfg.BridgeCIDR, p, r.Table)
		}
	}
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// setOnlyAddr gives link exactly the IPv4 address want.
func setOnlyAddr(h *netlink.Handle, link netlink.Link, want netip.Prefix) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return err
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if ip.Unmap() == want.Addr() && ones == want.Bits() {
			return nil
		}
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("removing address %s: %w", a.IPNet, err)
		}
	}
	return h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}})
}

// AddNode creates node name's network namespace and veth pair with index's allocation, or completes an
// existing one, and updates every node's routes to the others' pod prefixes. It creates the bridge if it
// is missing.
func (n *Network) AddNode(name string, index int) (*Node, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("node name %q: must be a DNS label (lower-case letters, digits and '-', at most 63)", name)
	}
	alloc, err := n.Allocate(index)
	if err != nil {
		return nil, err
	}
	nodes, err := n.Nodes()
	if err != nil {
		return nil, err
	}
	for _, o := range nodes {
		if o.Name != name && o.Index == index {
			return nil, fmt.Errorf("node %s: index %d (%s) is taken by node %s", name, index, alloc.IP, o.Name)
		}
	}
	if err := n.Create(); err != nil {
		return nil, err
	}
	node := &Node{Allocation: alloc, Name: name, Netns: NetnsPath(n.cfg.Cluster, name), HostVeth: hostVethName(n.cfg.Cluster, name)}
	if err := n.setUpNode(node); err != nil {
		return nil, fmt.Errorf("setting up the network of node %s: %w", name, err)
	}
	if err := n.syncRoutes(); err != nil {
		return nil, err
	}
	return node, nil
}

func (n *Network) setUpNode(node *Node) error {
	ns, err := ensureNetns(node.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	// Before eth0 exists, so that it never gets an IPv6 address.
	if err := inNetns(ns, nodeSysctls); err != nil {
		return err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("opening netlink in %s: %w", node.Netns, err)
	}
	defer nh.Close()
	br, err := h.LinkByName(n.bridge)
	if err != nil {
		return fmt.Errorf("looking up bridge %s: %w", n.bridge, err)
	}

	// The veth pair: a host end without its peer in the namespace is left over from an interrupted run.
	host, err := h.LinkByName(node.HostVeth)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("looking up %s: %w", node.HostVeth, err)
	}
	peer, err := nh.LinkByName(NodeInterface)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("looking up %s in %s: %w", NodeInterface, node.Netns, err)
	}
	if host != nil && (host.Type() != "veth" || host.Attrs().Alias != vethAlias(n.cfg.Cluster, node.Name)) {
		return fmt.Errorf("a %s link named %s (alias %q) exists but is not node %s's veth: remove it",
			host.Type(), node.HostVeth, host.Attrs().Alias, node.Name)
	}
	if host == nil || peer == nil {
		if host != nil {
			if err := h.LinkDel(host); err != nil {
				return fmt.Errorf("removing the incomplete veth %s: %w", node.HostVeth, err)
			}
		}
		if peer != nil {
			if err := nh.LinkDel(peer); err != nil {
				return fmt.Errorf("removing the incomplete %s in %s: %w", NodeInterface, node.Netns, err)
			}
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: node.HostVeth},
			PeerName:      NodeInterface,
			PeerNamespace: netlink.NsFd(int(ns)),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s: %w", node.HostVeth, err)
		}
		if host, err = h.LinkByName(node.HostVeth); err != nil {
			return fmt.Errorf("looking up the new veth %s: %w", node.HostVeth, err)
		}
		if err := h.LinkSetAlias(host, vethAlias(n.cfg.Cluster, node.Name)); err != nil {
			return fmt.Errorf("naming veth %s: %w", node.HostVeth, err)
		}
		if peer, err = nh.LinkByName(NodeInterface); err != nil {
			return fmt.Errorf("looking up %s in %s: %w", NodeInterface, node.Netns, err)
		}
	}
	if err := writeSysctl("net/ipv6/conf/"+node.HostVeth+"/disable_ipv6", "1"); err != nil {
		return err
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMaster(host, br); err != nil {
			return fmt.Errorf("attaching %s to %s: %w", node.HostVeth, n.bridge, err)
		}
	}
	if err := h.LinkSetUp(host); err != nil {
		return fmt.Errorf("bringing %s up: %w", node.HostVeth, err)
	}

	// Inside: lo, eth0 with the node's address, the service route.
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("looking up lo in %s: %w", node.Netns, err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing lo up in %s: %w", node.Netns, err)
	}
	if err := setOnlyAddr(nh, peer, netip.PrefixFrom(node.IP, n.cfg.BridgeCIDR.Bits())); err != nil {
		return fmt.Errorf("addressing %s in %s: %w", NodeInterface, node.Netns, err)
	}
	if err := nh.LinkSetUp(peer); err != nil {
		return fmt.Errorf("bringing %s up in %s: %w", NodeInterface, node.Netns, err)
	}
	svc := &netlink.Route{LinkIndex: peer.Attrs().Index, Dst: ipNet(n.cfg.ServiceCIDR), Scope: netlink.SCOPE_LINK, Protocol: unix.RTPROT_STATIC}
	if err := nh.RouteReplace(svc); err != nil {
		return fmt.Errorf("adding the service route in %s: %w", node.Netns, err)
	}
	return nil
}

// nodeSysctls configures the calling thread's network namespace: a node's.
func nodeSysctls() error {
	for _, s := range []struct{ key, value string }{
		{"net/ipv6/conf/all/disable_ipv6", "1"},
		{"net/ipv6/conf/default/disable_ipv6", "1"},
		{"net/ipv4/ip_forward", "1"},
	} {
		if err := writeSysctl(s.key, s.value); err != nil {
			return err
		}
	}
	// Only with br_netfilter loaded; kubeadm's preflight loads it or fails on its own.
	if err := writeSysctl("net/bridge/bridge-nf-call-iptables", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// syncRoutes gives every node of the cluster a route to each other node's pod prefix via that node's
// address, and removes routes to pod prefixes of nodes that are gone.
func (n *Network) syncRoutes() error {
	nodes, err := n.Nodes()
	if err != nil {
		return err
	}
	for _, node := range nodes {
		if err := n.syncNodeRoutes(node, nodes); err != nil {
			return fmt.Errorf("updating the routes of node %s: %w", node.Name, err)
		}
	}
	return nil
}

func (n *Network) syncNodeRoutes(node Node, nodes []Node) error {
	ns, err := netns.GetFromPath(node.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer nh.Close()
	eth, err := nh.LinkByName(NodeInterface)
	if err != nil {
		return err
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, o := range nodes {
		if o.Name != node.Name {
			want[o.PodCIDR] = o.IP
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return nh.RouteList(eth, netlink.FAMILY_V4) })
	if err != nil {
		return err
	}
	for _, r := range routes {
		dst, ok := prefixOf(r.Dst)
		if !ok || r.Gw == nil || !n.cfg.PodCIDR.Contains(dst.Addr()) {
			continue // not a pod route of ours (the CNI's own routes have no gateway)
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if want[dst] == gw.Unmap() {
			delete(want, dst)
			continue
		}
		if err := nh.RouteDel(&r); err != nil {
			return fmt.Errorf("removing the route to %s: %w", dst, err)
		}
	}
	for dst, gw := range want {
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(dst), Gw: gw.AsSlice(), Protocol: unix.RTPROT_STATIC}
		if err := nh.RouteReplace(r); err != nil {
			return fmt.Errorf("adding the route to %s via %s: %w", dst, gw, err)
		}
	}
	return nil
}

// Nodes returns the cluster's nodes, discovered from their namespaces, ordered by index. A namespace whose
// eth0 has no address of the bridge prefix (an interrupted AddNode) is left out.
func (n *Network) Nodes() ([]Node, error) {
	names, err := n.netnsNames()
	if err != nil {
		return nil, err
	}
	var nodes []Node
	for _, name := range names {
		node := Node{Name: name, Netns: NetnsPath(n.cfg.Cluster, name), HostVeth: hostVethName(n.cfg.Cluster, name)}
		ip, err := nodeAddr(node.Netns, n.cfg.BridgeCIDR)
		if err != nil {
			return nil, fmt.Errorf("reading the address of node %s: %w", name, err)
		}
		idx, ok := n.indexOf(ip)
		if !ok {
			continue
		}
		if node.Allocation, err = n.Allocate(idx); err != nil {
			return nil, err
		}
		nodes = append(nodes, node)
	}
	slices.SortFunc(nodes, func(a, b Node) int { return a.Index - b.Index })
	return nodes, nil
}

// Node returns the node called name, or an error wrapping os.ErrNotExist.
func (n *Network) Node(name string) (*Node, error) {
	nodes, err := n.Nodes()
	if err != nil {
		return nil, err
	}
	for _, node := range nodes {
		if node.Name == name {
			return &node, nil
		}
	}
	return nil, fmt.Errorf("node %s of cluster %s: %w", name, n.cfg.Cluster, os.ErrNotExist)
}

// netnsNames lists the names of the cluster's nodes that have a namespace.
func (n *Network) netnsNames() ([]string, error) {
	entries, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	prefix := netnsPrefix + n.cfg.Cluster + "_"
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutPrefix(e.Name(), prefix); ok && nameRE.MatchString(name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// nodeAddr returns eth0's address in within the namespace at path (the zero Addr if it has none).
func nodeAddr(path string, within netip.Prefix) (netip.Addr, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return netip.Addr{}, err
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return netip.Addr{}, err
	}
	defer nh.Close()
	eth, err := nh.LinkByName(NodeInterface)
	if isNotFound(err) {
		return netip.Addr{}, nil
	}
	if err != nil {
		return netip.Addr{}, err
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return nh.AddrList(eth, netlink.FAMILY_V4) })
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && within.Contains(ip.Unmap()) {
			return ip.Unmap(), nil
		}
	}
	return netip.Addr{}, nil
}

// RemoveNode deletes node name's veth pair and namespace and the other nodes' routes to its pod prefix.
// The namespace itself disappears once no process is in it any more: stop the node first. Removing a node
// that does not exist is not an error.
func (n *Network) RemoveNode(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("node name %q: must be a DNS label", name)
	}
	if err := n.removeNode(name); err != nil {
		return err
	}
	return n.syncRoutes()
}

func (n *Network) removeNode(name string) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	veth := hostVethName(n.cfg.Cluster, name)
	link, err := h.LinkByName(veth)
	switch {
	case err == nil && link.Attrs().Alias == vethAlias(n.cfg.Cluster, name):
		if err := h.LinkDel(link); err != nil { // deletes the peer too
			return fmt.Errorf("removing veth %s of node %s: %w", veth, name, err)
		}
	case err != nil && !isNotFound(err):
		return fmt.Errorf("looking up veth %s: %w", veth, err)
	}
	return removeNetns(NetnsPath(n.cfg.Cluster, name))
}

// Destroy removes every node's network and the bridge. Nodes must be stopped first.
func (n *Network) Destroy() error {
	names, err := n.netnsNames()
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		errs = append(errs, n.removeNode(name))
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(n.bridge)
	switch {
	case err == nil:
		if err := n.checkOwnBridge(link); err != nil {
			errs = append(errs, err)
		} else if err := h.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("removing bridge %s: %w", n.bridge, err))
		}
	case !isNotFound(err):
		errs = append(errs, fmt.Errorf("looking up bridge %s: %w", n.bridge, err))
	}
	// Leave no empty /run/netns behind (it stays if anyone else has namespaces there).
	_ = os.Remove(NetnsDir)
	return errors.Join(errs...)
}

// Remains lists what of cluster's network exists: links whose alias names the cluster (the bridge, host
// veth ends), namespace files, and namespace mounts in this process's mount namespace. After Destroy it
// must be empty.
func Remains(cluster string) ([]string, error) {
	var out []string
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Alias == bridgeAlias(cluster) || strings.HasPrefix(a.Alias, bridgeAlias(cluster)+" ") || a.Name == BridgeName(cluster) {
			out = append(out, fmt.Sprintf("link %s (%s, alias %q)", a.Name, l.Type(), a.Alias))
		}
	}
	prefix := netnsPrefix + cluster + "_"
	if entries, err := os.ReadDir(NetnsDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix) {
				out = append(out, "namespace file "+filepath.Join(NetnsDir, e.Name()))
			}
		}
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(mountinfo)) {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], filepath.Join(NetnsDir, prefix)) {
			out = append(out, "mount "+f[4])
		}
	}
	return out, nil
}

// Do runs fn on a thread in the node's network namespace: sockets fn opens belong to the node's network
// (e.g. to connect to another node, or to the metadata API, as the node would).
func (node *Node) Do(fn func() error) error {
	ns, err := netns.GetFromPath(node.Netns)
	if err != nil {
		return fmt.Errorf("opening the network namespace of node %s: %w", node.Name, err)
	}
	defer ns.Close()
	return inNetns(ns, fn)
}

// DialContext connects to addr (an IP address and port: resolving a name could happen on another thread)
// from inside the node's network namespace, as the node would; the connection may then be used from any
// goroutine. It lets the host reach nodes only through the routes the nodes have.
func (node *Node) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := node.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// inNetns runs fn on a locked OS thread that has joined ns. The thread returns to the original namespace
// afterwards or, if that fails, stays locked and ends with the goroutine (the main thread is parked
// instead), so no other goroutine ever runs in ns.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("opening the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("entering the network namespace: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// ensureNetns opens the namespace bind-mounted at path, creating it if missing.
func ensureNetns(path string) (netns.NsHandle, error) {
	if ns, err := netns.GetFromPath(path); err == nil {
		var st unix.Statfs_t
		if unix.Fstatfs(int(ns), &st) == nil && st.Type == unix.NSFS_MAGIC {
			return ns, nil
		}
		ns.Close() // a file that is not a namespace: a stale mount point
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return 0, fmt.Errorf("creating %s: %w", NetnsDir, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return 0, fmt.Errorf("creating %s: %w", path, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// This thread gets the new namespace, then returns to its own. If that fails it stays locked and
		// ends with the goroutine (or, if it is the main thread, is parked for good).
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("opening the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("creating a network namespace: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		err = unix.Mount(self, path, "", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind-mounting the network namespace at %s: %w", path, err)
		}
		errc <- err
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return 0, err
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return 0, fmt.Errorf("opening the network namespace at %s: %w", path, err)
	}
	return ns, nil
}

// removeNetns unmounts and removes a namespace's bind mount.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// writeSysctl writes a sysctl of the calling thread's network namespace (key relative to /proc/sys).
func writeSysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// retryDump retries a netlink dump that the kernel interrupted because the list changed meanwhile.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		if out, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}
