package bootstrap

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/bootstrapper/internal/initserver"
	"github.com/constellation-go/constellation/bootstrapper/internal/joinclient"
	"github.com/constellation-go/constellation/bootstrapper/internal/metadata"
	"github.com/constellation-go/constellation/bootstrapper/internal/nodelock"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// --- unit tests with fakes -------------------------------------------------------------------------------

type fakeLock struct {
	locked bool
	err    error
	taken  chan struct{}
}

func (f *fakeLock) IsLocked() (bool, error) { return f.locked, f.err }
func (f *fakeLock) Taken() <-chan struct{}  { return f.taken }

type fakeServer struct {
	serveErr    error
	stop        chan struct{}
	once        sync.Once
	served      atomic.Bool
	gracefulHit atomic.Bool
	// inFlight makes GracefulStop wait until it is closed (an Init in progress).
	inFlight chan struct{}
}

func newFakeServer() *fakeServer { return &fakeServer{stop: make(chan struct{})} }

func (f *fakeServer) Serve(lis net.Listener) error {
	f.served.Store(true)
	if f.serveErr != nil {
		return f.serveErr
	}
	<-f.stop
	return nil
}

func (f *fakeServer) GracefulStop() {
	f.gracefulHit.Store(true)
	f.once.Do(func() { close(f.stop) })
	if f.inFlight != nil {
		<-f.inFlight
	}
}

func (f *fakeServer) Stop() {
	f.once.Do(func() { close(f.stop) })
	if f.inFlight != nil {
		select {
		case <-f.inFlight:
		default:
			close(f.inFlight)
		}
	}
}

type funcRunner struct {
	run     func(ctx context.Context) error
	started atomic.Bool
	ended   atomic.Bool
}

func (f *funcRunner) Run(ctx context.Context) error {
	f.started.Store(true)
	defer f.ended.Store(true)
	return f.run(ctx)
}

// agentRunner is a node agent that runs until its context ends.
type agentRunner struct{ runner funcRunner }

func (a *agentRunner) Run(ctx context.Context) { _ = a.runner.Run(ctx) }

func newAgent() *agentRunner { return &agentRunner{runner: funcRunner{run: untilDone}} }

func untilDone(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func listener(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = lis.Close() })
	return lis
}

func newBootstrapper(t *testing.T, lock Lock, server Server, join, kubelet Runner) *Bootstrapper {
	return &Bootstrapper{Lock: lock, InitServer: server, InitListener: listener(t), Join: join, Kubelet: kubelet,
		Log: slog.New(slog.DiscardHandler), StopGrace: 100 * time.Millisecond}
}

func runAsync(b *Bootstrapper) (cancel context.CancelFunc, done chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	return cancel, done
}

