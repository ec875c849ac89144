package metadata

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Client reads the metadata API; the bootstrapper uses it from inside a node.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client of the API at baseURL (the bootstrapper's --metadata-url, e.g.
// http://10.42.0.1:9080). A nil httpClient means one with a 10 s timeout.
func NewClient(baseURL string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = &http.Client{Timeout: 10 * time.Second}
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), http: httpClient}
}

// List returns the cluster's instances, ordered by name.
func (c *Client) List(ctx context.Context) ([]Instance, error) {
	var out []Instance
	err := c.get(ctx, PathInstances, &out)
	return out, err
}

// Self returns the calling node's instance.
func (c *Client) Self(ctx context.Context) (Instance, error) {
	var out Instance
	err := c.get(ctx, PathSelf, &out)
	return out, err
}

// InitSecretHash returns the SHA-256 of the init secret.
func (c *Client) InitSecretHash(ctx context.Context) ([]byte, error) {
	var out initSecretHash
	if err := c.get(ctx, PathInitSecretHash, &out); err != nil {
		return nil, err
	}
	h, err := hex.DecodeString(out.SHA256)
	if err != nil || len(h) != 32 {
		return nil, fmt.Errorf("metadata: the init secret hash %q is not a SHA-256 in hex", out.SHA256)
	}
	return h, nil
}

// Endpoints returns the control planes' addresses and the Kubernetes API endpoint.
func (c *Client) Endpoints(ctx context.Context) (Endpoints, error) {
	var out Endpoints
	err := c.get(ctx, PathEndpoints, &out)
	return out, err
}

// APIError is an answer other than 200.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("metadata API: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// ErrForbidden matches an *APIError of status 403: the caller is not a node of the cluster.
var ErrForbidden = errors.New("forbidden")

// Is lets errors.Is(err, ErrForbidden) match a 403.
func (e *APIError) Is(target error) bool {
	return target == ErrForbidden && e.Status == http.StatusForbidden
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("metadata: reading %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("metadata: decoding %s: %w", path, err)
	}
	return nil
}
