package signed

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFetch(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/m.json":
			_, _ = w.Write([]byte("file"))
		case "/m.json.sig", "/other.sig":
			_, _ = w.Write([]byte("sig"))
		case "/big.json":
			_, _ = w.Write(bytes.Repeat([]byte("x"), MaxFileSize+1))
		case "/slow.json":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	fs := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(fs, "/ws/m.json", []byte("local file"), 0o644))
	require.NoError(t, afero.WriteFile(fs, "/ws/m.json.sig", []byte("local sig"), 0o644))

	tests := map[string]struct {
		src, sigSrc       string
		wantData, wantSig string
		wantErr           string
	}{
		"a URL and its signature": {src: srv.URL + "/m.json", wantData: "file", wantSig: "sig"},
		"a named signature":       {src: srv.URL + "/m.json", sigSrc: srv.URL + "/other.sig", wantData: "file", wantSig: "sig"},
		"files":                   {src: "/ws/m.json", wantData: "local file", wantSig: "local sig"},
		"not found":               {src: srv.URL + "/missing.json", wantErr: "server answered 404 Not Found"},
		"no signature":            {src: srv.URL + "/m.json", sigSrc: srv.URL + "/missing.sig", wantErr: "missing.sig: server answered 404"},
		"too large":               {src: srv.URL + "/big.json", wantErr: "larger than 65536 bytes"},
		"too slow":                {src: srv.URL + "/slow.json", wantErr: "context deadline exceeded"},
		"another scheme":          {src: "ftp://example.com/m.json", wantErr: `unsupported URL scheme "ftp"`},
		"a missing file":          {src: "/ws/none.json", wantErr: "reading /ws/none.json"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			data, sig, err := Fetch(context.Background(), fs, tc.src, tc.sigSrc, 300*time.Millisecond)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantData, string(data))
			assert.Equal(t, tc.wantSig, string(sig))
			unsigned, err := FetchUnsigned(context.Background(), fs, tc.src, 300*time.Millisecond)
			require.NoError(t, err)
			assert.Equal(t, tc.wantData, string(unsigned), "the same file without its signature")
		})
	}
}
