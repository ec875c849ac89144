package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/remains"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/localprovider/localtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func mustNew(t *testing.T, cfg Config) *Network {
	t.Helper()
	n, err := New(cfg)
	require.NoError(t, err)
	return n
}

func TestNew(t *testing.T) {
	p := netip.MustParsePrefix
	testCases := map[string]struct {
		cfg     Config
		wantErr string
	}{
		"defaults":           {cfg: Config{Cluster: "c1", BridgeCIDR: p("10.42.0.0/24")}},
		"bad cluster name":   {cfg: Config{Cluster: "C_1", BridgeCIDR: p("10.42.0.0/24")}, wantErr: "DNS label"},
		"no bridge prefix":   {cfg: Config{Cluster: "c"}, wantErr: "bridge prefix: missing"},
		"host bits":          {cfg: Config{Cluster: "c", BridgeCIDR: p("10.42.0.1/24")}, wantErr: "did you mean 10.42.0.0/24"},
		"IPv6":               {cfg: Config{Cluster: "c", BridgeCIDR: p("fd00::/64")}, wantErr: "IPv4"},
		"too small":          {cfg: Config{Cluster: "c", BridgeCIDR: p("10.42.0.0/31")}, wantErr: "/30 or larger"},
		"overlaps services":  {cfg: Config{Cluster: "c", BridgeCIDR: p("10.96.0.0/24")}, wantErr: "overlaps the service prefix"},
		"overlaps pods":      {cfg: Config{Cluster: "c", BridgeCIDR: p("10.244.3.0/24")}, wantErr: "overlaps the pod prefix"},
		"pod prefix too big": {cfg: Config{Cluster: "c", BridgeCIDR: p("10.42.0.0/24"), PodCIDR: p("10.244.0.0/25")}, wantErr: "/24 or larger"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			n, err := New(tc.cfg)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, DefaultServiceCIDR, n.Config().ServiceCIDR.String())
			assert.Equal(t, DefaultPodCIDR, n.Config().PodCIDR.String())
		})
	}
}

func TestAllocate(t *testing.T) {
	n := mustNew(t, Config{Cluster: "c", BridgeCIDR: netip.MustParsePrefix("10.42.0.0/24")})
	assert.Equal(t, "10.42.0.1", n.BridgeAddr().String())
	assert.Equal(t, 253, n.MaxNodes())
	for _, tc := range []struct {
		index   int
		ip, pod string
	}{{0, "10.42.0.2", "10.244.0.0/24"}, {1, "10.42.0.3", "10.244.1.0/24"}, {252, "10.42.0.254", "10.244.252.0/24"}} {
		a, err := n.Allocate(tc.index)
		require.NoError(t, err)
		assert.Equal(t, tc.ip, a.IP.String())
		assert.Equal(t, tc.pod, a.PodCIDR.String())
		idx, ok := n.IndexOf(a.IP)
		assert.True(t, ok)
		assert.Equal(t, tc.index, idx)
	}
	for _, bad := range []int{-1, 253} {
		_, err := n.Allocate(bad)
		assert.Error(t, err, bad)
	}
	_, ok := n.IndexOf(netip.MustParseAddr("10.42.0.1"))
	assert.False(t, ok, "the bridge's address is no node's")
	_, ok = n.IndexOf(netip.MustParseAddr("10.42.0.255"))
	assert.False(t, ok, "broadcast")

	small := mustNew(t, Config{Cluster: "c", BridgeCIDR: netip.MustParsePrefix("10.42.0.0/29"), PodCIDR: netip.MustParsePrefix("10.244.0.0/23")})
	assert.Equal(t, 2, small.MaxNodes(), "the pod prefix has room for two /24s")
}

func TestNames(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, name := range []string{BridgeName(long), hostVethName(long, long)} {
		assert.LessOrEqual(t, len(name), 15, name)
	}
	assert.NotEqual(t, BridgeName("a"), BridgeName("b"))
	assert.NotEqual(t, hostVethName("a", "b-c"), hostVethName("a-b", "c"))
	assert.Equal(t, "/run/netns/constellation_c_n", NetnsPath("c", "n"))
}

