package initserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/bootstrapper/internal/nodelock"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var initSecret = bytes.Repeat([]byte{0x5e}, 32)

type fakeMetadata struct {
	hash []byte
	err  error
}

func (f fakeMetadata) InitSecretHash(context.Context) ([]byte, error) { return f.hash, f.err }

func goodMetadata() fakeMetadata {
	h := sha256.Sum256(initSecret)
	return fakeMetadata{hash: h[:]}
}

type fakeInitializer struct {
	mu          sync.Mutex
	calls       int
	req         Request
	validateErr error
	err         error
	// release, if set, blocks Init until closed.
	release chan struct{}
	started chan struct{}
	done    chan struct{}
}

func newFakeInitializer() *fakeInitializer {
	return &fakeInitializer{started: make(chan struct{}, 1), done: make(chan struct{}, 1)}
}

func (f *fakeInitializer) Validate(Request) error { return f.validateErr }

func (f *fakeInitializer) Init(ctx context.Context, req Request, progress Progress) ([]byte, error) {
	f.mu.Lock()
	f.calls++
	f.req = req
	f.mu.Unlock()
	f.started <- struct{}{}
	defer func() { f.done <- struct{}{} }()
	progress("install", "installing 2 components")
	if f.release != nil {
		select {
		case <-f.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	progress("kubeadm", "kubeadm init")
	if f.err != nil {
		return nil, f.err
	}
	return []byte("apiVersion: v1\nkind: Config\n"), nil
}

func (f *fakeInitializer) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// env is an Init server on bufconn, attesting with a real swtpm, whose node lock is on the same swtpm.
type env struct {
	server *Server
	lock   *nodelock.Lock
	tpm    *vtpmtest.Node
	init   *fakeInitializer
	lis    *bufconn.Listener
	logs   []byte
}

func newEnv(t *testing.T, md Metadata) *env {
	t.Helper()
	node := vtpmtest.NewNode(t, vtpmtest.Boot)
	eventLog := node.EventLog
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, node.TPM, vtpm.WithEventLog(func() ([]byte, error) { return eventLog, nil }))
	t.Cleanup(issuer.Close)
	creds, err := atls.NewCredentials(issuer, nil)
	require.NoError(t, err)
	e := &env{lock: nodelock.New(node.TPM), tpm: node, init: newFakeInitializer(), lis: bufconn.Listen(1 << 20)}
	ctx, cancel := context.WithCancel(context.Background())
	e.server = New(ctx, md, e.lock, e.init, func() []byte { return e.logs }, slog.New(slog.DiscardHandler))
	g := grpc.NewServer(grpc.Creds(creds))
	e.server.Register(g)
	go func() { _ = g.Serve(e.lis) }()
	t.Cleanup(func() {
		cancel()
		g.Stop()
	})
	return e
}

// client dials the node as the CLI does, validating that PCR 15 is pcr15.
func (e *env) client(t *testing.T, pcr15 measurements.Digest) initproto.APIClient {
	t.Helper()
	refs := vtpmtest.ReferenceValues(vtpmtest.Boot)
	refs[measurements.PCRClusterID] = measurements.Measurement{Expected: pcr15}
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)})
	require.NoError(t, err)
	creds, err := atls.NewCredentials(nil, []attestation.Validator{validator})
	require.NoError(t, err)
	conn, err := grpc.NewClient("passthrough:///node", grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return initproto.NewAPIClient(conn)
}

func request() *initproto.InitRequest {
	m := cryptotest.MasterSecret()
	return &initproto.InitRequest{
		InitSecret: initSecret, MasterSecret: m.Key, Salt: m.Salt, KubernetesVersion: "v1.33.13",
		ClusterName: "mini", ApiserverCertSans: []string{"10.42.0.2"},
	}
}

