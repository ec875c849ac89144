// Package crypto derives the cluster's keys. Every key is HKDF-SHA256(master secret, salt, "key-" + id),
// so any holder of the master secret and salt can re-derive any key, and nothing else can.
package crypto

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Key sizes the project allows.
const (
	MinKeyLength       = 16
	MaxKeyLength       = 64
	MasterSecretLength = 32
	SaltLength         = 32
)

// Well-known key IDs.
const (
	// MeasurementSecretID derives the secret from which the cluster ID comes.
	MeasurementSecretID = "measurementSecret"
	// OwnerIDKeyID derives the owner ID from the master secret.
	OwnerIDKeyID = "ownerID"
	// ClusterIDKeyID derives the cluster ID from the measurement secret.
	ClusterIDKeyID = "clusterID"
)

// ErrKeyLength is returned for a requested length outside MinKeyLength..MaxKeyLength.
var ErrKeyLength = errors.New("key length out of range")

// DeriveKey returns HKDF-SHA256(secret, salt, "key-"+id) of length bytes.
func DeriveKey(secret, salt []byte, id string, length int) ([]byte, error) {
	if length < MinKeyLength || length > MaxKeyLength {
		return nil, fmt.Errorf("%w: %d, allowed %d to %d", ErrKeyLength, length, MinKeyLength, MaxKeyLength)
	}
	if len(secret) == 0 {
		return nil, errors.New("deriving key: empty secret")
	}
	key, err := hkdf.Key(sha256.New, secret, salt, "key-"+id, length)
	if err != nil {
		return nil, fmt.Errorf("deriving key %q: %w", id, err)
	}
	return key, nil
}

// ClusterID derives the cluster ID from the measurement secret and salt.
func ClusterID(measurementSecret, salt []byte) ([]byte, error) {
	return DeriveKey(measurementSecret, salt, ClusterIDKeyID, 32)
}