func wait(t *testing.T, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func TestLockedNodeOnlySupervisesTheKubelet(t *testing.T) {
	server, join, kubelet := newFakeServer(), &funcRunner{run: untilDone}, &funcRunner{run: untilDone}
	b := newBootstrapper(t, &fakeLock{locked: true, taken: make(chan struct{})}, server, join, kubelet)
	var prepared atomic.Bool
	b.PrepareNode = func() error { prepared.Store(true); return errors.New("logged, not fatal") }
	agent := newAgent()
	b.Agent = agent
	cancel, done := runAsync(b)
	require.Eventually(t, kubelet.started.Load, 5*time.Second, time.Millisecond)
	require.Eventually(t, agent.runner.started.Load, 5*time.Second, time.Millisecond, "the node agent runs beside the kubelet")
	cancel()
	require.NoError(t, wait(t, done))
	assert.True(t, agent.runner.ended.Load(), "Run returns after the agent ended")
	assert.False(t, server.served.Load(), "no Init API on a locked node")
	assert.False(t, join.started.Load(), "no join on a locked node")
	assert.True(t, kubelet.ended.Load())
	assert.True(t, prepared.Load())
}

func TestJoinWins(t *testing.T) {
	lock := &fakeLock{taken: make(chan struct{})}
	server, kubelet := newFakeServer(), &funcRunner{run: untilDone}
	joined := make(chan struct{})
	join := &funcRunner{run: func(ctx context.Context) error {
		close(lock.taken) // the join flow takes the lock, then runs kubeadm join while the kubelet runs
		require.Eventually(t, kubelet.started.Load, 5*time.Second, time.Millisecond)
		close(joined)
		return nil
	}}
	b := newBootstrapper(t, lock, server, join, kubelet)
	var prepared atomic.Bool
	b.PrepareNode = func() error { prepared.Store(true); return nil }
	agent := newAgent()
	b.Agent = agent
	cancel, done := runAsync(b)
	<-joined
	require.Eventually(t, agent.runner.started.Load, 5*time.Second, time.Millisecond, "the node agent starts with the kubelet")
	assert.True(t, prepared.Load(), "the node is prepared before the kubelet starts")
	require.Eventually(t, server.gracefulHit.Load, 5*time.Second, time.Millisecond, "the Init API stops")
	// The node keeps running its kubelet after the join.
	time.Sleep(20 * time.Millisecond)
	assert.False(t, kubelet.ended.Load())
	cancel()
	require.NoError(t, wait(t, done))
	assert.True(t, kubelet.ended.Load())
	assert.True(t, agent.runner.ended.Load(), "Run returns after the agent ended")
}

func TestInitWinsAndFinishes(t *testing.T) {
	lock := &fakeLock{taken: make(chan struct{})}
	server, kubelet := newFakeServer(), &funcRunner{run: untilDone}
	server.inFlight = make(chan struct{})
	join := &funcRunner{run: func(ctx context.Context) error {
		select {
		case <-lock.taken:
			return joinclient.ErrLocked
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	b := newBootstrapper(t, lock, server, join, kubelet)
	cancel, done := runAsync(b)
	defer cancel()
	close(lock.taken) // Init took the lock; its RPC is still running
	require.Eventually(t, func() bool { return join.ended.Load() && kubelet.started.Load() }, 5*time.Second, time.Millisecond)
	require.Eventually(t, server.gracefulHit.Load, 5*time.Second, time.Millisecond)
	close(server.inFlight) // the Init RPC ends
	time.Sleep(20 * time.Millisecond)
	assert.False(t, kubelet.ended.Load(), "the kubelet stays supervised")
	cancel()
	require.NoError(t, wait(t, done))
}

// TestInitKeepsServingForResume: when Init took the lock, the Init API serves on (a caller may resume)
// until shutdown.
func TestInitKeepsServingForResume(t *testing.T) {
	lock := &fakeLock{taken: make(chan struct{})}
	server, kubelet := newFakeServer(), &funcRunner{run: untilDone}
	join := &funcRunner{run: func(ctx context.Context) error {
		select {
		case <-lock.taken:
			return joinclient.ErrLocked
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	b := newBootstrapper(t, lock, server, join, kubelet)
	b.KeepServing = func() bool { return true }
	cancel, done := runAsync(b)
	defer cancel()
	close(lock.taken)
	require.Eventually(t, func() bool { return join.ended.Load() && kubelet.started.Load() }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	assert.False(t, server.gracefulHit.Load(), "the Init API must keep serving")
	cancel()
	require.NoError(t, wait(t, done))
	assert.True(t, server.gracefulHit.Load(), "shutdown stops it")
}

func TestShutdownBeforeAnything(t *testing.T) {
	lock := &fakeLock{taken: make(chan struct{})}
	server, kubelet := newFakeServer(), &funcRunner{run: untilDone}
	join := &funcRunner{run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	b := newBootstrapper(t, lock, server, join, kubelet)
	cancel, done := runAsync(b)
	require.Eventually(t, func() bool { return join.started.Load() && server.served.Load() }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, wait(t, done))
	assert.False(t, kubelet.started.Load())
}

func TestShutdownCutsOffAHangingInit(t *testing.T) {
	lock := &fakeLock{taken: make(chan struct{})}
	server, kubelet := newFakeServer(), &funcRunner{run: untilDone}
	server.inFlight = make(chan struct{}) // never finishes by itself
	join := &funcRunner{run: func(ctx context.Context) error { <-ctx.Done(); return joinclient.ErrLocked }}
	b := newBootstrapper(t, lock, server, join, kubelet)
	cancel, done := runAsync(b)
	close(lock.taken)
	require.Eventually(t, kubelet.started.Load, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, wait(t, done))
	assert.True(t, kubelet.ended.Load())
}

func TestFatalStartErrors(t *testing.T) {
	t.Run("TPM unreadable", func(t *testing.T) {
		b := newBootstrapper(t, &fakeLock{err: errors.New("TPM gone")}, newFakeServer(), &funcRunner{run: untilDone}, &funcRunner{run: untilDone})
		require.ErrorContains(t, b.Run(context.Background()), "TPM gone")
	})
	t.Run("Init API cannot be served", func(t *testing.T) {
		server := newFakeServer()
		server.serveErr = errors.New("accept: too many open files")
		join := &funcRunner{run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
		b := newBootstrapper(t, &fakeLock{taken: make(chan struct{})}, server, join, &funcRunner{run: untilDone})
		require.ErrorContains(t, b.Run(context.Background()), "too many open files")
		assert.True(t, join.ended.Load(), "the join client was stopped")
	})
}

// TestRecovery: the Recovery API is served on a restarted node only, alongside Init and join, until
// shutdown; on a fresh or a locked node it is not even listened for.
func TestRecovery(t *testing.T) {
	tests := map[string]struct {
		locked, restarted bool
		listenErr         error
		wantServed        bool
		wantErr           string
	}{
		"restarted node":               {restarted: true, wantServed: true},
		"fresh node":                   {},
		"locked restarted node":        {locked: true, restarted: true},
		"restarted, port already used": {restarted: true, listenErr: errors.New("address already in use"), wantErr: "listening for Recover: address already in use"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			server, recovery := newFakeServer(), newFakeServer()
			join := &funcRunner{run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
			b := newBootstrapper(t, &fakeLock{locked: tc.locked, taken: make(chan struct{})}, server, join, &funcRunner{run: untilDone})
			var listened atomic.Bool
			b.Recovery = &Recovery{Server: recovery, Restarted: func() bool { return tc.restarted }, Listen: func() (net.Listener, error) {
				listened.Store(true)
				if tc.listenErr != nil {
					return nil, tc.listenErr
				}
				return listener(t), nil
			}}
			cancel, done := runAsync(b)
			defer cancel()
			if tc.wantErr != "" {
				require.ErrorContains(t, wait(t, done), tc.wantErr)
				assert.False(t, server.served.Load(), "nothing is served when the node cannot start")
				return
			}
			if tc.wantServed {
				require.Eventually(t, func() bool { return recovery.served.Load() && server.served.Load() && join.started.Load() }, 5*time.Second, time.Millisecond)
			}
			cancel()
			require.NoError(t, wait(t, done))
			assert.Equal(t, tc.wantServed, recovery.served.Load(), "served")
			assert.Equal(t, tc.wantServed, listened.Load(), "listened")
			assert.Equal(t, tc.wantServed, recovery.gracefulHit.Load(), "stopped at shutdown")
		})
	}
}

// --- the real flows racing for the real lock ------------------------------------------------------------

var initSecret = bytes.Repeat([]byte{0x5e}, 32)

type fakeMetadata struct{ self metadata.Instance }

func (f fakeMetadata) Self(context.Context) (metadata.Instance, error) { return f.self, nil }
func (f fakeMetadata) List(context.Context) ([]metadata.Instance, error) {
	return []metadata.Instance{f.self, {Name: "control-plane-0", Role: role.ControlPlane, IP: netip.MustParseAddr("127.0.0.1")}}, nil
}

func (f fakeMetadata) InitSecretHash(context.Context) ([]byte, error) {
	h := sha256.Sum256(initSecret)
	return h[:], nil
}

// freshDisk is the state disk of a node in its first boot.
type freshDisk struct{}

func (freshDisk) UUID() (string, error) { return "00000000-0000-0000-0000-000000000007", nil }
func (freshDisk) Initialized() bool     { return false }
func (freshDisk) Member() bool          { return false }
func (freshDisk) MarkMember() error     { return nil }
func (freshDisk) SaveWrappedKey([]byte) error {
	return errors.New("a fresh disk keeps no wrapped key")
}
func (freshDisk) Unlock([]byte) error { return errors.New("a fresh disk is not unlocked") }
func (freshDisk) LoadComponents() ([]byte, error) {
	return nil, errors.New("a fresh disk records nothing")
}

// gate lets a flow proceed once it is opened.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate() *gate  { return &gate{ch: make(chan struct{})} }
func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

type raceInitializer struct {
	calls atomic.Int32
}

func (r *raceInitializer) Validate(initserver.Request) error { return nil }
func (r *raceInitializer) Init(ctx context.Context, _ initserver.Request, progress initserver.Progress) ([]byte, error) {
	r.calls.Add(1)
	progress("kubeadm-init", "running kubeadm init")
	return []byte("kubeconfig"), nil
}

type raceJoiner struct{ calls atomic.Int32 }

func (r *raceJoiner) Join(context.Context, *joinproto.IssueJoinTicketResponse, metadata.Instance, *ecdsa.PrivateKey) error {
	r.calls.Add(1)
	return nil
}

func (r *raceJoiner) Reset(context.Context) error { return nil }

// joinService hands out tickets for joinClusterSecret once its gate is open.
type joinService struct {
	joinproto.UnimplementedAPIServer
	gate *gate
}

var joinMeasurementSecret = bytes.Repeat([]byte{0x77}, 32)

func (j *joinService) IssueJoinTicket(ctx context.Context, _ *joinproto.IssueJoinTicketRequest) (*joinproto.IssueJoinTicketResponse, error) {
	select {
	case <-j.gate.ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &joinproto.IssueJoinTicketResponse{
		StateDiskKey: bytes.Repeat([]byte{1}, 64), MeasurementSecret: joinMeasurementSecret, MeasurementSalt: bytes.Repeat([]byte{2}, 32),
		ApiServerEndpoint: "10.42.0.2:6443", Token: "abcdef.0123456789abcdef", DiscoveryTokenCaCertHash: "sha256:" + string(bytes.Repeat([]byte("0"), 64)),
	}, nil
}

type stack struct {
	b         *Bootstrapper
	lock      *nodelock.Lock
	node      *vtpmtest.Node
	init      *raceInitializer
	joiner    *raceJoiner
	kubelet   *funcRunner
	initAddr  string
	joinGate  *gate
	validator attestation.Validator
}

// newStack is one fresh node with the real lock on its swtpm, the real Init server (aTLS) and the real
// join client, against a JoinService on 127.0.0.1 that answers when its gate opens.
func newStack(t *testing.T) *stack {
	t.Helper()
	node := vtpmtest.NewNode(t, vtpmtest.Boot)
	evLog := node.EventLog
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, node.TPM, vtpm.WithEventLog(func() ([]byte, error) { return evLog, nil }))
	t.Cleanup(issuer.Close)
	fresh, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot).WithFreshNode(), AKRoots: vtpmtest.AKRoots(t)})
	require.NoError(t, err)

	// The JoinService.
	s := &stack{lock: nodelock.New(node.TPM), node: node, init: &raceInitializer{}, joiner: &raceJoiner{}, joinGate: newGate(), validator: fresh}
	serverCreds, err := atls.NewCredentials(nil, []attestation.Validator{fresh})
	require.NoError(t, err)
	jsGRPC := grpc.NewServer(grpc.Creds(serverCreds))
	joinproto.RegisterAPIServer(jsGRPC, &joinService{gate: s.joinGate})
	jsLis := listener(t)
	go func() { _ = jsGRPC.Serve(jsLis) }()
	t.Cleanup(jsGRPC.Stop)

	md := fakeMetadata{self: metadata.Instance{Name: "node-0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.9")}}
	initCreds, err := atls.NewCredentials(issuer, nil)
	require.NoError(t, err)
	initGRPC := grpc.NewServer(grpc.Creds(initCreds))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	initserver.New(ctx, md, s.lock, s.init, func() []byte { return nil }, slog.New(slog.DiscardHandler)).Register(initGRPC)

	joinCreds, err := atls.NewCredentials(issuer, nil)
	require.NoError(t, err)
	jc := joinclient.New(md, s.lock, freshDisk{}, s.joiner, nil, joinCreds, slog.New(slog.DiscardHandler))
	jc.Port = jsLis.Addr().(*net.TCPAddr).Port
	jc.Backoff = joinclient.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond}

	s.kubelet = &funcRunner{run: untilDone}
	initLis := listener(t)
	s.initAddr = initLis.Addr().String()
	s.b = &Bootstrapper{Lock: s.lock, InitServer: initGRPC, InitListener: initLis, Join: jc, Kubelet: s.kubelet,
		Log: slog.New(slog.DiscardHandler), StopGrace: 5 * time.Second}
	return s
}

// callInit calls Init as the CLI does, expecting a fresh node.
func (s *stack) callInit() ([]*initproto.InitResponse, error) {
	creds, err := atls.NewCredentials(nil, []attestation.Validator{s.validator})
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("passthrough:///"+s.initAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	m := cryptotest.MasterSecret()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := initproto.NewAPIClient(conn).Init(ctx, &initproto.InitRequest{
		InitSecret: initSecret, MasterSecret: m.Key, Salt: m.Salt, KubernetesVersion: "v1.33.13", ClusterName: "mini",
	})
	if err != nil {
		return nil, err
	}
	var out []*initproto.InitResponse
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, resp)
	}
}

func (s *stack) pcr15(t *testing.T) []byte {
	t.Helper()
	pcrs, err := tpm.ReadPCRs(s.node.TPM, []uint32{measurements.PCRClusterID})
	require.NoError(t, err)
	return pcrs[measurements.PCRClusterID]
}

func clusterIDs(t *testing.T) (initID, joinID []byte) {
	t.Helper()
	m := cryptotest.MasterSecret()
	ms, err := crypto.DeriveKey(m.Key, m.Salt, crypto.MeasurementSecretID, 32)
	require.NoError(t, err)
	initID, err = crypto.ClusterID(ms, m.Salt)
	require.NoError(t, err)
	joinID, err = crypto.ClusterID(joinMeasurementSecret, bytes.Repeat([]byte{2}, 32))
	require.NoError(t, err)
	return initID, joinID
}

func TestRealFlowsJoinWins(t *testing.T) {
	s := newStack(t)
	cancel, done := runAsync(s.b)
	s.joinGate.open()
	require.Eventually(t, func() bool { return s.joiner.calls.Load() == 1 && s.kubelet.started.Load() }, 10*time.Second, 5*time.Millisecond)
	_, joinID := clusterIDs(t)
	assert.Equal(t, []byte(measurements.PCR15ForCluster(joinID)), s.pcr15(t))

	// The Init API is gone.
	require.Eventually(t, func() bool {
		_, err := s.callInit()
		return status.Code(err) == codes.Unavailable
	}, 10*time.Second, 10*time.Millisecond)
	assert.Zero(t, s.init.calls.Load())
	cancel()
	require.NoError(t, wait(t, done))
}

func TestRealFlowsInitWins(t *testing.T) {
	s := newStack(t)
	cancel, done := runAsync(s.b)
	resps, err := s.callInit()
	require.NoError(t, err)
	require.NotEmpty(t, resps)
	require.NotNil(t, resps[len(resps)-1].GetInitSuccess())
	initID, _ := clusterIDs(t)
	assert.Equal(t, []byte(measurements.PCR15ForCluster(initID)), s.pcr15(t))
	require.Eventually(t, s.kubelet.started.Load, 10*time.Second, 5*time.Millisecond)

	// A ticket arriving now is dropped, and PCR 15 is not extended again.
	s.joinGate.open()
	time.Sleep(100 * time.Millisecond)
	assert.Zero(t, s.joiner.calls.Load())
	assert.Equal(t, []byte(measurements.PCR15ForCluster(initID)), s.pcr15(t))
	_, err = s.callInit()
	require.Error(t, err, "no second init")
	cancel()
	require.NoError(t, wait(t, done))
}

// TestRealFlowsRace lets both flows reach the lock at the same moment, several times: exactly one wins each
// time, PCR 15 holds the winner's cluster ID extended exactly once, and the loser stops cleanly.
func TestRealFlowsRace(t *testing.T) {
	initID, joinID := clusterIDs(t)
	wins := map[string]int{}
	for range 6 {
		s := newStack(t)
		cancel, done := runAsync(s.b)
		initDone := make(chan error, 1)
		go func() {
			s.joinGate.open()
			_, err := s.callInit()
			initDone <- err
		}()
		<-initDone
		require.Eventually(t, s.kubelet.started.Load, 10*time.Second, 5*time.Millisecond)
		// Let the loser notice.
		time.Sleep(50 * time.Millisecond)
		inits, joins := s.init.calls.Load(), s.joiner.calls.Load()
		require.Equal(t, int32(1), inits+joins, "exactly one flow ran (init %d, join %d)", inits, joins)
		if inits == 1 {
			wins["init"]++
			assert.Equal(t, []byte(measurements.PCR15ForCluster(initID)), s.pcr15(t))
		} else {
			wins["join"]++
			assert.Equal(t, []byte(measurements.PCR15ForCluster(joinID)), s.pcr15(t))
		}
		cancel()
		require.NoError(t, wait(t, done))
	}
	t.Logf("winners: %v", wins)
}
