package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/localprovider/cluster"
	"github.com/constellation-go/constellation/localprovider/localtest"
	"github.com/constellation-go/constellation/localprovider/metadata"
	"github.com/constellation-go/constellation/localprovider/network"
)

func TestMain(m *testing.M) {
	// The daemon is this test binary, started again.
	Main()
	os.Exit(m.Run())
}

func servicesDir(t *testing.T) string {
	dir := t.TempDir()
	for _, s := range versions.Services {
		require.NoError(t, os.WriteFile(filepath.Join(dir, s+".tar"), []byte(s), 0o644))
	}
	return dir
}

// newNetwork creates a bridge for a unique cluster name.
func newNetwork(t *testing.T) (string, *network.Network) {
	t.Helper()
	cluster := localtest.ClusterName(t)
	for range 10 {
		nw, err := network.New(network.Config{Cluster: cluster, BridgeCIDR: localtest.BridgeCIDR(t)})
		require.NoError(t, err)
		if err := nw.Create(); errors.Is(err, network.ErrConflict) {
			continue
		} else {
			require.NoError(t, err)
		}
		t.Cleanup(func() {
			assert.NoError(t, nw.Destroy())
			left, err := network.Remains(cluster)
			assert.NoError(t, err)
			assert.Empty(t, left)
		})
		return cluster, nw
	}
	t.Fatal("no free bridge prefix")
	return "", nil
}

func TestDaemonServesAndReloads(t *testing.T) {
	testenv.NeedRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, nw := newNetwork(t)
	spec := Spec{
		Cluster: cluster, BridgeCIDR: nw.Config().BridgeCIDR, KubernetesVersion: versions.DefaultKubernetes,
		ServicesDir: servicesDir(t), InitSecretHash: metadata.HashInitSecret([]byte("secret")),
	}
	require.NoError(t, WriteSpec(spec))
	t.Cleanup(func() {
		assert.NoError(t, Stop(context.Background(), cluster))
		_, running := Running(cluster)
		assert.False(t, running)
		assert.NoError(t, Remove(cluster))
		assert.NoDirExists(t, Dir(cluster))
	})

	require.NoError(t, Start(ctx, cluster, ""))
	first, running := Running(cluster)
	require.True(t, running)
	require.NoError(t, Start(ctx, cluster, ""), "starting a running daemon reloads it")
	again, _ := Running(cluster)
	assert.Equal(t, first, again, "a second Start must not start a second daemon")

	// A node registered after the daemon started is what the metadata API tells that node.
	node, err := nw.AddNode("w-0", 1)
	require.NoError(t, err)
	require.NoError(t, AddInstance(cluster, metadata.Instance{Name: "w-0", Role: role.Worker, IP: node.IP, PodCIDR: node.PodCIDR}))
	require.NoError(t, Reload(cluster))
	transport := &http.Transport{DialContext: node.DialContext}
	defer transport.CloseIdleConnections()
	client := metadata.NewClient("http://"+nw.BridgeAddr().String()+":9080", &http.Client{Transport: transport, Timeout: 5 * time.Second})
	require.Eventually(t, func() bool {
		self, err := client.Self(ctx)
		return err == nil && self.Name == "w-0"
	}, 10*time.Second, 100*time.Millisecond, "the reloaded daemon does not know the node")
	hash, err := client.InitSecretHash(ctx)
	require.NoError(t, err)
	assert.Equal(t, spec.InitSecretHash, hash)

	// Unregistered: the API no longer knows it.
	require.NoError(t, RemoveInstance(cluster, "w-0"))
	require.NoError(t, Reload(cluster))
	require.Eventually(t, func() bool {
		_, err := client.Self(ctx)
		return err != nil
	}, 10*time.Second, 100*time.Millisecond)
}

