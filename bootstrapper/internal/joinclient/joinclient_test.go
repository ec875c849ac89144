package joinclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/bootstrapper/internal/metadata"
	"github.com/constellation-go/constellation/bootstrapper/internal/nodelock"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	measurementSecret = bytes.Repeat([]byte{0x11}, 32)
	measurementSalt   = bytes.Repeat([]byte{0x22}, 32)
)

// fakeJoinService fails the first failures calls with Unavailable, then issues a ticket. It runs over real
// aTLS and only accepts nodes that booted vtpmtest.Boot and have PCR 15 zero, like the real JoinService.
type fakeJoinService struct {
	joinproto.UnimplementedAPIServer
	mu       sync.Mutex
	failures int
	calls    []time.Time
	reqs     []*joinproto.IssueJoinTicketRequest
	rejoins  []*joinproto.IssueRejoinTicketRequest
	// block, if set, holds the answer until closed.
	block chan struct{}
}

func (f *fakeJoinService) IssueJoinTicket(ctx context.Context, req *joinproto.IssueJoinTicketRequest) (*joinproto.IssueJoinTicketResponse, error) {
	f.mu.Lock()
	f.calls = append(f.calls, time.Now())
	f.reqs = append(f.reqs, req)
	fail := len(f.calls) <= f.failures
	block := f.block
	f.mu.Unlock()
	if fail {
		return nil, status.Error(codes.Unavailable, "getting the disk key: KeyService not ready")
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &joinproto.IssueJoinTicketResponse{
		StateDiskKey: bytes.Repeat([]byte{0x33}, 64), MeasurementSalt: measurementSalt, MeasurementSecret: measurementSecret,
		ApiServerEndpoint: "10.42.0.2:6443", Token: "abcdef.0123456789abcdef",
		DiscoveryTokenCaCertHash: "sha256:" + string(bytes.Repeat([]byte("0"), 64)),
	}, nil
}

// rejoinKey is the disk key the fake JoinService hands restarted nodes, rejoinWrappedKey its form wrapped
// by a (user-managed) KMS key.
var (
	rejoinKey        = bytes.Repeat([]byte{0x44}, 64)
	rejoinWrappedKey = []byte("wrapped by the KMS")
)

func (f *fakeJoinService) IssueRejoinTicket(_ context.Context, req *joinproto.IssueRejoinTicketRequest) (*joinproto.IssueRejoinTicketResponse, error) {
	f.mu.Lock()
	f.calls = append(f.calls, time.Now())
	f.rejoins = append(f.rejoins, req)
	fail := len(f.calls) <= f.failures
	f.mu.Unlock()
	if fail {
		return nil, status.Error(codes.Unavailable, "getting the disk key: KeyService not ready")
	}
	return &joinproto.IssueRejoinTicketResponse{StateDiskKey: rejoinKey, MeasurementSecret: measurementSecret, MeasurementSalt: measurementSalt,
		WrappedStateDiskKey: rejoinWrappedKey}, nil
}

func (f *fakeJoinService) callTimes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls...)
}

// joinServiceClusterID is the cluster the JoinService's control plane belongs to.
var joinServiceClusterID = bytes.Repeat([]byte{0x77}, 32)

// serve runs the JoinService on 127.0.0.1, on a control plane of the published image that belongs to a
// cluster, and returns its port.
func serve(t *testing.T, svc joinproto.APIServer) int {
	t.Helper()
	cp := vtpmtest.NewNode(t, vtpmtest.Boot)
	require.NoError(t, tpm.Extend(cp.TPM, measurements.PCRClusterID, measurements.ClusterIDEvent(joinServiceClusterID)))
	return serveOn(t, svc, cp)
}

// serveOn runs the JoinService attesting with node's vTPM.
func serveOn(t *testing.T, svc joinproto.APIServer, node *vtpmtest.Node) int {
	t.Helper()
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{
		Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot).WithFreshNode(), AKRoots: vtpmtest.AKRoots(t),
	})
	require.NoError(t, err)
	log := node.EventLog
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, node.TPM, vtpm.WithEventLog(func() ([]byte, error) { return log, nil }))
	t.Cleanup(issuer.Close)
	creds, err := atls.NewCredentials(issuer, []attestation.Validator{validator})
	require.NoError(t, err)
	g := grpc.NewServer(grpc.Creds(creds))
	joinproto.RegisterAPIServer(g, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().(*net.TCPAddr).Port
}

type fakeMetadata struct {
	self      metadata.Instance
	instances []metadata.Instance
	selfErrs  int
	mu        sync.Mutex
}

