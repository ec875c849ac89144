// Package kms selects where data keys come from: kms://cluster-kms derives them from the cluster's master
// secret (constellation-managed); other kms://<backend> URIs name user-managed backends, such as a cloud KMS,
// which register themselves with Register.
package kms

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/kmsuri"
)

// KMS returns data encryption keys. The same ID and length always give the same key. A user-managed
// backend also returns the key wrapped by the KMS key (nil otherwise): a node keeps it beside its disk, so
// that the admin can unwrap it when no KeyService runs (recovery).
type KMS interface {
	DataKey(ctx context.Context, dekID string, length int) (key, wrapped []byte, err error)
}

// ClusterKMS is the constellation-managed backend's name.
const ClusterKMS = kmsuri.ClusterKMS

// ErrUnknownBackend is returned for a kms:// URI naming no known backend.
var ErrUnknownBackend = errors.New("unknown key backend")

// Factory opens a user-managed backend from its URI (query parameters are the backend's settings).
type Factory func(ctx context.Context, uri *url.URL) (KMS, error)

var (
	mu       sync.RWMutex
	backends = map[string]Factory{}
)

// Register makes a user-managed backend available under kms://name.
func Register(name string, f Factory) error {
	mu.Lock()
	defer mu.Unlock()
	if name == ClusterKMS {
		return fmt.Errorf("backend name %q is reserved", name)
	}
	if _, dup := backends[name]; dup {
		return fmt.Errorf("backend %q is already registered", name)
	}
	backends[name] = f
	return nil
}

// New opens the backend that uri names. master is required for every backend: kms://cluster-kms derives
// every key from it; with a user-managed backend the cluster's identity still does — the measurement
// secret, from which the cluster ID in every node's PCR 15 follows, is what the first control plane derived
// from the master secret at init, and a joining node must get the same one — while the disks' data keys
// come from the backend.
func New(ctx context.Context, uri string, master *crypto.MasterSecret) (KMS, error) {
	u, err := kmsuri.Parse(uri)
	if err != nil {
		return nil, err
	}
	if master == nil {
		return nil, fmt.Errorf("key backend %s needs the master secret (the cluster's identity comes from it)", u.Host)
	}
	if err := master.Validate(); err != nil {
		return nil, fmt.Errorf("key backend %s: %w", u.Host, err)
	}
	identity := &clusterKMS{secret: *master}
	if u.Host == ClusterKMS {
		return identity, nil
	}
	mu.RLock()
	f, ok := backends[u.Host]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q: known backends are %s", ErrUnknownBackend, u.Host, strings.Join(known(), ", "))
	}
	data, err := f(ctx, u)
	if err != nil {
		return nil, err
	}
	return UserManaged(identity, data), nil
}

// UserManaged takes the measurement secret (the cluster's identity) from identity, the master secret's
// backend, and every other key from the user's backend data.
func UserManaged(identity, data KMS) KMS {
	return &userManaged{identity: identity, data: data}
}

// userManaged takes the measurement secret from the master secret and every other key from the backend.
type userManaged struct {
	identity KMS
	data     KMS
}

func (k *userManaged) DataKey(ctx context.Context, dekID string, length int) (key, wrapped []byte, err error) {
	if dekID == crypto.MeasurementSecretID {
		return k.identity.DataKey(ctx, dekID, length)
	}
	return k.data.DataKey(ctx, dekID, length)
}

func known() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := []string{ClusterKMS}
	for name := range backends {
		names = append(names, name)
	}
	slices.Sort(names[1:])
	return names
}

// clusterKMS derives keys from the master secret with HKDF.
type clusterKMS struct {
	secret crypto.MasterSecret
}

func (k *clusterKMS) DataKey(_ context.Context, dekID string, length int) (key, wrapped []byte, err error) {
	key, err = crypto.DeriveKey(k.secret.Key, k.secret.Salt, dekID, length)
	return key, nil, err
}
