package kubetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestCluster starts one cluster, checks what can be done with it in subtests, and after it has been torn
// down checks that nothing was left behind.
func TestCluster(t *testing.T) {
	var c *Cluster
	t.Run("start", func(t *testing.T) {
		c = Start(t)
		require.True(t, c.started)

		t.Run("admin", func(t *testing.T) { testAdmin(t, c) })
		t.Run("kubeconfig for user", func(t *testing.T) { testKubeconfigFor(t, c) })
		t.Run("bootstrap token", func(t *testing.T) { testBootstrapToken(t, c) })
		t.Run("crash", func(t *testing.T) { testCrash(t, c) })
	})
	if c == nil || !c.started {
		return // skipped or failed to start
	}

	for _, p := range []*process{c.apiserver, c.etcd} {
		assert.True(t, p.exited(), "%s still running after cleanup", p.name)
		err := syscall.Kill(-p.cmd.Process.Pid, 0)
		assert.ErrorIs(t, err, syscall.ESRCH, "process group of %s still exists", p.name)
	}
	_, err := os.Stat(c.dir)
	assert.ErrorIs(t, err, os.ErrNotExist, "%s not removed", c.dir)
}

// testCrash: a crashed etcd or kube-apiserver comes back on the same ports with its data.
func testCrash(t *testing.T, c *Cluster) {
	ctx := context.Background()
	_, err := c.Client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "survivor"}, Data: map[string]string{"k": "v"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	for _, component := range []string{APIServer, Etcd} {
		c.Crash(t, component, 100*time.Millisecond)
		require.Eventually(t, func() bool {
			cm, err := c.Client.CoreV1().ConfigMaps("default").Get(ctx, "survivor", metav1.GetOptions{})
			return err == nil && cm.Data["k"] == "v"
		}, 30*time.Second, 100*time.Millisecond, "the data after %s crashed", component)
	}
}

func testAdmin(t *testing.T, c *Cluster) {
	ctx := context.Background()
	review, err := c.Client.AuthenticationV1().SelfSubjectReviews().Create(ctx,
		&authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	require.NoError(t, err)
	assert.Equal(t, AdminUser, review.Status.UserInfo.Username)
	assert.Contains(t, review.Status.UserInfo.Groups, "system:masters")

	// The kubeconfig holds the same credentials.
	cfg, err := clientcmd.RESTConfigFromKubeConfig(c.Kubeconfig)
	require.NoError(t, err)
	assert.Equal(t, c.Endpoint, cfg.Host)
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	_, err = client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
	require.NoError(t, err)

	// The clients trust exactly the cluster CA, so the serving certificate is signed by it.
	assert.Equal(t, c.CACertPEM, c.Config.CAData)
	assert.True(t, c.CACert.IsCA)
}

func testKubeconfigFor(t *testing.T, c *Cluster) {
	ctx := context.Background()
	cfg, err := clientcmd.RESTConfigFromKubeConfig(c.KubeconfigFor(t, "alice", []string{"team-a", "team-b"}))
	require.NoError(t, err)
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)

	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx,
		&authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	require.NoError(t, err)
	assert.Equal(t, "alice", review.Status.UserInfo.Username)
	assert.Subset(t, review.Status.UserInfo.Groups, []string{"team-a", "team-b", "system:authenticated"})

	// RBAC is on: alice has no permission to list secrets.
	_, err = client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
	assert.True(t, apierrors.IsForbidden(err), "listing secrets as alice: %v", err)
}

// testBootstrapToken creates a kubeadm-format bootstrap token and checks that the apiserver authenticates
// it as system:bootstrap:<id>, and rejects a wrong secret with 401.
func testBootstrapToken(t *testing.T, c *Cluster) {
	ctx := context.Background()
	id, secret := randomToken(6), randomToken(16)
	_, err := c.Client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + id, Namespace: metav1.NamespaceSystem},
		Type:       corev1.SecretTypeBootstrapToken,
		StringData: map[string]string{
			"token-id":                       id,
			"token-secret":                   secret,
			"usage-bootstrap-authentication": "true",
			"usage-bootstrap-signing":        "true",
			"auth-extra-groups":              "system:bootstrappers:kubeadm:default-node-token",
			"expiration":                     time.Now().Add(15 * time.Minute).UTC().Format(time.RFC3339),
			"description":                    "kubetest",
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	tokenClient := func(token string) kubernetes.Interface {
		client, err := kubernetes.NewForConfig(&rest.Config{
			Host:            c.Endpoint,
			BearerToken:     token,
			TLSClientConfig: rest.TLSClientConfig{CAData: c.CACertPEM},
		})
		require.NoError(t, err)
		return client
	}
	review := func(client kubernetes.Interface) (*authenticationv1.SelfSubjectReview, error) {
		return client.AuthenticationV1().SelfSubjectReviews().Create(ctx,
			&authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	}

	// The authenticator reads the secret through an informer: it may take a moment to see it.
	good := tokenClient(id + "." + secret)
	var got *authenticationv1.SelfSubjectReview
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		got, err = review(good)
		assert.NoError(ct, err)
	}, 20*time.Second, 100*time.Millisecond)
	assert.Equal(t, "system:bootstrap:"+id, got.Status.UserInfo.Username)
	for _, g := range []string{
		"system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated",
	} {
		assert.True(t, slices.Contains(got.Status.UserInfo.Groups, g), "group %s missing from %v", g, got.Status.UserInfo.Groups)
	}

	wrongSecret := randomToken(16)
	for wrongSecret == secret {
		wrongSecret = randomToken(16)
	}
	_, err = review(tokenClient(id + "." + wrongSecret))
	require.Error(t, err)
	var status apierrors.APIStatus
	require.True(t, errors.As(err, &status), "not an API status error: %v", err)
	assert.EqualValues(t, 401, status.Status().Code, "wrong secret: %v", err)
	assert.True(t, apierrors.IsUnauthorized(err))

	// An unknown token id is rejected too.
	_, err = review(tokenClient(randomToken(6) + "." + secret))
	assert.True(t, apierrors.IsUnauthorized(err), "unknown token id: %v", err)
}

