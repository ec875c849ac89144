package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

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
		idx, ok := n.IndexOf(ip)
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
