// Package ratelimit limits how often each source (a peer's IP address) may use an endpoint whose every use
// costs the node real work: a TPM quote for each aTLS handshake of the JoinService and for each
// VerificationService answer. Without it, anyone who can reach the port could keep the node's TPM busy
// (a TPM executes one command at a time) and starve its own attestations and joins.
//
// Each source gets a token bucket (golang.org/x/time/rate). Connections are limited when they are accepted,
// before any handshake work, and requests on a connection are limited again, so neither many connections
// nor many requests on one connection get past the limit.
package ratelimit

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// DefaultMaxSources bounds the number of sources tracked at once; beyond it the least recently seen source
// is forgotten (and starts with a full bucket again), so memory stays bounded whatever the callers do.
const DefaultMaxSources = 10000

// PerSource is a token bucket per source.
type PerSource struct {
	limit      rate.Limit
	burst      int
	maxSources int
	now        func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	limiter  *rate.Limiter
	lastSeen time.Time
}

// New allows each source perSecond events on average and burst at once.
func New(perSecond float64, burst int) *PerSource {
	return &PerSource{
		limit: rate.Limit(perSecond), burst: burst, maxSources: DefaultMaxSources, now: time.Now,
		buckets: map[string]*bucket{},
	}
}

// Allow reports whether source may have one more event now, and takes it if so.
func (p *PerSource) Allow(source string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	b, ok := p.buckets[source]
	if !ok {
		if len(p.buckets) >= p.maxSources {
			p.evictOldest()
		}
		b = &bucket{limiter: rate.NewLimiter(p.limit, p.burst)}
		p.buckets[source] = b
	}
	b.lastSeen = now
	return b.limiter.AllowN(now, 1)
}

// evictOldest forgets the least recently seen source. Linear, but only when the table is full.
func (p *PerSource) evictOldest() {
	var oldest string
	var oldestSeen time.Time
	first := true
	for source, b := range p.buckets {
		if first || b.lastSeen.Before(oldestSeen) {
			oldest, oldestSeen, first = source, b.lastSeen, false
		}
	}
	delete(p.buckets, oldest)
}

// RetryAfter is how long a source that was refused should wait for its next event, rounded up to seconds.
func (p *PerSource) RetryAfter() time.Duration {
	if p.limit <= 0 {
		return time.Second
	}
	return time.Duration(float64(time.Second)/float64(p.limit)).Round(time.Second) + time.Second
}

// Source returns the rate-limited identity of a peer address: its IP for TCP, the whole address otherwise.
func Source(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	return hostOf(addr.String())
}

// hostOf returns the host of a host:port address, or the whole address if it has no port.
func hostOf(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// ErrLimited is the error of a refused request.
var ErrLimited = errors.New("rate limit exceeded")

// UnaryServerInterceptor refuses a call whose peer is over its limit with codes.ResourceExhausted.
func (p *PerSource) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var source string
		if pr, ok := peer.FromContext(ctx); ok {
			source = Source(pr.Addr)
		}
		if !p.Allow(source) {
			return nil, status.Errorf(codes.ResourceExhausted, "%v for %s: retry in %s", ErrLimited, source, p.RetryAfter())
		}
		return handler(ctx, req)
	}
}

// Handler refuses an HTTP request whose client is over its limit with 429 and Retry-After.
func (p *PerSource) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		source := hostOf(r.RemoteAddr)
		if !p.Allow(source) {
			w.Header().Set("Retry-After", strconv.Itoa(int(p.RetryAfter()/time.Second)))
			http.Error(w, ErrLimited.Error()+" for "+source, http.StatusTooManyRequests)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Listener returns l with connections from sources over their limit closed as soon as they are accepted,
// before any (TLS, attestation) work is done for them.
func (p *PerSource) Listener(l net.Listener) net.Listener {
	return &listener{Listener: l, limits: p}
}

type listener struct {
	net.Listener
	limits *PerSource
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.limits.Allow(Source(conn.RemoteAddr())) {
			return conn, nil
		}
		_ = conn.Close()
	}
}
