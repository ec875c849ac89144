package awskms

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// localKMS is a running local-kms (the AWS KMS API implementation, embedded) with its keys in dataDir.
type localKMS struct {
	srv      *localkms.Server
	endpoint string
	dataDir  string
	addr     string
}

func startLocalKMS(t *testing.T) *localKMS {
	t.Helper()
	l := &localKMS{dataDir: t.TempDir(), addr: "127.0.0.1:0"}
	l.start(t)
	// Restarts (outages) listen on the same address.
	l.addr = strings.TrimPrefix(l.endpoint, "http://")
	t.Cleanup(l.stop)
	return l
}

func (l *localKMS) start(t *testing.T) {
	t.Helper()
	srv, err := localkms.Start(l.addr, l.dataDir, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	l.srv, l.endpoint = srv, srv.Endpoint()
}

func (l *localKMS) stop() {
	if l.srv != nil {
		_ = l.srv.Close()
		l.srv = nil
	}
}

func (l *localKMS) client() *kms.Client {
	return kms.New(kms.Options{
		Region: localkms.Region, BaseEndpoint: aws.String(l.endpoint),
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

const diskID = "00000000-0000-0000-0000-000000000042"

// newBackend starts local-kms with a new key and returns a backend on it with an empty store.
func newBackend(t *testing.T) (*localKMS, string, *MemStore, *Backend) {
	t.Helper()
	l := startLocalKMS(t)
	keyID := l.createKey(t)
	store := NewMemStore()
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
	b, err := New(l.client(), l.createKey(t), NewMemStore())
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

// TestRotation: moving to another KMS key (a backend on the new key adopts the stored keys, as a KeyService
// started with it does) re-wraps the stored keys without changing them; the old key can then be disabled.
func TestRotation(t *testing.T) {
	l := startLocalKMS(t)
	oldKey, newKey := l.createKey(t), l.createKey(t)
	store := NewMemStore()
	b, err := New(l.client(), oldKey, store)
	require.NoError(t, err)
	ctx := context.Background()
	disk, err := b.GetDEK(ctx, diskID, 64)
	require.NoError(t, err)
	secret, err := b.GetDEK(ctx, "measurementSecret", 32)
	require.NoError(t, err)
	before, _ := store.Get(ctx, storeName(diskID, 64))

	moved, err := New(l.client(), newKey, store)
	require.NoError(t, err)
	n, err := moved.Adopt(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
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
	n, err = fresh.Adopt(ctx)
	require.NoError(t, err, "re-running a finished rotation is harmless")
	assert.Zero(t, n)
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
	store := NewMemStore()
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

// TestSlowKMS: a KMS that accepts connections and never answers fails a request within the backend's
// timeout, naming the KMS, and stores nothing.
func TestSlowKMS(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	store := NewMemStore()
	b, err := New(kms.New(kms.Options{Region: localkms.Region, BaseEndpoint: aws.String("http://" + lis.Addr().String()),
		Credentials: aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""))}), "alias/k", store)
	require.NoError(t, err)
	b.timeout = 300 * time.Millisecond
	start := time.Now()
	_, err = b.GetDEK(context.Background(), diskID, 64)
	require.ErrorContains(t, err, "aws-kms: the KMS (key alias/k) did not generate data key "+diskID)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second, "bounded by the backend's timeout")
	_, err = store.Get(context.Background(), storeName(diskID, 64))
	assert.ErrorIs(t, err, ErrNotFound)
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
			b, err := Open(context.Background(), u, NewMemStore(), nil)
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
	u, err := url.Parse("kms://aws-kms?region=" + localkms.Region + "&key-id=" + keyID + "&endpoint=" + url.QueryEscape(l.endpoint))
	require.NoError(t, err)
	b, err := Open(context.Background(), u, NewMemStore(), nil)
	require.NoError(t, err)
	k, err := b.GetDEK(context.Background(), diskID, 64)
	require.NoError(t, err)
	assert.Len(t, k, 64)
}

// TestAdoptAfterAKeyMove: the configuration moved to another KMS key; the KeyService, started with it,
// re-wraps the keys of the old one (the keys do not change), after which the old key can be disabled. A
// blob kept elsewhere (beside a disk) still unwraps through Unwrap while the old key is enabled, and
// Rewrap moves it to the new key.
func TestAdoptAfterAKeyMove(t *testing.T) {
	l := startLocalKMS(t)
	oldKey, newKey := l.createKey(t), l.createKey(t)
	store := NewMemStore()
	ctx := context.Background()
	before, err := New(l.client(), oldKey, store)
	require.NoError(t, err)
	disk, besideDisk, err := before.DataKey(ctx, diskID, 64)
	require.NoError(t, err)

	after, err := New(l.client(), newKey, store)
	require.NoError(t, err)
	n, err := after.Foreign(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "one key of the old KMS key")
	n, err = after.Adopt(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = after.Adopt(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "adopting again re-wraps nothing")
	n, err = after.Foreign(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)

	// The kept blob, still of the old key: unwrapped with the key it names, and moved to the new one.
	got, err := Unwrap(ctx, l.client(), "", diskID, 64, besideDisk)
	require.NoError(t, err)
	assert.Equal(t, disk, got)
	_, err = Unwrap(ctx, l.client(), newKey, diskID, 64, besideDisk)
	require.Error(t, err, "a blob of the old key is not the new key's")
	moved, err := Rewrap(ctx, l.client(), diskID, besideDisk, newKey)
	require.NoError(t, err)

	_, err = l.client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(oldKey)})
	require.NoError(t, err)
	got, _, err = after.DataKey(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Equal(t, disk, got, "the same key from the new KMS key alone")
	got, err = Unwrap(ctx, l.client(), newKey, diskID, 64, moved)
	require.NoError(t, err)
	assert.Equal(t, disk, got)
	_, err = Unwrap(ctx, l.client(), "", diskID, 64, besideDisk)
	require.ErrorContains(t, err, "did not unwrap", "the old key is disabled")
}

// TestSeed: a key generated before any KeyService ran (the first control plane's) is handed out for its ID
// afterwards; a different blob for the same ID is refused.
func TestSeed(t *testing.T) {
	l := startLocalKMS(t)
	keyID := l.createKey(t)
	ctx := context.Background()
	beside := NewMemStore()
	first, err := New(l.client(), keyID, beside)
	require.NoError(t, err)
	key, blob, err := first.DataKey(ctx, diskID, 64)
	require.NoError(t, err)

	cluster := NewMemStore()
	require.NoError(t, Seed(ctx, cluster, diskID, 64, blob))
	require.NoError(t, Seed(ctx, cluster, diskID, 64, blob), "seeding again (a redone init) is harmless")
	require.ErrorContains(t, Seed(ctx, cluster, diskID, 64, []byte("other")), "another wrapped data key")
	ks, err := New(l.client(), keyID, cluster)
	require.NoError(t, err)
	got, gotBlob, err := ks.DataKey(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Equal(t, key, got)
	assert.Equal(t, blob, gotBlob)
}

func TestParseCredentials(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    Credentials
		wantErr string
	}{
		"export-credentials": {in: `{"Version": 1, "AccessKeyId": "AKID", "SecretAccessKey": "top-secret", "SessionToken": "session-secret", "Expiration": "2026-12-06T00:00:00Z"}`,
			want: Credentials{AccessKeyID: "AKID", SecretAccessKey: "top-secret", SessionToken: "session-secret"}},
		"no session token": {in: `{"Version": 1, "AccessKeyId": "AKID", "SecretAccessKey": "s"}`, want: Credentials{AccessKeyID: "AKID", SecretAccessKey: "s"}},
		"no secret":        {in: `{"Version": 1, "AccessKeyId": "AKID"}`, wantErr: "need an access key ID and a secret access key"},
		"another version":  {in: `{"Version": 2, "AccessKeyId": "AKID", "SecretAccessKey": "s"}`, wantErr: "version 2"},
		"an INI file":      {in: "[default]\naws_access_key_id = AKID\n", wantErr: "export-credentials"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseCredentials([]byte(tc.in))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			printed := fmt.Sprintf("%v %+v %#v %s", got, got, got, &got)
			assert.NotContains(t, printed, "top-secret", "the secret is never printed")
			assert.NotContains(t, printed, "session-secret")
		})
	}
}

// TestKeyVersionRotation: a new version of the same KMS key (AWS's automatic rotation) needs nothing: keys
// stored before it still unwrap to the same data keys, new ones are wrapped by the new version, and no
// stored key counts as another key's (Adopt re-wraps nothing).
func TestKeyVersionRotation(t *testing.T) {
	l, keyID, store, b := newBackend(t)
	ctx := context.Background()
	before, blobBefore, err := b.DataKey(ctx, diskID, 64)
	require.NoError(t, err)
	arn := describeARN(t, l, keyID)

	l.stop()
	require.NoError(t, localkms.RotateKey(l.dataDir, arn))
	l.start(t)
	after, err := New(l.client(), keyID, store)
	require.NoError(t, err)
	got, blob, err := after.DataKey(ctx, diskID, 64)
	require.NoError(t, err)
	assert.Equal(t, before, got, "a key stored before the rotation is the same key after it")
	assert.Equal(t, blobBefore, blob)
	_, newBlob, err := after.DataKey(ctx, "11111111-0000-0000-0000-000000000000", 64)
	require.NoError(t, err)
	// local-kms's blob: the key ARN's length and the ARN, then the key version (little endian).
	version := func(blob []byte) uint32 { n := int(blob[0]); return binary.LittleEndian.Uint32(blob[1+n : 5+n]) }
	assert.Equal(t, uint32(0), version(blobBefore))
	assert.Equal(t, uint32(1), version(newBlob), "new keys are wrapped by the new version")
	n, err := after.Foreign(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "a new version is the same KMS key: nothing to re-wrap")
}

func describeARN(t *testing.T, l *localKMS, keyID string) string {
	t.Helper()
	out, err := l.client().DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(keyID)})
	require.NoError(t, err)
	return aws.ToString(out.KeyMetadata.Arn)
}
