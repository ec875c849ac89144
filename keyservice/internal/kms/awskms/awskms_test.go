package awskms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/testenv"
)

// localKMSModule is the AWS KMS API implementation the tests run (github.com/nsmithuk/local-kms).
const localKMSModule = "github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6"

var localKMSBuild struct {
	once sync.Once
	path string
	err  error
}

// localKMSBinary returns local-kms: $CONSTELLATION_LOCAL_KMS, or built from the Go module proxy once per
// test binary.
func localKMSBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CONSTELLATION_LOCAL_KMS"); p != "" {
		return p
	}
	if testenv.UnderBazel() {
		t.Skip("skipped under bazel test: local-kms is built from the Go module proxy (make go-test runs it)")
	}
	goBin := testenv.Need(t, "install Go", "go", "/usr/local/go/bin/go")
	localKMSBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "local-kms-")
		if err != nil {
			localKMSBuild.err = err
			return
		}
		cmd := exec.Command(goBin, "install", localKMSModule)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			localKMSBuild.err = fmt.Errorf("building local-kms: %w\n%s", err, out)
			return
		}
		localKMSBuild.path = filepath.Join(dir, "local-kms")
	})
	if localKMSBuild.err != nil {
		testenv.SkipOrFail(t, localKMSBuild.err.Error())
	}
	return localKMSBuild.path
}

// localKMS is a running local-kms with its keys in dataDir.
type localKMS struct {
	cmd      *exec.Cmd
	endpoint string
	dataDir  string
	bin      string
	port     int
}

func startLocalKMS(t *testing.T) *localKMS {
	t.Helper()
	l := &localKMS{bin: localKMSBinary(t), dataDir: t.TempDir()}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l.port = lis.Addr().(*net.TCPAddr).Port
	require.NoError(t, lis.Close())
	l.start(t)
	t.Cleanup(l.stop)
	return l
}

func (l *localKMS) start(t *testing.T) {
	t.Helper()
	l.cmd = exec.Command(l.bin)
	l.cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", l.port), "KMS_DATA_PATH="+l.dataDir,
		"KMS_REGION=eu-west-1", "KMS_ACCOUNT_ID=111122223333")
	require.NoError(t, l.cmd.Start())
	l.endpoint = fmt.Sprintf("http://127.0.0.1:%d", l.port)
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", l.port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "local-kms did not listen")
}

func (l *localKMS) stop() {
	if l.cmd != nil && l.cmd.Process != nil {
		_ = l.cmd.Process.Kill()
		_ = l.cmd.Wait()
		l.cmd = nil
	}
}

func (l *localKMS) client() *kms.Client {
	return kms.New(kms.Options{
		Region: "eu-west-1", BaseEndpoint: aws.String(l.endpoint),
		Credentials:      aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", "")),
		RetryMaxAttempts: 1,
	})
}

func (l *localKMS) createKey(t *testing.T) string {
	t.Helper()
	out, err := l.client().CreateKey(context.Background(), &kms.CreateKeyInput{})
	require.NoError(t, err)
	return aws.ToString(out.KeyMetadata.KeyId)
}

// memStore is a Store in memory.
type memStore struct {
	mu    sync.Mutex
	blobs map[string][]byte
}

func newMemStore() *memStore { return &memStore{blobs: map[string][]byte{}} }

func (s *memStore) Get(_ context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[name]
	if !ok {
		return nil, ErrNotFound
	}
	return bytes.Clone(b), nil
}

func (s *memStore) Create(_ context.Context, name string, blob []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.blobs[name]; ok {
		return ErrExists
	}
	s.blobs[name] = bytes.Clone(blob)
	return nil
}

func (s *memStore) Update(_ context.Context, name string, blob []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[name] = bytes.Clone(blob)
	return nil
}

func (s *memStore) List(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n := range s.blobs {
		names = append(names, n)
	}
	return names, nil
}

const diskID = "00000000-0000-0000-0000-000000000042"

// newBackend starts local-kms with a new key and returns a backend on it with an empty store.
func newBackend(t *testing.T) (*localKMS, string, *memStore, *Backend) {
	t.Helper()
	l := startLocalKMS(t)
	keyID := l.createKey(t)
	store := newMemStore()
	b, err := New(l.client(), keyID, store)
	require.NoError(t, err)
	return l, keyID, store, b
}