// receive reads the whole stream.
func receive(t *testing.T, stream initproto.API_InitClient) ([]*initproto.InitResponse, error) {
	t.Helper()
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

// runInit calls Init and reads the whole stream; an error may come from either.
func runInit(t *testing.T, client initproto.APIClient, req *initproto.InitRequest) ([]*initproto.InitResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := client.Init(ctx, req)
	if err != nil {
		return nil, err
	}
	return receive(t, stream)
}

func pcr15(t *testing.T, e *env) []byte {
	t.Helper()
	pcrs, err := tpm.ReadPCRs(e.tpm.TPM, []uint32{measurements.PCRClusterID})
	require.NoError(t, err)
	return pcrs[measurements.PCRClusterID]
}

func expectedIDs(t *testing.T) (clusterID, ownerID []byte) {
	t.Helper()
	m := cryptotest.MasterSecret()
	ms, err := crypto.DeriveKey(m.Key, m.Salt, crypto.MeasurementSecretID, 32)
	require.NoError(t, err)
	clusterID, err = crypto.ClusterID(ms, m.Salt)
	require.NoError(t, err)
	ownerID, err = crypto.DeriveKey(m.Key, m.Salt, "ownerID", 32)
	require.NoError(t, err)
	return clusterID, ownerID
}

func TestInitSucceeds(t *testing.T) {
	e := newEnv(t, goodMetadata())
	resps, err := runInit(t, e.client(t, measurements.Zero), request())
	require.NoError(t, err)
	require.Len(t, resps, 3)
	assert.Equal(t, "install", resps[0].GetProgress().GetStep())
	assert.Equal(t, "kubeadm", resps[1].GetProgress().GetStep())
	success := resps[2].GetInitSuccess()
	require.NotNil(t, success)
	clusterID, ownerID := expectedIDs(t)
	assert.Equal(t, clusterID, success.GetClusterId())
	assert.Equal(t, ownerID, success.GetOwnerId())
	assert.Equal(t, "apiVersion: v1\nkind: Config\n", string(success.GetKubeconfig()))

	assert.Equal(t, []byte(measurements.PCR15ForCluster(clusterID)), pcr15(t, e), "the node lock extended PCR 15 with the cluster ID")
	assert.Equal(t, "v1.33.13", e.init.req.KubernetesVersion)
	assert.Equal(t, "kms://cluster-kms", e.init.req.KMSURI)
	assert.Equal(t, clusterID, e.init.req.ClusterID)
	select {
	case <-e.server.Finished():
	default:
		t.Fatal("Finished is not closed after the init")
	}

	// The same request again (a CLI resuming an interrupted apply, which now expects the cluster's PCR 15)
	// gets the stored result; nothing runs twice.
	resumed, err := runInit(t, e.client(t, measurements.PCR15ForCluster(clusterID)), request())
	require.NoError(t, err)
	require.Len(t, resumed, 2)
	assert.Equal(t, "resume", resumed[0].GetProgress().GetStep())
	assert.Equal(t, success.GetKubeconfig(), resumed[1].GetInitSuccess().GetKubeconfig())
	assert.Equal(t, 1, e.init.callCount())
	assert.True(t, e.server.KeepServing())

	// Another master secret (another cluster) is refused.
	other := request()
	other.MasterSecret = bytes.Repeat([]byte{0x55}, len(other.MasterSecret))
	_, err = runInit(t, e.client(t, measurements.PCR15ForCluster(clusterID)), other)
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	assert.Equal(t, 1, e.init.callCount())

	// And a CLI expecting a fresh node refuses to talk to it at all: its attestation shows the cluster.
	_, err = runInit(t, e.client(t, measurements.Zero), request())
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	assert.Equal(t, 1, e.init.callCount())
}

func TestInitRefusals(t *testing.T) {
	testCases := map[string]struct {
		metadata    Metadata
		edit        func(*initproto.InitRequest)
		validateErr error
		wantCode    codes.Code
	}{
		"wrong init secret": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.InitSecret = bytes.Repeat([]byte{0x5f}, 32) },
			wantCode: codes.PermissionDenied,
		},
		"no init secret": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.InitSecret = nil },
			wantCode: codes.PermissionDenied,
		},
		"init secret one byte short": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.InitSecret = initSecret[:31] },
			wantCode: codes.PermissionDenied,
		},
		"no hash in metadata": {
			metadata: fakeMetadata{hash: nil}, wantCode: codes.FailedPrecondition,
		},
		"metadata unreachable": {
			metadata: fakeMetadata{err: errors.New("connection refused")}, wantCode: codes.Unavailable,
		},
		"short master secret": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.MasterSecret = r.MasterSecret[:16] },
			wantCode: codes.InvalidArgument,
		},
		"no salt": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.Salt = nil },
			wantCode: codes.InvalidArgument,
		},
		"unsupported Kubernetes": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.KubernetesVersion = "v1.20.0" },
			wantCode: codes.InvalidArgument,
		},
		"cluster KMS with parameters": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.KmsUri = "kms://cluster-kms?salt=abc" },
			wantCode: codes.InvalidArgument,
		},
		"bad KMS URI": {
			metadata: goodMetadata(), edit: func(r *initproto.InitRequest) { r.KmsUri = "https://kms.example" },
			wantCode: codes.InvalidArgument,
		},
		"initializer refuses": {
			metadata: goodMetadata(), validateErr: errors.New(`cluster name "my cluster" is not a DNS name`),
			wantCode: codes.InvalidArgument,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, tc.metadata)
			e.init.validateErr = tc.validateErr
			req := request()
			if tc.edit != nil {
				tc.edit(req)
			}
			resps, err := runInit(t, e.client(t, measurements.Zero), req)
			assert.Equal(t, tc.wantCode, status.Code(err), "%v", err)
			assert.Empty(t, resps, "a refused caller learns nothing, logs included")
			assert.Zero(t, e.init.callCount())
			assert.Equal(t, []byte(measurements.Zero), pcr15(t, e), "no state changed: PCR 15 is still zero")
			select {
			case <-e.server.Finished():
				t.Fatal("Finished closed without an init")
			default:
			}
		})
	}
}

