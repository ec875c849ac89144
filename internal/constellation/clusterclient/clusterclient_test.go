package clusterclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/verify/verifytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// closedAddress is a loopback address nothing listens on.
func closedAddress(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

func TestAttest(t *testing.T) {
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{
		Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot).WithFreshNode(), AKRoots: vtpmtest.AKRoots(t),
	})
	require.NoError(t, err)
	tampered := vtpmtest.WithEvent(vtpmtest.Boot, 3, vtpmtest.Event{PCR: 9, Type: eventlog.EvIPL, Data: "console=ttyS0 init=/bin/sh"})

	testCases := map[string]struct {
		answers      string // the name of the node behind the address; "" for nothing listening
		events       []vtpmtest.Event
		ask          string
		wantAnswered string
		wantErr      error
		wantMismatch bool
	}{
		"the node asked":               {answers: "worker-1", events: vtpmtest.Boot, ask: "worker-1", wantAnswered: "worker-1"},
		"whichever node, by endpoint":  {answers: "cp-0", events: vtpmtest.Boot, ask: "", wantAnswered: "cp-0"},
		"another node answers":         {answers: "worker-2", events: vtpmtest.Boot, ask: "worker-1", wantAnswered: "worker-2", wantErr: ErrNotBound},
		"a node that booted otherwise": {answers: "worker-1", events: tampered, ask: "worker-1", wantMismatch: true},
		"nothing listens":              {ask: "worker-1", wantErr: ErrUnreachable},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			endpoint := closedAddress(t)
			if tc.answers != "" {
				endpoint, _ = verifytest.ServeNode(t, tc.answers, tc.events)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			answered, err := Attest(ctx, GRPC{}, endpoint, tc.ask, validator)
			switch {
			case tc.wantMismatch:
				var verr *attestation.ValidationError
				require.ErrorAs(t, err, &verr)
				assert.NotEmpty(t, verr.Mismatches)
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
			default:
				require.NoError(t, err)
			}
			if tc.wantAnswered != "" {
				assert.Equal(t, tc.wantAnswered, answered)
			}
		})
	}
}

// fakeValidator only names which reference values a call used; fakeIniter decides by it.
type fakeValidator struct{ name string }

func (fakeValidator) Variant() variant.Variant { return variant.QEMUVTPM }
func (fakeValidator) Validate(context.Context, []byte, []byte) ([]byte, error) {
	return nil, errors.New("not used")
}

var (
	fresh  = fakeValidator{name: "fresh"}
	resume = fakeValidator{name: "resume"}
)

type fakeIniter struct {
	booting int              // refused connections before the API listens
	accepts map[string]bool  // validators whose handshake succeeds
	failure *InitFailedError // what an accepted init reports instead of success
	cutOff  error            // how the connection of an accepted init ends after its progress
	resp    *initproto.InitSuccessResponse
	calls   []string
}

var errNotFresh = status.Error(codes.Unavailable, "aTLS handshake: validating qemu-vtpm attestation: PCR 15 differs")

func (f *fakeIniter) Init(_ context.Context, _ string, v attestation.Validator, _ *initproto.InitRequest,
	progress func(step, message string),
) (*initproto.InitSuccessResponse, error) {
	name := v.(fakeValidator).name
	f.calls = append(f.calls, name)
	if f.booting > 0 {
		f.booting--
		return nil, status.Error(codes.Unavailable, "dial tcp 10.42.0.2:9000: connect: connection refused")
	}
	if !f.accepts[name] {
		return nil, errNotFresh
	}
	progress("kubeadm", "init")
	if f.cutOff != nil {
		return nil, f.cutOff
	}
	if f.failure != nil {
		return nil, f.failure
	}
	return f.resp, nil
}

func TestInit(t *testing.T) {
	id := crypto.Identity{ClusterID: []byte("cluster"), OwnerID: []byte("owner")}
	ok := &initproto.InitSuccessResponse{ClusterId: id.ClusterID, OwnerId: id.OwnerID, Kubeconfig: []byte("kubeconfig")}
	testCases := map[string]struct {
		initer     *fakeIniter
		resume     bool
		wantCalls  []string
		wantErr    error
		wantFailed bool
		wantNotice string
	}{
		"a fresh node": {
			initer: &fakeIniter{accepts: map[string]bool{"fresh": true}, resp: ok}, resume: true, wantCalls: []string{"fresh"},
		},
		"a booting node": {
			initer:    &fakeIniter{booting: 2, accepts: map[string]bool{"fresh": true}, resp: ok},
			wantCalls: []string{"fresh", "fresh", "fresh"}, wantNotice: "still booting",
		},
		"an interrupted init of this master secret resumes": {
			initer: &fakeIniter{accepts: map[string]bool{"resume": true}, resp: ok}, resume: true,
			wantCalls: []string{"fresh", "resume"}, wantNotice: "not fresh",
		},
		"a node that is not fresh, with a new master secret": {
			initer:    &fakeIniter{accepts: map[string]bool{"resume": true}, resp: ok},
			wantCalls: []string{"fresh"}, wantErr: errNotFresh,
		},
		"a failure the node reported is final": {
			initer: &fakeIniter{accepts: map[string]bool{"fresh": true}, failure: &InitFailedError{Message: "kubeadm init failed", Logs: []byte("boom")}},
			resume: true, wantCalls: []string{"fresh"}, wantFailed: true,
		},
		"a node that stops answering during its init (a power cut)": {
			initer: &fakeIniter{accepts: map[string]bool{"fresh": true}, cutOff: status.Error(codes.Unavailable, "error reading from server: EOF")},
			resume: true, wantCalls: []string{"fresh", "resume"}, wantErr: ErrInitCutOff,
		},
		"a node that derives another identity": {
			initer:    &fakeIniter{accepts: map[string]bool{"fresh": true}, resp: &initproto.InitSuccessResponse{ClusterId: []byte("other"), OwnerId: id.OwnerID}},
			wantCalls: []string{"fresh"}, wantErr: ErrWrongIdentity,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			var notices, steps []string
			r := InitRequest{
				Endpoint: "10.42.0.2:9000", Request: &initproto.InitRequest{}, Fresh: fresh, Identity: id,
				Progress: func(step, msg string) { steps = append(steps, step+": "+msg) },
				Notice:   func(msg string) { notices = append(notices, msg) },
			}
			if tc.resume {
				r.Resume = resume
			}
			resp, err := Init(context.Background(), tc.initer, Booting{Wait: time.Second, Poll: time.Millisecond}, r)
			assert.Equal(t, tc.wantCalls, tc.initer.calls)
			if tc.wantNotice != "" {
				require.NotEmpty(t, notices)
				assert.Contains(t, notices[0], tc.wantNotice)
			}
			switch {
			case tc.wantFailed:
				var failed *InitFailedError
				require.ErrorAs(t, err, &failed)
				assert.Equal(t, []byte("boom"), failed.Logs)
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
				assert.Nil(t, resp)
			default:
				require.NoError(t, err)
				assert.Equal(t, []byte("kubeconfig"), resp.GetKubeconfig())
				assert.Equal(t, []string{"kubeadm: init"}, steps)
			}
		})
	}
}