func (f *fakeMetadata) Self(context.Context) (metadata.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.selfErrs > 0 {
		f.selfErrs--
		return metadata.Instance{}, errors.New("metadata API not reachable")
	}
	return f.self, nil
}

func (f *fakeMetadata) List(context.Context) ([]metadata.Instance, error) { return f.instances, nil }

// fakeDisk is a state disk; initialized makes it a restarted node's, which unlocks with unlockKey only.
type fakeDisk struct {
	mu          sync.Mutex
	initialized bool
	unlockKey   []byte
	unlocked    bool
	components  []byte
	member      bool
	wrapped     []byte
}

func (d *fakeDisk) SaveWrappedKey(blob []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.wrapped = blob
	return nil
}

func (d *fakeDisk) Member() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.unlocked && d.member
}

// MarkMember works on a locked fake too: the fake Joiner does not unlock it as the real one does.
func (d *fakeDisk) MarkMember() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.member = true
	return nil
}

func (d *fakeDisk) isMember() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.member
}

func (*fakeDisk) UUID() (string, error) { return "00000000-0000-0000-0000-000000000042", nil }
func (d *fakeDisk) Initialized() bool   { return d.initialized }
func (d *fakeDisk) Unlock(key []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !bytes.Equal(key, d.unlockKey) {
		return errors.New("wrong key")
	}
	d.unlocked = true
	return nil
}

func (d *fakeDisk) LoadComponents() ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.unlocked {
		return nil, errors.New("locked")
	}
	return d.components, nil
}

// fakeInstaller fails the first failures calls.
type fakeInstaller struct {
	mu        sync.Mutex
	failures  int
	calls     int
	installed []*components.Component
}

func (f *fakeInstaller) Install(_ context.Context, comps []*components.Component) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.failures {
		return errors.New("component server not reachable")
	}
	f.installed = comps
	return nil
}

type fakeJoiner struct {
	mu     sync.Mutex
	ticket *joinproto.IssueJoinTicketResponse
	self   metadata.Instance
	key    *ecdsa.PrivateKey
	err    error
	// failures makes the first this many Joins fail; tickets records every Join's ticket, resets the Resets.
	failures int
	tickets  []*joinproto.IssueJoinTicketResponse
	resets   int
}

func (f *fakeJoiner) Join(_ context.Context, ticket *joinproto.IssueJoinTicketResponse, self metadata.Instance, key *ecdsa.PrivateKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tickets = append(f.tickets, ticket)
	if f.failures > 0 {
		f.failures--
		return errors.New("kubeadm join: exit status 1")
	}
	f.ticket, f.self, f.key = ticket, self, key
	return f.err
}

func (f *fakeJoiner) Reset(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resets++
	return nil
}

func (f *fakeJoiner) joined() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ticket != nil
}

type testNode struct {
	lock      *nodelock.Lock
	tpm       *vtpmtest.Node
	joiner    *fakeJoiner
	md        *fakeMetadata
	disk      *fakeDisk
	installer *fakeInstaller
	client    *Client
}

// newNode is a joining worker booted with events, whose metadata lists the control planes at ports (on
// 127.0.0.1; 127.0.0.2 is a control plane where nothing listens).
func newNode(t *testing.T, events []vtpmtest.Event, port int) *testNode {
	t.Helper()
	node := vtpmtest.NewNode(t, events)
	log := node.EventLog
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, node.TPM, vtpm.WithEventLog(func() ([]byte, error) { return log, nil }))
	t.Cleanup(issuer.Close)
	service, err := NewServiceValidator(variant.QEMUVTPM, node.TPM)
	require.NoError(t, err)
	creds, err := atls.NewCredentials(issuer, []attestation.Validator{service})
	require.NoError(t, err)
	n := &testNode{lock: nodelock.New(node.TPM), tpm: node, joiner: &fakeJoiner{}, disk: &fakeDisk{}, installer: &fakeInstaller{}}
	n.md = &fakeMetadata{
		self: metadata.Instance{Name: "worker-0", Role: role.Worker, IP: netip.MustParseAddr("10.42.0.3")},
		instances: []metadata.Instance{
			{Name: "worker-0", Role: role.Worker, IP: netip.MustParseAddr("127.0.0.1")}, // itself: never asked
			{Name: "control-plane-down", Role: role.ControlPlane, IP: netip.MustParseAddr("127.0.0.2")},
			{Name: "control-plane-0", Role: role.ControlPlane, IP: netip.MustParseAddr("127.0.0.1")},
		},
	}
	n.client = New(n.md, n.lock, n.disk, n.joiner, n.installer, creds, slog.New(slog.DiscardHandler))
	n.client.Port = port
	n.client.Backoff = Backoff{Initial: 20 * time.Millisecond, Max: 80 * time.Millisecond}
	n.client.AttemptTimeout = 10 * time.Second
	return n
}

