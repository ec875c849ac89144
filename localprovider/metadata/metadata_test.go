package metadata

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/localprovider/localtest"
	"github.com/constellation-go/constellation/localprovider/network"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	cp0 = Instance{Name: "cp-0", Role: role.ControlPlane, IP: netip.MustParseAddr("10.42.0.2"), PodCIDR: netip.MustParsePrefix("10.244.0.0/24")}
	w0  = Instance{Name: "w-0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.3"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	cp1 = Instance{Name: "cp-1", Role: role.ControlPlane, IP: netip.MustParseAddr("10.42.0.4"), PodCIDR: netip.MustParsePrefix("10.244.2.0/24")}
)

var secretHash = HashInitSecret([]byte("init secret"))

func request(t *testing.T, h http.Handler, method, path, from string) (int, []byte) {
	t.Helper()
	r := httptest.NewRequest(method, path, nil)
	r.RemoteAddr = from
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.Bytes()
}

func TestHandler(t *testing.T) {
	s, err := NewServer(State{Instances: []Instance{w0, cp1, cp0}, InitSecretHash: secretHash}, nil)
	require.NoError(t, err)
	h := s.Handler()
	fromW0 := "10.42.0.3:40000"

	testCases := map[string]struct {
		method, path, from string
		wantCode           int
		want               string
	}{
		"instances": {
			path: PathInstances, from: fromW0, wantCode: 200,
			want: `[{"name":"cp-0","role":"control-plane","ip":"10.42.0.2","podCIDR":"10.244.0.0/24"},` +
				`{"name":"cp-1","role":"control-plane","ip":"10.42.0.4","podCIDR":"10.244.2.0/24"},` +
				`{"name":"w-0","role":"worker","ip":"10.42.0.3","podCIDR":"10.244.1.0/24"}]`,
		},
		"self": {
			path: PathSelf, from: fromW0, wantCode: 200,
			want: `{"name":"w-0","role":"worker","ip":"10.42.0.3","podCIDR":"10.244.1.0/24"}`,
		},
		"self of a control plane": {
			path: PathSelf, from: "10.42.0.2:1", wantCode: 200,
			want: `{"name":"cp-0","role":"control-plane","ip":"10.42.0.2","podCIDR":"10.244.0.0/24"}`,
		},
		"init secret hash": {
			path: PathInitSecretHash, from: fromW0, wantCode: 200,
			want: `{"sha256":"` + hex.EncodeToString(secretHash) + `"}`,
		},
		"endpoints": {
			path: PathEndpoints, from: fromW0, wantCode: 200,
			want: `{"controlPlanes":["10.42.0.2","10.42.0.4"],"kubernetesAPI":"10.42.0.2:6443"}`,
		},
		"IPv4-mapped source": {path: PathSelf, from: "[::ffff:10.42.0.3]:1", wantCode: 200},
		"the host":           {path: PathInstances, from: "10.42.0.1:5000", wantCode: 403, want: `{"error":"10.42.0.1 is not a node of this cluster"}`},
		"another address":    {path: PathInstances, from: "192.0.2.7:5000", wantCode: 403},
		"unparsable source":  {path: PathInstances, from: "somewhere", wantCode: 403},
		"POST":               {method: http.MethodPost, path: PathInstances, from: fromW0, wantCode: 405},
		"unknown path":       {path: "/v2/x", from: fromW0, wantCode: 404},
		"forbidden first":    {path: "/v2/x", from: "10.42.0.9:1", wantCode: 403},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			code, body := request(t, h, method, tc.path, tc.from)
			assert.Equal(t, tc.wantCode, code, "%s", body)
			if tc.want != "" {
				assert.JSONEq(t, tc.want, string(body))
			}
		})
	}
}

func TestUpdate(t *testing.T) {
	s, err := NewServer(State{Instances: []Instance{cp0}}, nil)
	require.NoError(t, err)
	h := s.Handler()
	code, _ := request(t, h, http.MethodGet, PathInitSecretHash, "10.42.0.2:1")
	assert.Equal(t, 404, code, "no hash yet")
	code, _ = request(t, h, http.MethodGet, PathSelf, "10.42.0.3:1")
	assert.Equal(t, 403, code, "w-0 is no node yet")

	require.NoError(t, s.Update(State{Instances: []Instance{cp0, w0}, InitSecretHash: secretHash}))
	code, _ = request(t, h, http.MethodGet, PathSelf, "10.42.0.3:1")
	assert.Equal(t, 200, code)
	code, _ = request(t, h, http.MethodGet, PathInitSecretHash, "10.42.0.3:1")
	assert.Equal(t, 200, code)

	for name, st := range map[string]State{
		"duplicate name":    {Instances: []Instance{cp0, {Name: "cp-0", Role: role.Worker, IP: w0.IP, PodCIDR: w0.PodCIDR}}},
		"duplicate address": {Instances: []Instance{cp0, {Name: "x", Role: role.Worker, IP: cp0.IP, PodCIDR: w0.PodCIDR}}},
		"bad role":          {Instances: []Instance{{Name: "x", Role: "master", IP: w0.IP, PodCIDR: w0.PodCIDR}}},
		"no address":        {Instances: []Instance{{Name: "x", Role: role.Worker, PodCIDR: w0.PodCIDR}}},
		"no pod prefix":     {Instances: []Instance{{Name: "x", Role: role.Worker, IP: w0.IP}}},
		"short hash":        {InitSecretHash: []byte{1, 2}},
	} {
		assert.Error(t, s.Update(st), name)
	}
	code, _ = request(t, h, http.MethodGet, PathSelf, "10.42.0.3:1")
	assert.Equal(t, 200, code, "a refused update changes nothing")
}