func TestDataKeys(t *testing.T) {
	l, keyID, store, b := newBackend(t)
	ctx := context.Background()

	k1, err := b.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Len(t, k1, 64)
	again, err := b.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Equal(t, k1, again, "the same ID gives the same key")
	other, err := b.GetDEK(ctx, "measurementSecret", 32)
	require.NoError(t, err)
	assert.Len(t, other, 32)
	assert.NotEqual(t, k1[:32], other)

	// Only wrapped keys are kept.
	blob, err := store.Get(ctx, storeName(diskID, 64))
	require.NoError(t, err)
	assert.False(t, bytes.Contains(blob, k1), "the store holds the key only wrapped")

	// The KeyService restarts: the same store gives the same keys.
	restarted, err := New(l.client(), keyID, store)
	require.NoError(t, err)
	k1After, err := restarted.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Equal(t, k1, k1After)

	// A blob moved to another ID's entry does not unwrap as that ID's key.
	require.NoError(t, store.Update(ctx, storeName("11111111-0000-0000-0000-000000000000", 64), blob))
	_, err = b.GetDEK(ctx, "11111111-0000-0000-0000-000000000000", 64)
	require.ErrorContains(t, err, "did not unwrap data key 11111111-0000-0000-0000-000000000000")

	_, err = b.GetDEK(ctx, diskID, 0)
	require.Error(t, err)
	_, err = New(l.client(), "", store)
	require.Error(t, err)
}

func TestConcurrentFirstRequests(t *testing.T) {
	l := startLocalKMS(t)
	b, err := New(l.client(), l.createKey(t), newMemStore())
	require.NoError(t, err)
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := b.GetDEK(context.Background(), diskID, 64)
			assert.NoError(t, err)
			keys[i] = k
		}()
	}
	wg.Wait()
	for _, k := range keys[1:] {
		assert.Equal(t, keys[0], k, "every concurrent first request gets the one stored key")
	}
}

// TestRotation: moving to another KMS key re-wraps the stored keys without changing them; the old key can
// then be disabled.
func TestRotation(t *testing.T) {
	l := startLocalKMS(t)
	oldKey, newKey := l.createKey(t), l.createKey(t)
	store := newMemStore()
	b, err := New(l.client(), oldKey, store)
	require.NoError(t, err)
	ctx := context.Background()
	disk, err := b.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)
	secret, err := b.GetDEK(ctx, "measurementSecret", 32)
	require.NoError(t, err)
	before, _ := store.Get(ctx, storeName(diskID, 64))

	require.NoError(t, b.Rewrap(ctx, newKey))
	after, _ := store.Get(ctx, storeName(diskID, 64))
	assert.NotEqual(t, before, after, "re-wrapped")
	_, err = l.client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(oldKey)})
	require.NoError(t, err)

	fresh, err := New(l.client(), newKey, store)
	require.NoError(t, err)
	got, err := fresh.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Equal(t, disk, got, "the disk still unlocks after the rotation")
	got, err = fresh.GetDEK(ctx, "measurementSecret", 32)
	require.NoError(t, err)
	assert.Equal(t, secret, got)
	require.NoError(t, fresh.Rewrap(ctx, newKey), "re-running a finished rotation is harmless")
}

// TestOutagesAndRefusals: the KMS down or refusing gives an error naming the KMS and the reason, nothing
// stored changes, and the same key comes back once the KMS is back.
func TestOutagesAndRefusals(t *testing.T) {
	l, keyID, store, b := newBackend(t)
	ctx := context.Background()
	want, err := b.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)

	l.stop()
	_, err = b.GetDEK(ctx, diskID, 64)
	require.ErrorContains(t, err, "the KMS (key "+keyID+") did not unwrap data key "+diskID)
	_, err = b.GetDEK(ctx, "new-id", 64)
	require.ErrorContains(t, err, "did not generate data key new-id")
	_, err = store.Get(ctx, storeName("new-id", 64))
	require.ErrorIs(t, err, ErrNotFound, "a failed request stores nothing")

	l.start(t) // the same data: the same keys
	got, err := b.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	_, err = l.client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(keyID)})
	require.NoError(t, err)
	_, err = b.GetDEK(ctx, diskID, 64)
	require.ErrorContains(t, err, "did not unwrap")
	assert.ErrorContains(t, err, "disabled")

	wrong, err := New(l.client(), "alias/no-such-key", store)
	require.NoError(t, err)
	_, err = wrong.GetDEK(ctx, "another-id", 64)
	require.ErrorContains(t, err, "the KMS (key alias/no-such-key) did not generate")
}