func (n *testNode) pcr15(t *testing.T) []byte {
	t.Helper()
	pcrs, err := tpm.ReadPCRs(n.tpm.TPM, []uint32{measurements.PCRClusterID})
	require.NoError(t, err)
	return pcrs[measurements.PCRClusterID]
}

func run(t *testing.T, c *Client, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Run(ctx)
}

func TestJoinRetriesWithBackoff(t *testing.T) {
	svc := &fakeJoinService{failures: 3}
	n := newNode(t, vtpmtest.Boot, serve(t, svc))
	n.md.selfErrs = 2
	require.NoError(t, run(t, n.client, 30*time.Second))

	calls := svc.callTimes()
	require.Len(t, calls, 4, "three refusals, then the ticket")
	// Each attempt asks every control plane (the one that is down fails fast), then waits: 20, 40, 80 ms.
	for i, min := range []time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond} {
		assert.GreaterOrEqual(t, calls[i+1].Sub(calls[i]), min, "gap %d", i)
	}

	assert.True(t, n.disk.isMember(), "the disk records the completed join")
	req := svc.reqs[len(svc.reqs)-1]
	assert.Equal(t, "worker-0", req.GetNodeName())
	assert.Equal(t, "00000000-0000-0000-0000-000000000042", req.GetDiskUuid())
	assert.False(t, req.GetIsControlPlane())
	csr, err := x509.ParseCertificateRequest(req.GetCertificateRequest())
	require.NoError(t, err)
	assert.Equal(t, "system:node:worker-0", csr.Subject.CommonName)

	// The node lock holds the ticket's cluster, and the joiner got the ticket and the CSR's key.
	clusterID, err := crypto.ClusterID(measurementSecret, measurementSalt)
	require.NoError(t, err)
	assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), n.pcr15(t))
	require.True(t, n.joiner.joined())
	assert.Equal(t, "10.42.0.2:6443", n.joiner.ticket.GetApiServerEndpoint())
	assert.Equal(t, "worker-0", n.joiner.self.Name)
	assert.True(t, n.joiner.key.PublicKey.Equal(csr.PublicKey))
}

func TestInitWinsWhileWaiting(t *testing.T) {
	n := newNode(t, vtpmtest.Boot, serve(t, &fakeJoinService{failures: 1 << 30}))
	done := make(chan error, 1)
	go func() { done <- run(t, n.client, 30*time.Second) }()
	time.Sleep(100 * time.Millisecond)
	initID := bytes.Repeat([]byte{0x99}, 32)
	ok, err := n.lock.TryLock(initID) // the init flow takes the lock
	require.NoError(t, err)
	require.True(t, ok)
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrLocked)
	case <-time.After(10 * time.Second):
		t.Fatal("the join client did not stop")
	}
	assert.False(t, n.joiner.joined())
	assert.Equal(t, []byte(measurements.PCR15ForCluster(initID)), n.pcr15(t), "PCR 15 holds init's cluster only")
}

func TestInitWinsWhileTheTicketIsOnItsWay(t *testing.T) {
	svc := &fakeJoinService{block: make(chan struct{})}
	n := newNode(t, vtpmtest.Boot, serve(t, svc))
	done := make(chan error, 1)
	go func() { done <- run(t, n.client, 30*time.Second) }()
	require.Eventually(t, func() bool { return len(svc.callTimes()) > 0 }, 10*time.Second, 5*time.Millisecond)
	initID := bytes.Repeat([]byte{0x98}, 32)
	ok, err := n.lock.TryLock(initID)
	require.NoError(t, err)
	require.True(t, ok)
	close(svc.block)
	require.ErrorIs(t, <-done, ErrLocked)
	assert.False(t, n.joiner.joined(), "the ticket is dropped")
	assert.Equal(t, []byte(measurements.PCR15ForCluster(initID)), n.pcr15(t))
}

func TestTamperedNodeNeverJoins(t *testing.T) {
	svc := &fakeJoinService{}
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: eventlog.EvIPL, Data: "console=ttyS0 init=/bin/sh"})
	n := newNode(t, tampered, serve(t, svc))
	err := run(t, n.client, 500*time.Millisecond)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Empty(t, svc.callTimes(), "the JoinService refused the handshake")
	assert.False(t, n.joiner.joined())
	assert.Equal(t, []byte(measurements.Zero), n.pcr15(t))
}