func TestEndpointsWithoutControlPlanes(t *testing.T) {
	s, err := NewServer(State{Instances: []Instance{w0}}, nil)
	require.NoError(t, err)
	code, body := request(t, s.Handler(), http.MethodGet, PathEndpoints, "10.42.0.3:1")
	assert.Equal(t, 200, code)
	assert.JSONEq(t, `{"controlPlanes":[],"kubernetesAPI":""}`, string(body))
}

func TestListen(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:9080", "127.0.0.1:9080", "[::]:9080"} {
		_, err := Listen(netip.MustParseAddrPort(addr))
		assert.ErrorContains(t, err, "bridge", addr)
	}
}

// TestClient runs the client against the server over loopback, with 127.0.0.1 as a node's address.
func TestClient(t *testing.T) {
	self := Instance{Name: "cp-0", Role: role.ControlPlane, IP: netip.MustParseAddr("127.0.0.1"), PodCIDR: cp0.PodCIDR}
	s, err := NewServer(State{Instances: []Instance{self, w0}, InitSecretHash: secretHash}, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	c := NewClient(srv.URL+"/", nil)
	ctx := context.Background()

	list, err := c.List(ctx)
	require.NoError(t, err)
	assert.Equal(t, []Instance{self, w0}, list)
	got, err := c.Self(ctx)
	require.NoError(t, err)
	assert.Equal(t, self, got)
	h, err := c.InitSecretHash(ctx)
	require.NoError(t, err)
	assert.Equal(t, secretHash, h)
	ep, err := c.Endpoints(ctx)
	require.NoError(t, err)
	assert.Equal(t, Endpoints{ControlPlanes: []netip.Addr{self.IP}, KubernetesAPI: "127.0.0.1:6443"}, ep)

	require.NoError(t, s.Update(State{Instances: []Instance{w0}}))
	_, err = c.List(ctx)
	assert.ErrorIs(t, err, ErrForbidden)
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Contains(t, apiErr.Message, "127.0.0.1 is not a node")
	c.http.CloseIdleConnections()
}

// TestOnBridge serves the API on a real bridge: nodes get answers from their namespaces, the host is
// refused.
func TestOnBridge(t *testing.T) {
	testenv.NeedRoot(t)
	var n *network.Network
	cluster := localtest.ClusterName(t)
	for range 10 {
		nn, err := network.New(network.Config{Cluster: cluster, BridgeCIDR: localtest.BridgeCIDR(t)})
		require.NoError(t, err)
		if err := nn.Create(); errors.Is(err, network.ErrConflict) {
			continue
		} else {
			require.NoError(t, err)
		}
		n = nn
		break
	}
	require.NotNil(t, n)
	t.Cleanup(func() {
		assert.NoError(t, n.Destroy())
		left, err := network.Remains(cluster)
		assert.NoError(t, err)
		assert.Empty(t, left)
	})
	a, err := n.AddNode("cp-0", 0)
	require.NoError(t, err)
	b, err := n.AddNode("w-0", 1)
	require.NoError(t, err)
	st := State{InitSecretHash: secretHash, Instances: []Instance{
		{Name: a.Name, Role: role.ControlPlane, IP: a.IP, PodCIDR: a.PodCIDR},
		{Name: b.Name, Role: role.Worker, IP: b.IP, PodCIDR: b.PodCIDR},
	}}
	s, err := NewServer(st, nil)
	require.NoError(t, err)
	addr := netip.AddrPortFrom(n.BridgeAddr(), DefaultPort)
	ln, err := Listen(addr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	defer func() {
		cancel()
		assert.NoError(t, <-done)
	}()
	url := "http://" + addr.String()

	// From the worker's namespace.
	transport := &http.Transport{DialContext: b.DialContext}
	defer transport.CloseIdleConnections()
	c := NewClient(url, &http.Client{Transport: transport, Timeout: 5 * time.Second})
	self, err := c.Self(ctx)
	require.NoError(t, err)
	assert.Equal(t, "w-0", self.Name)
	ep, err := c.Endpoints(ctx)
	require.NoError(t, err)
	assert.Equal(t, net.JoinHostPort(a.IP.String(), strconv.Itoa(KubernetesAPIPort)), ep.KubernetesAPI)
	h, err := c.InitSecretHash(ctx)
	require.NoError(t, err)
	assert.Equal(t, secretHash, h)

	// From the host: refused.
	hostTransport := &http.Transport{}
	defer hostTransport.CloseIdleConnections()
	_, err = NewClient(url, &http.Client{Transport: hostTransport, Timeout: 5 * time.Second}).List(ctx)
	assert.ErrorIs(t, err, ErrForbidden)
}
