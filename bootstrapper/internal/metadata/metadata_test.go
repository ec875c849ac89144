package metadata

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/role"
	localmetadata "github.com/constellation-go/constellation/localprovider/metadata"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseRole(t *testing.T) {
	for _, ok := range []string{"control-plane", "worker"} {
		r, err := role.Parse(ok)
		require.NoError(t, err)
		assert.Equal(t, ok, string(r))
	}
	_, err := role.Parse("master")
	require.Error(t, err)
}

func TestValidate(t *testing.T) {
	good := Instance{Name: "w0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.3")}
	require.NoError(t, good.Validate())
	for name, in := range map[string]Instance{
		"no name": {Role: role.Worker, IP: good.IP},
		"no role": {Name: "w0", IP: good.IP},
		"no IP":   {Name: "w0", Role: role.Worker},
	} {
		assert.Error(t, in.Validate(), name)
	}
}

// TestLocal runs the local provider's real metadata server; the test's requests come from 127.0.0.1, which
// is "this node".
func TestLocal(t *testing.T) {
	secret := bytes.Repeat([]byte{1}, 32)
	srv, err := localmetadata.NewServer(localmetadata.State{
		Instances: []localmetadata.Instance{
			{Name: "cp0", Role: role.ControlPlane, IP: netip.MustParseAddr("10.42.0.2"), PodCIDR: netip.MustParsePrefix("10.244.0.0/24")},
			{Name: "w0", Role: role.Worker, IP: netip.MustParseAddr("127.0.0.1"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")},
		},
		InitSecretHash: localmetadata.HashInitSecret(secret),
	}, nil)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := &http.Server{Handler: srv.Handler()}
	go func() { _ = hs.Serve(lis) }()
	t.Cleanup(func() { _ = hs.Close() })

	ctx := context.Background()
	l := Local{Client: localmetadata.NewClient("http://"+lis.Addr().String(), nil)}
	self, err := l.Self(ctx)
	require.NoError(t, err)
	assert.Equal(t, Instance{Name: "w0", Role: role.Worker, IP: netip.MustParseAddr("127.0.0.1"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}, self)
	list, err := l.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, role.ControlPlane, list[0].Role)
	for _, in := range list {
		require.NoError(t, in.Validate())
	}
	hash, err := l.InitSecretHash(ctx)
	require.NoError(t, err)
	assert.Equal(t, localmetadata.HashInitSecret(secret), hash)

	overridden, err := New(Config{
		Provider: cloudprovider.Local, URL: "http://" + lis.Addr().String(),
		Name: "worker-0", IP: "10.42.0.3", PodCIDR: "10.244.7.0/24",
	})
	require.NoError(t, err)
	self, err = overridden.Self(ctx)
	require.NoError(t, err)
	assert.Equal(t, Instance{Name: "worker-0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.3"), PodCIDR: netip.MustParsePrefix("10.244.7.0/24")}, self)

	_ = hs.Close()
	_, err = l.Self(ctx)
	require.Error(t, err)
	_, err = l.List(ctx)
	require.Error(t, err)
	_, err = l.InitSecretHash(ctx)
	require.Error(t, err)
}

func TestNewRefuses(t *testing.T) {
	tests := map[string]struct {
		cfg     Config
		wantErr []string
	}{
		"a provider without a client": {cfg: Config{Provider: cloudprovider.AWS, URL: "http://x"}, wantErr: []string{`no metadata client for provider "aws"`}},
		"no provider":                 {cfg: Config{URL: "http://x"}, wantErr: []string{"no metadata client"}},
		"local without a URL":         {cfg: Config{Provider: cloudprovider.Local}, wantErr: []string{"URL is required"}},
		"bad overrides": {
			cfg:     Config{Provider: cloudprovider.Local, URL: "http://x", IP: "not-an-ip", PodCIDR: "10.244.0.0"},
			wantErr: []string{"node IP", "pod CIDR"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := New(tc.cfg)
			for _, want := range tc.wantErr {
				assert.ErrorContains(t, err, want)
			}
		})
	}
}

// flakySelf answers with errors, then an invalid instance, then a valid one.
type flakySelf struct {
	Client
	calls int
}

func (f *flakySelf) Self(context.Context) (Instance, error) {
	f.calls++
	switch f.calls {
	case 1:
		return Instance{}, errors.New("metadata API not up yet")
	case 2:
		return Instance{Name: "w0"}, nil
	}
	return Instance{Name: "w0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.3")}, nil
}

func TestWaitForSelf(t *testing.T) {
	f := &flakySelf{}
	self, err := WaitForSelf(context.Background(), f, time.Millisecond, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	assert.Equal(t, "w0", self.Name)
	assert.Equal(t, 3, f.calls, "retried past an error and an invalid instance")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = WaitForSelf(ctx, &flakySelf{}, time.Hour, slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, context.Canceled)
}