func TestDaemonStartFailureIsReported(t *testing.T) {
	testenv.NeedRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cluster, nw := newNetwork(t)
	// No service images: the daemon cannot serve them and must say so instead of pretending to run.
	require.NoError(t, WriteSpec(Spec{
		Cluster: cluster, BridgeCIDR: nw.Config().BridgeCIDR, KubernetesVersion: versions.DefaultKubernetes,
		ServicesDir: t.TempDir(), InitSecretHash: metadata.HashInitSecret([]byte("secret")),
	}))
	t.Cleanup(func() { assert.NoError(t, Remove(cluster)) })
	err := Start(ctx, cluster, "")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "joinservice")
	assert.Contains(t, err.Error(), LogFile(cluster))
	_, running := Running(cluster)
	assert.False(t, running)
}

// TestDaemonLocalKMS serves the local KMS and restarts the daemon with it, then without it: the keys, and
// what they encrypted, outlive both restarts; only Remove deletes them.
func TestDaemonLocalKMS(t *testing.T) {
	testenv.NeedRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	clusterName, nw := newNetwork(t)
	spec := Spec{
		Cluster: clusterName, BridgeCIDR: nw.Config().BridgeCIDR, KubernetesVersion: versions.DefaultKubernetes,
		ServicesDir: servicesDir(t), InitSecretHash: metadata.HashInitSecret([]byte("secret")), LocalKMS: true,
	}
	require.NoError(t, WriteSpec(spec))
	t.Cleanup(func() {
		assert.NoError(t, Stop(context.Background(), clusterName))
		assert.NoError(t, Remove(clusterName))
		assert.NoDirExists(t, KMSDir(clusterName))
		assert.NoDirExists(t, Dir(clusterName))
	})
	restart := func(t *testing.T) {
		t.Helper()
		require.NoError(t, Stop(ctx, clusterName))
		require.NoError(t, Start(ctx, clusterName, ""))
	}

	require.NoError(t, Start(ctx, clusterName, ""))
	endpoint := cluster.KMSURL(nw.BridgeAddr())
	assert.Equal(t, "http://"+netip.AddrPortFrom(nw.BridgeAddr(), localkms.Port).String(), endpoint)
	client := localkms.Client(endpoint)
	// The daemon made the key before it was ready.
	described, err := client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(localkms.DefaultAlias)})
	require.NoError(t, err)
	keyID := aws.ToString(described.KeyMetadata.KeyId)
	dk, err := client.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(localkms.DefaultAlias), NumberOfBytes: aws.Int32(32)})
	require.NoError(t, err)

	restart(t)
	again, err := localkms.EnsureKey(ctx, endpoint, localkms.DefaultAlias)
	require.NoError(t, err)
	assert.Equal(t, keyID, again, "a restarted daemon made a new key")
	out, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, dk.Plaintext, out.Plaintext)

	// Off: nothing listens, the keys stay.
	spec.LocalKMS = false
	require.NoError(t, WriteSpec(spec))
	restart(t)
	_, err = client.ListKeys(ctx, &kms.ListKeysInput{})
	assert.Error(t, err, "the KMS still serves")
	assert.DirExists(t, KMSDir(clusterName))

	spec.LocalKMS = true
	require.NoError(t, WriteSpec(spec))
	restart(t)
	out, err = client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, dk.Plaintext, out.Plaintext)
}

func TestDaemonLocalKMSFailureIsReported(t *testing.T) {
	testenv.NeedRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clusterName, nw := newNetwork(t)
	addr := netip.AddrPortFrom(nw.BridgeAddr(), localkms.Port).String()
	taken, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	defer taken.Close()
	require.NoError(t, WriteSpec(Spec{
		Cluster: clusterName, BridgeCIDR: nw.Config().BridgeCIDR, KubernetesVersion: versions.DefaultKubernetes,
		ServicesDir: servicesDir(t), InitSecretHash: metadata.HashInitSecret([]byte("secret")), LocalKMS: true,
	}))
	t.Cleanup(func() { assert.NoError(t, Remove(clusterName)) })
	err = Start(ctx, clusterName, "")
	require.Error(t, err)
	t.Log(err)
	assert.Contains(t, err.Error(), "local KMS")
	assert.Contains(t, err.Error(), addr)
	_, running := Running(clusterName)
	assert.False(t, running)
}