// newTestNetwork returns a network with a free bridge prefix, destroyed when the test ends.
func newTestNetwork(t *testing.T) *Network {
	t.Helper()
	cluster := localtest.ClusterName(t)
	for range 10 {
		n := mustNew(t, Config{Cluster: cluster, BridgeCIDR: localtest.BridgeCIDR(t)})
		err := n.Create()
		if errors.Is(err, ErrConflict) {
			continue
		}
		require.NoError(t, err)
		t.Cleanup(func() {
			assert.NoError(t, n.Destroy())
			left, err := Remains(cluster)
			assert.NoError(t, err)
			assert.Empty(t, left)
		})
		return n
	}
	t.Fatal("no free bridge prefix found")
	return nil
}

type hostState struct {
	links  []string
	routes []string
}

func snapshotHost(t *testing.T) hostState {
	t.Helper()
	links, err := netlink.LinkList()
	require.NoError(t, err)
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: syscall.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	require.NoError(t, err)
	var s hostState
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	for _, r := range routes {
		s.routes = append(s.routes, r.String())
	}
	slices.Sort(s.links)
	slices.Sort(s.routes)
	return s
}

func added(before, after []string) []string {
	var out []string
	for _, a := range after {
		if !slices.Contains(before, a) {
			out = append(out, a)
		}
	}
	return out
}

func TestNetwork(t *testing.T) {
	testenv.NeedRoot(t)
	before := snapshotHost(t)
	n := newTestNetwork(t)
	require.NoError(t, n.Create(), "Create is idempotent")

	a, err := n.AddNode("a", 0)
	require.NoError(t, err)
	b, err := n.AddNode("b", 1)
	require.NoError(t, err)
	again, err := n.AddNode("a", 0)
	require.NoError(t, err, "AddNode is idempotent")
	assert.Equal(t, a, again)
	_, err = n.AddNode("c", 1)
	assert.ErrorContains(t, err, "taken by node b")

	nodes, err := n.Nodes()
	require.NoError(t, err)
	assert.Equal(t, []Node{*a, *b}, nodes)
	got, err := n.Node("b")
	require.NoError(t, err)
	assert.Equal(t, b, got)
	_, err = n.Node("x")
	assert.ErrorIs(t, err, os.ErrNotExist)

	// The host's namespace gained the bridge, two veth ends and the bridge's connected route, nothing else.
	after := snapshotHost(t)
	newLinks := added(before.links, after.links)
	slices.Sort(newLinks)
	want := []string{n.BridgeName(), a.HostVeth, b.HostVeth}
	slices.Sort(want)
	assert.Equal(t, want, newLinks)
	// In the main table only the connected route; in the local table the kernel's entries for the bridge's
	// address (local and broadcast).
	var mainRoutes []string
	for _, r := range added(before.routes, after.routes) {
		if strings.Contains(r, "Table: 254 ") {
			mainRoutes = append(mainRoutes, r)
		} else {
			assert.Contains(t, r, "Src: "+n.BridgeAddr().String()+" ", "only the bridge address's local routes")
		}
	}
	if assert.Len(t, mainRoutes, 1, mainRoutes) {
		assert.Contains(t, mainRoutes[0], "Dst: "+n.Config().BridgeCIDR.String())
	}
	br, err := netlink.LinkByName(n.BridgeName())
	require.NoError(t, err)
	addrs, err := netlink.AddrList(br, netlink.FAMILY_ALL)
	require.NoError(t, err)
	if assert.Len(t, addrs, 1, "one IPv4 address, no IPv6 link-local one") {
		assert.Equal(t, n.BridgeAddr().String(), addrs[0].IP.String())
	}

	for key, want := range map[string]string{
		"net/ipv4/conf/" + n.BridgeName() + "/rp_filter":    "1",
		"net/ipv4/conf/" + n.BridgeName() + "/forwarding":   "0",
		"net/ipv6/conf/" + n.BridgeName() + "/disable_ipv6": "1",
		"net/ipv6/conf/" + a.HostVeth + "/disable_ipv6":     "1",
	} {
		b, err := os.ReadFile("/proc/sys/" + key)
		require.NoError(t, err)
		assert.Equal(t, want, strings.TrimSpace(string(b)), key)
	}

	// A node's routes: connected, services on-link, the other node's pods via it; no default route.
	assert.ElementsMatch(t, []string{
		n.Config().BridgeCIDR.String() + " dev",
		DefaultServiceCIDR + " dev",
		b.PodCIDR.String() + " via " + b.IP.String(),
	}, nodeRoutes(t, a))
	assert.ElementsMatch(t, []string{
		n.Config().BridgeCIDR.String() + " dev",
		DefaultServiceCIDR + " dev",
		a.PodCIDR.String() + " via " + a.IP.String(),
	}, nodeRoutes(t, b))
	require.NoError(t, a.Do(func() error {
		for key, want := range map[string]string{
			"net/ipv4/ip_forward":            "1",
			"net/ipv6/conf/all/disable_ipv6": "1",
		} {
			b, err := os.ReadFile("/proc/sys/" + key)
			require.NoError(t, err)
			assert.Equal(t, want, strings.TrimSpace(string(b)), key)
		}
		return nil
	}))

	// The nodes reach each other and the bridge; nothing else is routable (the kernel refuses before a
	// packet exists).
	assert.NoError(t, localtest.Ping(a.Do, b.IP))
	assert.NoError(t, localtest.Ping(b.Do, a.IP))
	assert.NoError(t, localtest.Ping(a.Do, n.BridgeAddr()))
	assertTCP(t, a, b)
	assertUnroutable(t, a, netip.MustParseAddr("203.0.113.1"))

	// Removing b removes a's route to b's pods.
	bNS := netnsInode(t, b)
	require.NoError(t, n.RemoveNode("b"))
	require.NoError(t, n.RemoveNode("b"), "removing a removed node is fine")
	assert.ElementsMatch(t, []string{n.Config().BridgeCIDR.String() + " dev", DefaultServiceCIDR + " dev"}, nodeRoutes(t, a))
	_, err = netlink.LinkByName(b.HostVeth)
	assert.Error(t, err)
	assert.Empty(t, remains.ProcessesWith(bNS), "nothing holds b's namespace")

	// A second cluster on the same prefix is refused.
	other := mustNew(t, Config{Cluster: localtest.ClusterName(t), BridgeCIDR: n.Config().BridgeCIDR})
	assert.ErrorIs(t, other.Create(), ErrConflict)

	aNS := netnsInode(t, a)
	require.NoError(t, n.Destroy())
	left, err := Remains(n.Config().Cluster)
	require.NoError(t, err)
	assert.Empty(t, left)
	assert.Equal(t, before, snapshotHost(t), "the host's links and routes are as before")
	assert.Empty(t, remains.ProcessesWith(aNS))
}

