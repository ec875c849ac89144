package signed

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/afero"
)

// MaxSignatureSize bounds a fetched signature; a real one is 96 bytes of base64.
const MaxSignatureSize = 4 << 10

// Fetch returns a measurements file and its signature from src and sigSrc (empty: src +
// SignatureSuffix), each an http(s) URL or a path in fs, within timeout. It only reads: Verify checks them.
func Fetch(ctx context.Context, fs afero.Fs, src, sigSrc string, timeout time.Duration) (data, sig []byte, err error) {
	if sigSrc == "" {
		sigSrc = src + SignatureSuffix
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	transport := http.DefaultTransport.(*http.Transport).Clone()
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	if data, err = fetch(ctx, fs, client, src, MaxFileSize); err != nil {
		return nil, nil, err
	}
	if sig, err = fetch(ctx, fs, client, sigSrc, MaxSignatureSize); err != nil {
		return nil, nil, err
	}
	return data, sig, nil
}

// FetchUnsigned returns a measurements file from src, an http(s) URL or a path in fs, within timeout, without
// any signature: only for measurements the reader computed itself.
func FetchUnsigned(ctx context.Context, fs afero.Fs, src string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	transport := http.DefaultTransport.(*http.Transport).Clone()
	defer transport.CloseIdleConnections()
	return fetch(ctx, fs, &http.Client{Transport: transport}, src, MaxFileSize)
}

// fetch returns the content at src, an http(s) URL or a file path, refusing more than limit bytes.
func fetch(ctx context.Context, fs afero.Fs, client *http.Client, src string, limit int64) ([]byte, error) {
	isURL := strings.Contains(src, "://")
	if isURL {
		u, err := url.Parse(src)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("%s: unsupported URL scheme %q: use an http(s) URL or a file path", src, u.Scheme)
		}
	}
	var body io.Reader
	if isURL {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, fmt.Errorf("downloading %s: %w", src, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("downloading %s: %w\nCheck the URL and the network (or the timeout), or download the files and pass their paths", src, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("downloading %s: server answered %s: check the URL", src, resp.Status)
		}
		body = resp.Body
	} else {
		f, err := fs.Open(src)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", src, err)
		}
		defer f.Close()
		body = f
	}
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", src, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes, more than a measurements file or signature can be: check the URL", src, limit)
	}
	return data, nil
}
