package localkms

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(Drainer))
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func start(t *testing.T, addr, dir string) *Server {
	t.Helper()
	s, err := Start(addr, dir, testLog(t))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

func TestEnsureKeyIsIdempotent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := start(t, "127.0.0.1:0", t.TempDir())

	first, err := EnsureKey(ctx, s.Endpoint(), DefaultAlias)
	require.NoError(t, err)
	require.NotEmpty(t, first)
	again, err := EnsureKey(ctx, s.Endpoint(), DefaultAlias)
	require.NoError(t, err)
	assert.Equal(t, first, again)

	other, err := EnsureKey(ctx, s.Endpoint(), "alias/other")
	require.NoError(t, err)
	assert.NotEqual(t, first, other, "another alias gets its own key")

	out, err := Client(s.Endpoint()).DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(DefaultAlias)})
	require.NoError(t, err)
	assert.Equal(t, first, aws.ToString(out.KeyMetadata.KeyId))
	assert.Equal(t, "arn:aws:kms:"+Region+":"+Account+":key/"+first, aws.ToString(out.KeyMetadata.Arn))
	assert.Equal(t, types.KeyUsageTypeEncryptDecrypt, out.KeyMetadata.KeyUsage)
}

func TestEnsureKeyErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := start(t, "127.0.0.1:0", t.TempDir())

	testCases := map[string]struct {
		endpoint, alias string
		wantErr         string
	}{
		"no alias prefix":   {endpoint: s.Endpoint(), alias: "constellation", wantErr: "alias/<name>"},
		"empty alias name":  {endpoint: s.Endpoint(), alias: "alias/", wantErr: "alias/<name>"},
		"reserved alias":    {endpoint: s.Endpoint(), alias: "alias/aws/kms", wantErr: "creating alias/aws/kms"},
		"nothing listening": {endpoint: "http://127.0.0.1:1", alias: DefaultAlias, wantErr: "127.0.0.1:1"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := EnsureKey(ctx, tc.endpoint, tc.alias)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestDataKeyRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := start(t, "127.0.0.1:0", t.TempDir())
	keyID, err := EnsureKey(ctx, s.Endpoint(), DefaultAlias)
	require.NoError(t, err)

	c := Client(s.Endpoint())
	dk, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(DefaultAlias), KeySpec: types.DataKeySpecAes256})
	require.NoError(t, err)
	require.Len(t, dk.Plaintext, 32)
	assert.NotContains(t, string(dk.CiphertextBlob), string(dk.Plaintext))

	out, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, dk.Plaintext, out.Plaintext)
	assert.Contains(t, aws.ToString(out.KeyId), keyID)

	// A tampered blob must not decrypt.
	tampered := bytes.Clone(dk.CiphertextBlob)
	tampered[len(tampered)-1] ^= 1
	_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: tampered})
	assert.Error(t, err)
}

// TestRestartKeepsKeys stops the KMS (an outage) and starts it again on the same directory and address:
// what was encrypted before still decrypts, and the alias names the same key.
func TestRestartKeepsKeys(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "kms")
	s, err := Start("127.0.0.1:0", dir, testLog(t))
	require.NoError(t, err)
	endpoint := s.Endpoint()
	addr := strings.TrimPrefix(endpoint, "http://")
	keyID, err := EnsureKey(ctx, endpoint, DefaultAlias)
	require.NoError(t, err)
	c := Client(endpoint)
	dk, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(DefaultAlias), NumberOfBytes: aws.Int32(32)})
	require.NoError(t, err)

	_, err = Start("127.0.0.1:0", dir, testLog(t))
	require.Error(t, err, "a second server on an open database")
	assert.Contains(t, err.Error(), dir)

	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close twice")
	_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
	require.Error(t, err, "the KMS is down")

	s = start(t, addr, dir)
	assert.Equal(t, endpoint, s.Endpoint())
	again, err := EnsureKey(ctx, endpoint, DefaultAlias)
	require.NoError(t, err)
	assert.Equal(t, keyID, again)
	out, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
	require.NoError(t, err, "the client of before the outage works again")
	assert.Equal(t, dk.Plaintext, out.Plaintext)
}

func TestStartErrors(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir())
	file := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	testCases := map[string]struct {
		addr, dir string
		wantErr   string
	}{
		"address in use":     {addr: strings.TrimPrefix(s.Endpoint(), "http://"), dir: t.TempDir(), wantErr: "address already in use"},
		"bad address":        {addr: "127.0.0.1", dir: t.TempDir(), wantErr: "missing port"},
		"data dir in a file": {addr: "127.0.0.1:0", dir: filepath.Join(file, "x"), wantErr: "data directory"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := Start(tc.addr, tc.dir, nil)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
	// A failed Start leaves the database free for the next.
	dir := t.TempDir()
	_, err := Start("127.0.0.1", dir, nil)
	require.Error(t, err)
	start(t, "127.0.0.1:0", dir)
}

func TestRejectsOtherRequests(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir())
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	testCases := map[string]struct {
		method, path, contentType, target, body string
		wantCode                                int
	}{
		"other path":        {method: http.MethodPost, path: "/x", contentType: "application/json", wantCode: http.StatusNotFound},
		"GET":               {method: http.MethodGet, path: "/", contentType: "application/json", wantCode: http.StatusMethodNotAllowed},
		"not JSON":          {method: http.MethodPost, path: "/", contentType: "text/plain", wantCode: http.StatusUnsupportedMediaType},
		"no target":         {method: http.MethodPost, path: "/", contentType: "application/json", wantCode: http.StatusNotImplemented},
		"unknown operation": {method: http.MethodPost, path: "/", contentType: "application/json", target: "TrentService.Nope", wantCode: http.StatusNotImplemented},
		"not an operation":  {method: http.MethodPost, path: "/", contentType: "application/json", target: "TrentService.String", wantCode: http.StatusNotImplemented},
		"garbage body":      {method: http.MethodPost, path: "/", contentType: "application/json", target: "TrentService.Decrypt", body: "{{{", wantCode: http.StatusBadRequest},
		"valid, no key":     {method: http.MethodPost, path: "/", contentType: "application/x-amz-json-1.1", target: "TrentService.DescribeKey", body: `{"KeyId":"alias/none"}`, wantCode: http.StatusBadRequest},
		"valid operation":   {method: http.MethodPost, path: "/", contentType: "application/x-amz-json-1.1", target: "TrentService.ListKeys", body: `{}`, wantCode: http.StatusOK},
		"oversized request": {method: http.MethodPost, path: "/", contentType: "application/json", target: "TrentService.Encrypt", body: `{"KeyId":"` + strings.Repeat("a", 2<<20) + `"}`, wantCode: http.StatusBadRequest},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, s.Endpoint()+tc.path, strings.NewReader(tc.body))
			require.NoError(t, err)
			req.Header.Set("Content-Type", tc.contentType)
			if tc.target != "" {
				req.Header.Set("X-Amz-Target", tc.target)
			}
			resp, err := client.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tc.wantCode, resp.StatusCode)
		})
	}
}