// randomToken returns n characters of [a-z0-9], the alphabet of bootstrap token ids and secrets.
func randomToken(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		// 252 = 7*36: rejecting bytes above it keeps the distribution uniform.
		for {
			var r [1]byte
			_, _ = rand.Read(r[:])
			if r[0] < 252 {
				b[i] = alphabet[int(r[0])%len(alphabet)]
				break
			}
		}
	}
	return string(b)
}

func TestBinDir(t *testing.T) {
	t.Setenv("CONSTELLATION_KUBE_BIN", "/some/dir")
	assert.Equal(t, "/some/dir", BinDir())
	t.Setenv("CONSTELLATION_KUBE_BIN", "")
	t.Setenv("CONSTELLATION_CACHE", "/cache")
	assert.Equal(t, "/cache/kubernetes/v1.33.13/bin", BinDir())
	t.Setenv("CONSTELLATION_CACHE", "")
	assert.Equal(t, "/var/cache/constellation/kubernetes/v1.33.13/bin", BinDir())
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(10)
	_, _ = b.Write([]byte("line1\nline2\n"))
	assert.Equal(t, "[...]\nne1\nline2", b.Tail(5))
	_, _ = b.Write([]byte("0123456789abc"))
	assert.Equal(t, "[...]\n3456789abc", b.Tail(5))
	b = newTailBuffer(100)
	_, _ = b.Write([]byte("a\nb\nc\n"))
	assert.Equal(t, "a\nb\nc", b.Tail(5))
	assert.Equal(t, "[...]\nb\nc", b.Tail(2))
}

// TestStartRetriesOnPortInUse hands Start a port that is taken: it must start on other ports.
func TestStartRetriesOnPortInUse(t *testing.T) {
	requireBinaries(t, BuildCommand, filepath.Join(BinDir(), "etcd"), filepath.Join(BinDir(), "kube-apiserver"))
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port

	calls := 0
	orig := pickPorts
	pickPorts = func(n int) ([]int, error) {
		calls++
		ports, err := orig(n)
		if calls == 1 && err == nil {
			ports[n-1] = takenPort // the apiserver's secure port
		}
		return ports, err
	}
	t.Cleanup(func() { pickPorts = orig })

	c := Start(t)
	assert.Equal(t, 2, calls)
	assert.NotEqual(t, "https://127.0.0.1:"+strconv.Itoa(takenPort), c.Endpoint)
	_, err = c.Client.CoreV1().Namespaces().Get(context.Background(), metav1.NamespaceDefault, metav1.GetOptions{})
	require.NoError(t, err)
}

// TestStartFailureMessage runs a kube-apiserver that exits at once: Start must fail with its output, and
// leave nothing behind.
func TestStartFailureMessage(t *testing.T) {
	requireBinaries(t, BuildCommand, filepath.Join(BinDir(), "etcd"), filepath.Join(BinDir(), "kube-apiserver"))
	bin := t.TempDir()
	require.NoError(t, os.Symlink(filepath.Join(BinDir(), "etcd"), filepath.Join(bin, "etcd")))
	script := "#!/bin/sh\necho 'fake kube-apiserver: something is wrong' >&2\nexit 3\n"
	require.NoError(t, os.WriteFile(filepath.Join(bin, "kube-apiserver"), []byte(script), 0o755))
	t.Setenv("CONSTELLATION_KUBE_BIN", bin)

	ft := &fatalTB{TB: t}
	var c *Cluster
	done := make(chan struct{})
	go func() {
		defer close(done)
		c = Start(ft)
	}()
	<-done
	require.Nil(t, c)
	require.Len(t, ft.fatals, 1)
	msg := ft.fatals[0]
	assert.Contains(t, msg, "kube-apiserver exited during startup")
	assert.Contains(t, msg, "exit status 3")
	assert.Contains(t, msg, "fake kube-apiserver: something is wrong")
	assert.NotContains(t, msg, errAddrInUse.Error())
}

// fatalTB records Fatal calls and ends the calling goroutine instead of failing the test.
type fatalTB struct {
	testing.TB
	fatals []string
}

func (f *fatalTB) Fatal(args ...any) {
	f.fatals = append(f.fatals, fmt.Sprint(args...))
	runtime.Goexit()
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
	runtime.Goexit()
}
