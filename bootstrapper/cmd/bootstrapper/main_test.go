package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/crypto/cryptotest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/tpm"
	localmetadata "github.com/constellation-go/constellation/localprovider/metadata"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var initSecret = bytes.Repeat([]byte{0x5e}, 32)

func metadataServer(t *testing.T) string {
	t.Helper()
	srv, err := localmetadata.NewServer(localmetadata.State{
		Instances: []localmetadata.Instance{
			{Name: "control-plane-0", Role: role.ControlPlane, IP: netip.MustParseAddr("127.0.0.1"), PodCIDR: netip.MustParsePrefix("10.244.0.0/24")},
			{Name: "control-plane-1", Role: role.ControlPlane, IP: netip.MustParseAddr("127.0.0.2"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")},
		},
		InitSecretHash: localmetadata.HashInitSecret(initSecret),
	}, nil)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := &http.Server{Handler: srv.Handler()}
	go func() { _ = hs.Serve(lis) }()
	t.Cleanup(func() { _ = hs.Close() })
	return "http://" + lis.Addr().String()
}

func freePort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type node struct {
	vtpm     *vtpmtest.Node
	args     []string
	initAddr string
	dir      string
}

func newNode(t *testing.T) *node {
	t.Helper()
	n := vtpmtest.NewNode(t, vtpmtest.Boot)
	dir := t.TempDir()
	eventLog := filepath.Join(dir, "binary_bios_measurements")
	require.NoError(t, os.WriteFile(eventLog, n.EventLog, 0o644))
	initAddr := freePort(t)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "state"), 0o755))
	return &node{vtpm: n, initAddr: initAddr, dir: dir, args: []string{
		"--tpm=" + n.Address, "--event-log=" + eventLog, "--metadata-url=" + metadataServer(t),
		"--init-addr=" + initAddr, "--state-dir=" + filepath.Join(dir, "state"), "--bin-dir=" + filepath.Join(dir, "bin"),
		"--kubelet-log=" + filepath.Join(dir, "kubelet.log"), "--cni-conf-dir=" + filepath.Join(dir, "cni"),
		"--log-format=text",
	}}
}

func start(t *testing.T, args []string) (stop func() error, logs *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, logs) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(30 * time.Second):
				result = errors.New("run did not return")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop, logs
}

func initClient(t *testing.T, addr string, pcr15 measurements.Digest) initproto.APIClient {
	t.Helper()
	refs := vtpmtest.ReferenceValues(vtpmtest.Boot)
	refs[measurements.PCRClusterID] = measurements.Measurement{Expected: pcr15}
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)})
	require.NoError(t, err)
	creds, err := atls.NewCredentials(nil, []attestation.Validator{validator})
	require.NoError(t, err)
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return initproto.NewAPIClient(conn)
}

func callInit(client initproto.APIClient, req *initproto.InitRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.Init(ctx, req)
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// TestFreshNode runs the wired bootstrapper on a real swtpm with the real metadata API: it serves Init
// over aTLS with the node's attestation (the caller validates the boot's measurements and PCR 15 zero),
// refuses a wrong init secret, keeps trying to join (no JoinService is up), and stops on cancellation.
func TestFreshNode(t *testing.T) {
	n := newNode(t)
	stop, logs := start(t, n.args)
	client := initClient(t, n.initAddr, measurements.Zero)
	m := cryptotest.MasterSecret()
	req := &initproto.InitRequest{InitSecret: bytes.Repeat([]byte{1}, 32), MasterSecret: m.Key, Salt: m.Salt, KubernetesVersion: "v1.33.13", ClusterName: "mini"}
	var err error
	require.Eventually(t, func() bool {
		err = callInit(client, req)
		return status.Code(err) != codes.Unavailable
	}, 20*time.Second, 50*time.Millisecond, "the Init API comes up: %v", err)
	assert.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)

	req.InitSecret = initSecret
	req.KubernetesVersion = "v1.20.0"
	assert.Equal(t, codes.InvalidArgument, status.Code(callInit(client, req)))

	require.Eventually(t, func() bool {
		return bytes.Contains([]byte(logs.String()), []byte("join: getting a join ticket failed; retrying"))
	}, 20*time.Second, 50*time.Millisecond, "logs:\n%s", logs)
	require.NoError(t, stop())
	out := logs.String()
	assert.Contains(t, out, "serving Init and trying to join")
	assert.Contains(t, out, "name=control-plane-0")
	assert.Contains(t, out, "podCIDR=10.244.0.0/24")

	pcrs, err := tpm.ReadPCRs(n.vtpm.TPM, []uint32{measurements.PCRClusterID})
	require.NoError(t, err)
	assert.Equal(t, []byte(measurements.Zero), pcrs[measurements.PCRClusterID], "nothing took the lock")
}

// TestLockedNode: with PCR 15 set, the bootstrapper only waits to supervise the kubelet; no Init API.
func TestLockedNode(t *testing.T) {
	n := newNode(t)
	require.NoError(t, tpm.Extend(n.vtpm.TPM, measurements.PCRClusterID, bytes.Repeat([]byte{1}, 32)))
	stop, logs := start(t, n.args)
	require.Eventually(t, func() bool {
		return bytes.Contains([]byte(logs.String()), []byte("waiting for kubeadm to write the kubelet configuration"))
	}, 20*time.Second, 50*time.Millisecond)
	_, err := net.DialTimeout("tcp", n.initAddr, time.Second)
	require.Error(t, err, "no Init API on a locked node")
	require.NoError(t, stop())
	assert.Contains(t, logs.String(), "PCR 15 is set")
	_, err = os.Stat(filepath.Join(n.dir, "cni", "10-constellation.conflist"))
	require.NoError(t, err, "the CNI configuration is written")
}

func TestFlags(t *testing.T) {
	_, err := parseFlags(nil)
	require.ErrorContains(t, err, "--metadata-url")
	t.Setenv("BOOTSTRAPPER_METADATA_URL", "http://10.42.0.1:9080")
	t.Setenv("BOOTSTRAPPER_NODE_IP", "10.42.0.3")
	f, err := parseFlags([]string{"--node-name=w0"})
	require.NoError(t, err)
	assert.Equal(t, "http://10.42.0.1:9080", f.metadataURL)
	assert.Equal(t, "w0", f.nodeName)
	assert.Equal(t, cloudprovider.Local, f.cloudProvider)

	_, err = parseFlags([]string{"--cloud-provider=moon"})
	require.ErrorContains(t, err, "--cloud-provider")
	assert.Equal(t, ":9000", f.initAddr)
}