// An impostor on the JoinService's port gets nothing from the node and gives it nothing: the node checks
// the JoinService's attestation before it sends its request (and so before it could take a key).
func TestImpostorJoinServiceIsRefused(t *testing.T) {
	otherCA, err := manufacturer.NewCA("another platform CA")
	require.NoError(t, err)
	locked := func(n *vtpmtest.Node) *vtpmtest.Node {
		require.NoError(t, tpm.Extend(n.TPM, measurements.PCRClusterID, measurements.ClusterIDEvent(joinServiceClusterID)))
		return n
	}
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: eventlog.EvIPL, Data: "console=ttyS0 init=/bin/sh"})
	testCases := map[string]*vtpmtest.Node{
		"a node of another image":                 locked(vtpmtest.NewNode(t, tampered)),
		"a node that belongs to no cluster":       vtpmtest.NewNode(t, vtpmtest.Boot),
		"a node whose vTPM another platform made": locked(vtpmtest.NewNodeWithCA(t, vtpmtest.Boot, otherCA)),
	}
	for name, impostor := range testCases {
		t.Run(name, func(t *testing.T) {
			svc := &fakeJoinService{}
			n := newNode(t, vtpmtest.Boot, serveOn(t, svc, impostor))
			err := run(t, n.client, 500*time.Millisecond)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Empty(t, svc.callTimes(), "the node sent no request")
			assert.False(t, n.joiner.joined(), "the node took no ticket")
			assert.Equal(t, []byte(measurements.Zero), n.pcr15(t), "and no lock")
		})
	}
}

func TestNoControlPlaneYet(t *testing.T) {
	n := newNode(t, vtpmtest.Boot, 1)
	n.md.instances = []metadata.Instance{n.md.self}
	require.ErrorIs(t, run(t, n.client, 200*time.Millisecond), context.DeadlineExceeded)
	assert.False(t, n.joiner.joined())
}

// TestJoinerFailureAfterLock: a join that keeps failing after the lock is undone and retried with the same
// ticket while it is valid, then fails for good (the node keeps its lock until it restarts).
func TestJoinerFailureAfterLock(t *testing.T) {
	n := newNode(t, vtpmtest.Boot, serve(t, &fakeJoinService{}))
	n.client.TicketLifetime = 300 * time.Millisecond
	n.joiner.err = errors.New("kubeadm join: exit status 1")
	err := run(t, n.client, 30*time.Second)
	require.ErrorContains(t, err, "kubeadm join")
	require.ErrorContains(t, err, "restart the node")
	assert.NotErrorIs(t, err, ErrLocked)
	assert.NotEqual(t, []byte(measurements.Zero), n.pcr15(t), "the lock stays taken")
	assert.Greater(t, len(n.joiner.tickets), 1, "the join was retried")
	assert.Equal(t, len(n.joiner.tickets)-1, n.joiner.resets, "every failed join but the last was undone")
}

// TestJoinRetriedAfterLock: a join that fails twice after the lock (e.g. the API server was restarting) is
// undone and retried with the same ticket and disk key, and the node joins; the lock is taken once.
func TestJoinRetriedAfterLock(t *testing.T) {
	n := newNode(t, vtpmtest.Boot, serve(t, &fakeJoinService{}))
	n.joiner.failures = 2
	require.NoError(t, run(t, n.client, 30*time.Second))
	require.True(t, n.joiner.joined())
	require.Len(t, n.joiner.tickets, 3)
	for _, ticket := range n.joiner.tickets {
		assert.Same(t, n.joiner.tickets[0], ticket, "no new ticket (and disk key) after the lock")
	}
	assert.Equal(t, 2, n.joiner.resets)
	clusterID, err := crypto.ClusterID(measurementSecret, measurementSalt)
	require.NoError(t, err)
	assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), n.pcr15(t), "the lock was taken once, for the ticket's cluster")
}

func TestControlPlaneJoin(t *testing.T) {
	svc := &fakeJoinService{}
	n := newNode(t, vtpmtest.Boot, serve(t, svc))
	n.md.self = metadata.Instance{Name: "control-plane-1", Role: role.ControlPlane, IP: netip.MustParseAddr("10.42.0.4")}
	require.NoError(t, run(t, n.client, 30*time.Second))
	assert.True(t, svc.reqs[0].GetIsControlPlane())
}