func TestInitAfterJoinTookTheLock(t *testing.T) {
	e := newEnv(t, goodMetadata())
	ok, err := e.lock.TryLock(bytes.Repeat([]byte{1}, 32))
	require.NoError(t, err)
	require.True(t, ok)
	// The CLI validates the node before it sends anything: with PCR 15 set it does not talk to it. A caller
	// that accepts any PCR 15 gets a refusal from the server.
	_, err = runInit(t, e.client(t, pcr15(t, e)), request())
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	assert.Zero(t, e.init.callCount())
}

func TestInitFailureSendsLogs(t *testing.T) {
	e := newEnv(t, goodMetadata())
	e.init.err = errors.New("kubeadm init: exit status 1")
	e.logs = append(bytes.Repeat([]byte("a line of the node's log\n"), 5000), []byte("[preflight] ERROR ImagePull\n")...)
	resps, err := runInit(t, e.client(t, measurements.Zero), request())
	require.NoError(t, err, "the failure travels in the stream")
	var failure string
	var logs []byte
	for _, r := range resps {
		if f := r.GetInitFailure(); f != nil {
			failure = f.GetError()
		}
		if l := r.GetLog(); l != nil {
			assert.LessOrEqual(t, len(l.GetLog()), logChunkSize)
			logs = append(logs, l.GetLog()...)
		}
		assert.Nil(t, r.GetInitSuccess())
	}
	assert.Equal(t, "kubeadm init: exit status 1", failure)
	assert.Equal(t, e.logs, logs, "every byte of the node's log, in order")
	assert.Greater(t, len(e.logs), logChunkSize, "the log was sent in several messages")
	<-e.server.Finished()
}

func TestInitContinuesWhenTheCallerLeaves(t *testing.T) {
	e := newEnv(t, goodMetadata())
	e.init.release = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.client(t, measurements.Zero).Init(ctx, request())
	require.NoError(t, err)
	<-e.init.started
	_, err = stream.Recv() // the first progress message
	require.NoError(t, err)
	cancel()
	close(e.init.release)
	select {
	case <-e.init.done:
	case <-time.After(10 * time.Second):
		t.Fatal("init did not finish")
	}
	<-e.server.Finished()
	e.init.mu.Lock()
	defer e.init.mu.Unlock()
	assert.Equal(t, 1, e.init.calls)
}

// TestResumeWaitsForTheRunningInit: the caller left mid-init and comes back while it still runs.
func TestResumeWaitsForTheRunningInit(t *testing.T) {
	e := newEnv(t, goodMetadata())
	e.init.release = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.client(t, measurements.Zero).Init(ctx, request())
	require.NoError(t, err)
	<-e.init.started
	_, err = stream.Recv()
	require.NoError(t, err)
	cancel()

	clusterID, _ := expectedIDs(t)
	type result struct {
		resps []*initproto.InitResponse
		err   error
	}
	done := make(chan result, 1)
	client := e.client(t, measurements.PCR15ForCluster(clusterID))
	go func() {
		resps, err := runInit(t, client, request())
		done <- result{resps, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("the resumed call returned before the init finished: %v %v", r.resps, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	close(e.init.release)
	r := <-done
	require.NoError(t, r.err)
	require.NotEmpty(t, r.resps)
	assert.NotNil(t, r.resps[len(r.resps)-1].GetInitSuccess())
	assert.Equal(t, 1, e.init.callCount())
}

func TestConcurrentInits(t *testing.T) {
	e := newEnv(t, goodMetadata())
	e.init.started = make(chan struct{}, 4)
	e.init.done = make(chan struct{}, 4)
	const callers = 4
	codesSeen := make(chan codes.Code, callers)
	successes := make(chan bool, callers)
	var wg sync.WaitGroup
	for range callers {
		client := e.client(t, measurements.Zero)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resps, err := runInit(t, client, request())
			codesSeen <- status.Code(err)
			ok := len(resps) > 0 && resps[len(resps)-1].GetInitSuccess() != nil
			successes <- ok
		}()
	}
	wg.Wait()
	close(codesSeen)
	close(successes)
	won := 0
	for ok := range successes {
		if ok {
			won++
		}
	}
	// Callers that got through the handshake before the lock either ran the init or resumed it; those
	// after it refuse the node (PCR 15 is no longer zero).
	assert.GreaterOrEqual(t, won, 1)
	assert.Equal(t, 1, e.init.callCount(), "exactly one init runs")
	for c := range codesSeen {
		assert.Contains(t, []codes.Code{codes.OK, codes.FailedPrecondition, codes.Unavailable}, c)
	}
}
