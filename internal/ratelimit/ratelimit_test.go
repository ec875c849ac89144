package ratelimit

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clock is a fake time source the tests advance by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newLimited(perSecond float64, burst int) (*PerSource, *clock) {
	c := &clock{t: time.Date(2026, time.December, 4, 0, 0, 0, 0, time.UTC)}
	p := New(perSecond, burst)
	p.now = c.now
	return p, c
}

func TestAllow(t *testing.T) {
	type step struct {
		source  string
		advance time.Duration
		want    bool
	}
	testCases := map[string]struct {
		steps      []step
		maxSources int
	}{
		"a burst, then refused": {
			steps: []step{{"a", 0, true}, {"a", 0, true}, {"a", 0, true}, {"a", 0, false}},
		},
		"refilled at the rate": {
			steps: []step{{"a", 0, true}, {"a", 0, true}, {"a", 0, true}, {"a", 0, false}, {"a", 500 * time.Millisecond, true}, {"a", 0, false}},
		},
		"sources are independent": {
			steps: []step{{"a", 0, true}, {"a", 0, true}, {"a", 0, true}, {"a", 0, false}, {"b", 0, true}, {"a", 0, false}},
		},
		"a full table forgets the least recently seen source": {
			maxSources: 2,
			steps: []step{
				{"a", 0, true}, {"a", 0, true}, {"a", 0, true}, {"a", 0, false},
				{"b", time.Millisecond, true}, {"c", time.Millisecond, true}, // evicts a
				{"a", 0, true}, // a starts over with a full bucket
				{"c", 0, true}, // c (recently seen) was kept: its second event
			},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			p, c := newLimited(2, 3)
			if tc.maxSources > 0 {
				p.maxSources = tc.maxSources
			}
			for i, s := range tc.steps {
				c.t = c.t.Add(s.advance)
				assert.Equal(t, s.want, p.Allow(s.source), "step %d (%s)", i, s.source)
			}
			assert.LessOrEqual(t, len(p.buckets), p.maxSources)
		})
	}
}

func TestSource(t *testing.T) {
	assert.Equal(t, "10.42.0.3", Source(&net.TCPAddr{IP: net.IPv4(10, 42, 0, 3), Port: 4711}))
	assert.Equal(t, "::1", Source(&net.TCPAddr{IP: net.IPv6loopback, Port: 1}))
	assert.Equal(t, "bufconn", Source(bufconnAddr{}))
	assert.Equal(t, "", Source(nil))
}

type bufconnAddr struct{}

func (bufconnAddr) Network() string { return "bufconn" }
func (bufconnAddr) String() string  { return "bufconn" }

func TestUnaryServerInterceptor(t *testing.T) {
	p, _ := newLimited(1, 2)
	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer(grpc.UnaryInterceptor(p.UnaryServerInterceptor()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx := context.Background()

	// Many calls over one connection are limited, too.
	for range 2 {
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
	}
	_, err = client.Check(ctx, &healthpb.HealthCheckRequest{})
	assert.Equal(t, codes.ResourceExhausted, status.Code(err))
	assert.ErrorContains(t, err, "rate limit exceeded for bufconn: retry in 2s")
}

func TestHandler(t *testing.T) {
	p, _ := newLimited(1, 1)
	h := p.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "quote") }))
	do := func(remote string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	assert.Equal(t, http.StatusOK, do("10.0.0.1:1000").Code)
	refused := do("10.0.0.1:1001")
	assert.Equal(t, http.StatusTooManyRequests, refused.Code, "another port of the same host is the same source")
	assert.Equal(t, "2", refused.Header().Get("Retry-After"))
	assert.Equal(t, http.StatusOK, do("10.0.0.2:1000").Code)
}

// The listener closes connections over the limit before the server sees them: a client gets EOF without
// the server doing any work, while the first connections are served.
func TestListener(t *testing.T) {
	p, _ := newLimited(1, 2)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	lis := p.Listener(tcp)
	defer lis.Close()
	served := make(chan struct{}, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			served <- struct{}{}
			_, _ = conn.Write([]byte("hello"))
			_ = conn.Close()
		}
	}()

	read := func() string {
		conn, err := net.Dial("tcp", tcp.Addr().String())
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		data, _ := io.ReadAll(conn)
		return string(data)
	}
	assert.Equal(t, "hello", read())
	assert.Equal(t, "hello", read())
	assert.Equal(t, "", read(), "the third connection is closed unserved")
	assert.Len(t, served, 2)

	require.NoError(t, lis.Close())
	<-done
}