// TestAddNodeRepairs: AddNode completes a node whose veth pair is gone (e.g. deleted by hand).
func TestAddNodeRepairs(t *testing.T) {
	testenv.NeedRoot(t)
	n := newTestNetwork(t)
	a, err := n.AddNode("a", 0)
	require.NoError(t, err)
	host, err := netlink.LinkByName(a.HostVeth)
	require.NoError(t, err)
	require.NoError(t, netlink.LinkDel(host))
	_, err = n.AddNode("a", 0)
	require.NoError(t, err)
	assert.NoError(t, localtest.Ping(a.Do, n.BridgeAddr()))
}

// assertUnroutable checks, by asking the kernel's routing table (no packet is sent), that node has no
// route to dst.
func assertUnroutable(t *testing.T, node *Node, dst netip.Addr) {
	t.Helper()
	ns, err := netns.GetFromPath(node.Netns)
	require.NoError(t, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	require.NoError(t, err)
	defer h.Close()
	_, err = h.RouteGet(dst.AsSlice())
	assert.ErrorIs(t, err, syscall.ENETUNREACH, "node %s must have no route to %s", node.Name, dst)
}

func netnsInode(t *testing.T, node *Node) string {
	t.Helper()
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(node.Netns, &st))
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// nodeRoutes returns a node's IPv4 routes as "dst dev" or "dst via gw".
func nodeRoutes(t *testing.T, node *Node) []string {
	t.Helper()
	ns, err := netns.GetFromPath(node.Netns)
	require.NoError(t, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	require.NoError(t, err)
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	require.NoError(t, err)
	var out []string
	for _, r := range routes {
		dst := "default"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		if r.Gw != nil {
			out = append(out, dst+" via "+r.Gw.String())
		} else {
			out = append(out, dst+" dev")
		}
	}
	return out
}

// assertTCP connects from a to a listener in b.
func assertTCP(t *testing.T, a, b *Node) {
	t.Helper()
	var ln net.Listener
	require.NoError(t, b.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(b.IP.String(), "0"))
		return err
	}))
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = c.Write([]byte("hello"))
			c.Close()
		}
		done <- err
	}()
	require.NoError(t, a.Do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 5)
		_, err = c.Read(buf)
		assert.Equal(t, "hello", string(buf))
		return err
	}))
	require.NoError(t, <-done)
}