// shortKeys is a KMS that answers with keys of the wrong length.
type shortKeys struct{ API }

func (s shortKeys) GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, opts ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	out, err := s.API.GenerateDataKey(ctx, in, opts...)
	if err == nil {
		out.Plaintext = out.Plaintext[:len(out.Plaintext)/2]
	}
	return out, err
}

func (s shortKeys) Decrypt(ctx context.Context, in *kms.DecryptInput, opts ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	out, err := s.API.Decrypt(ctx, in, opts...)
	if err == nil {
		out.Plaintext = append(out.Plaintext, 0)
	}
	return out, err
}

// A malformed KMS answer never yields a key.
func TestMalformedAnswers(t *testing.T) {
	l := startLocalKMS(t)
	keyID := l.createKey(t)
	store := newMemStore()
	bad, err := New(shortKeys{l.client()}, keyID, store)
	require.NoError(t, err)
	_, err = bad.GetDEK(context.Background(), diskID, 64)
	require.ErrorContains(t, err, "refusing it")
	_, err = store.Get(context.Background(), storeName(diskID, 64))
	require.True(t, errors.Is(err, ErrNotFound), "nothing stored from a malformed answer")

	good, err := New(l.client(), keyID, store)
	require.NoError(t, err)
	_, err = good.GetDEK(context.Background(), diskID, 64)
	require.NoError(t, err)
	_, err = bad.GetDEK(context.Background(), diskID, 64)
	require.ErrorContains(t, err, "refusing it", "an unwrapped key of the wrong length is refused too")
}

func TestParseStoreName(t *testing.T) {
	id, n, err := parseStoreName("key-0000.64")
	require.NoError(t, err)
	assert.Equal(t, "key-0000", id)
	assert.Equal(t, 64, n)
	for _, bad := range []string{"noext", "x.", "x.0", "x.abc"} {
		_, _, err := parseStoreName(bad)
		assert.Error(t, err, bad)
	}
}

func TestOpen(t *testing.T) {
	tests := map[string]struct {
		uri     string
		wantErr string
	}{
		"region and key":          {uri: "kms://aws-kms?region=eu-west-1&key-id=alias/constellation"},
		"with an endpoint":        {uri: "kms://aws-kms?region=eu-west-1&key-id=k&endpoint=http://127.0.0.1:4599"},
		"no region":               {uri: "kms://aws-kms?key-id=k", wantErr: "needs region"},
		"nothing":                 {uri: "kms://aws-kms", wantErr: "needs region and key-id"},
		"credentials in the URI":  {uri: "kms://aws-kms?region=r&key-id=k&secret-access-key=x", wantErr: "never from the URI"},
		"an endpoint that is not": {uri: "kms://aws-kms?region=r&key-id=k&endpoint=ftp://x", wantErr: "not an http(s) URL"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u, err := url.Parse(tc.uri)
			require.NoError(t, err)
			b, err := Open(context.Background(), u, newMemStore())
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.NotNil(t, b)
		})
	}
}

// TestOpenTalksToTheEndpoint: a backend opened from a URI reaches the KMS it names, with credentials from
// the environment.
func TestOpenTalksToTheEndpoint(t *testing.T) {
	l := startLocalKMS(t)
	keyID := l.createKey(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	u, err := url.Parse("kms://aws-kms?region=eu-west-1&key-id=" + keyID + "&endpoint=" + url.QueryEscape(l.endpoint))
	require.NoError(t, err)
	b, err := Open(context.Background(), u, newMemStore())
	require.NoError(t, err)
	k, err := b.GetDEK(context.Background(), diskID, 64)
	require.NoError(t, err)
	assert.Len(t, k, 64)
}