func TestBootingDo(t *testing.T) {
	refused := status.Error(codes.Unavailable, "connection refused")
	b := Booting{Wait: 50 * time.Millisecond, Poll: time.Millisecond}

	// A node that never listens: the wait ends with what to check.
	_, err := b.Do(context.Background(), "the node's Init API", nil, func() error { return refused }, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is the node booted?")

	// done ends the wait early: the node runs otherwise (recover: its VerificationService answers).
	ended, err := b.Do(context.Background(), "the Recovery API", nil, func() error { return refused }, func() bool { return true })
	require.NoError(t, err)
	assert.True(t, ended)

	// Any other error is returned at once, and told once that it waits.
	other := errors.New("handshake failed")
	calls, told := 0, 0
	_, err = b.Do(context.Background(), "x", func(string) { told++ }, func() error {
		calls++
		if calls < 3 {
			return refused
		}
		return other
	}, nil)
	require.ErrorIs(t, err, other)
	assert.Equal(t, 3, calls)
	assert.Equal(t, 1, told)

	// A cancelled context ends the wait.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Booting{Wait: time.Minute, Poll: time.Minute}.Do(ctx, "x", nil, func() error { return refused }, nil)
	require.ErrorIs(t, err, context.Canceled)
}

func TestNewInitRequest(t *testing.T) {
	var refsAsked []measurements.M
	cfg := func() InitConfig {
		refsAsked = nil
		return InitConfig{
			Endpoint: "10.42.0.2", APIServerCertSANs: []string{"cluster.example"}, MasterSecret: *cryptotest.MasterSecret(),
			InitSecret: []byte("init"), ClusterName: "c", KubernetesVersion: "v1.33.13", KMSURI: "kms://cluster-kms",
			Attestation: config.AttestationConfig{Variant: "qemu-vtpm", Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot)},
			Validator: func(refs measurements.M) (attestation.Validator, error) {
				refsAsked = append(refsAsked, refs)
				return fakeValidator{name: fmt.Sprint(len(refsAsked))}, nil
			},
		}
	}

	c := cfg()
	r, err := NewInitRequest(c)
	require.NoError(t, err)
	assert.Equal(t, "10.42.0.2:9000", r.Endpoint)
	assert.Equal(t, []string{"cluster.example", "10.42.0.2"}, r.Request.ApiserverCertSans, "the endpoint is a name of the API server")
	id, err := c.MasterSecret.Identity()
	require.NoError(t, err)
	assert.Equal(t, id, r.Identity)
	assert.Nil(t, r.Resume, "a new master secret accepts only a fresh node")
	assert.Nil(t, r.Request.KmsCredentials)
	require.Len(t, refsAsked, 2)
	assert.Equal(t, make(measurements.Digest, measurements.DigestSize), refsAsked[0][measurements.PCRClusterID].Expected, "a fresh node shows PCR 15 zero")
	assert.NotEqual(t, refsAsked[0][measurements.PCRClusterID].Expected, refsAsked[1][measurements.PCRClusterID].Expected)
	var att config.AttestationConfig
	require.NoError(t, yaml.Unmarshal(r.Request.AttestationConfig, &att))
	assert.Equal(t, "qemu-vtpm", att.Variant, "the node gets the admin's attestation section")

	c = cfg()
	c.Resuming, c.APIServerCertSANs = true, []string{"10.42.0.2"}
	c.KMSCredentials = &awskms.Credentials{AccessKeyID: "AKID", SecretAccessKey: "secret"}
	r, err = NewInitRequest(c)
	require.NoError(t, err)
	assert.Equal(t, fakeValidator{name: "2"}, r.Resume, "resuming accepts a node of this cluster too")
	assert.Equal(t, []string{"10.42.0.2"}, r.Request.ApiserverCertSans)
	assert.Equal(t, "AKID", r.Request.KmsCredentials.GetAccessKeyId())

	c = cfg()
	c.Validator = func(measurements.M) (attestation.Validator, error) { return nil, errors.New("no such variant") }
	_, err = NewInitRequest(c)
	require.ErrorContains(t, err, "no such variant")
}