// TestRejoin: a restarted node asks for a rejoin ticket, not a join ticket, unlocks its state disk with the
// ticket's key, takes the node lock for the same cluster and installs the components it recorded (retrying
// while the component server is away); it never runs a join.
func TestRejoin(t *testing.T) {
	recorded, err := components.MarshalList([]*components.Component{{Name: "kubelet", Url: "http://10.42.0.1:9081/kubelet", Hash: "sha256:00", InstallPath: "/var/lib/constellation/bin/kubelet"}})
	require.NoError(t, err)
	tests := map[string]struct {
		unlockKey       []byte
		installFailures int
		wantErr         string
	}{
		"rejoins":                             {unlockKey: rejoinKey},
		"retries the components":              {unlockKey: rejoinKey, installFailures: 2},
		"a key that does not unlock the disk": {unlockKey: bytes.Repeat([]byte{0x55}, 64), wantErr: "does not unlock this node's state disk"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			svc := &fakeJoinService{failures: 1}
			n := newNode(t, vtpmtest.Boot, serve(t, svc))
			n.disk.initialized, n.disk.unlockKey, n.disk.components, n.disk.member = true, tc.unlockKey, recorded, true
			n.installer.failures = tc.installFailures

			err := run(t, n.client, 30*time.Second)
			assert.Empty(t, svc.reqs, "a restarted node never asks for a join ticket")
			require.NotEmpty(t, svc.rejoins)
			assert.Equal(t, "00000000-0000-0000-0000-000000000042", svc.rejoins[0].GetDiskUuid())
			assert.False(t, n.joiner.joined(), "and never runs kubeadm join")
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				assert.Equal(t, make([]byte, 32), n.pcr15(t), "a node whose disk stays locked takes no lock")
				assert.Nil(t, n.installer.installed)
				assert.Nil(t, n.disk.wrapped, "a blob whose key does not unlock the disk is not kept")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, rejoinWrappedKey, n.disk.wrapped, "the (possibly re-wrapped) blob is kept beside the disk")
			clusterID, err := crypto.ClusterID(measurementSecret, measurementSalt)
			require.NoError(t, err)
			assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), n.pcr15(t), "locked to the same cluster")
			require.Len(t, n.installer.installed, 1)
			assert.Equal(t, "kubelet", n.installer.installed[0].GetName())
			assert.Equal(t, tc.installFailures+1, n.installer.calls)
		})
	}
}

// TestRejoinAfterCutOffJoin: a node that lost power during its join restarts with a disk set up but not
// recording a completed join. Its rejoin ticket's key unlocks the disk (it is the cluster's), but there is
// nothing to rejoin: it takes no lock, undoes what the cut-off join left (kubeadm reset) and joins again
// with a join ticket.
func TestRejoinAfterCutOffJoin(t *testing.T) {
	svc := &fakeJoinService{}
	n := newNode(t, vtpmtest.Boot, serve(t, svc))
	n.disk.initialized, n.disk.unlockKey = true, rejoinKey

	require.NoError(t, run(t, n.client, 30*time.Second))
	require.Len(t, svc.rejoins, 1, "it asks for a rejoin ticket first")
	require.Len(t, svc.reqs, 1, "then, the join being cut off, for a join ticket")
	assert.Equal(t, svc.rejoins[0].GetDiskUuid(), svc.reqs[0].GetDiskUuid(), "for the same disk")
	assert.Equal(t, 1, n.joiner.resets, "what the cut-off join left is undone first")
	assert.True(t, n.joiner.joined())
	assert.True(t, n.disk.isMember(), "the disk records the completed join")
	assert.Equal(t, 1, n.installer.calls, "the ticket's components (kubeadm) are installed for the reset; the "+
		"recorded ones are not reinstalled")
	clusterID, err := crypto.ClusterID(measurementSecret, measurementSalt)
	require.NoError(t, err)
	assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), n.pcr15(t))
}

// TestRejoinAfterRecovery: the admin's recover took the lock first; the rejoin ticket is dropped.
func TestRejoinAfterRecovery(t *testing.T) {
	svc := &fakeJoinService{}
	n := newNode(t, vtpmtest.Boot, serve(t, svc))
	n.disk.initialized, n.disk.unlockKey = true, rejoinKey
	ok, err := n.lock.TryLock(bytes.Repeat([]byte{0x99}, 32))
	require.NoError(t, err)
	require.True(t, ok)
	require.ErrorIs(t, run(t, n.client, 10*time.Second), ErrLocked)
	assert.Nil(t, n.installer.installed)
}
