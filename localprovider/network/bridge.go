package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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
