package crypto

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"

	"github.com/constellation-go/constellation/internal/file"
)

// MasterSecretFileName is the master secret's name in the CLI workspace; the KeyService reads the same
// format from its mounted Kubernetes secret.
const MasterSecretFileName = "constellation-mastersecret.json"

// MasterSecret is the root of every cluster key. Whoever holds it can decrypt every node's state: it is
// written only with mode 0600 and never logged.
type MasterSecret struct {
	Key  []byte `json:"key"`
	Salt []byte `json:"salt"`
}

// Validate checks the sizes.
func (m MasterSecret) Validate() error {
	var errs []error
	if len(m.Key) != MasterSecretLength {
		errs = append(errs, fmt.Errorf("field \"key\": must be %d bytes, got %d", MasterSecretLength, len(m.Key)))
	}
	if len(m.Salt) != SaltLength {
		errs = append(errs, fmt.Errorf("field \"salt\": must be %d bytes, got %d", SaltLength, len(m.Salt)))
	}
	return errors.Join(errs...)
}

// Identity is what a master secret and its salt determine about their cluster; the CLI, the init and the
// recovery of a node derive it the same way.
type Identity struct {
	// MeasurementSecret = HKDF(master secret, salt, "key-measurementSecret").
	MeasurementSecret []byte
	// ClusterID = HKDF(measurement secret, salt, "key-clusterID"): what a node's PCR 15 is locked to.
	ClusterID []byte
	// OwnerID = HKDF(master secret, salt, "key-ownerID").
	OwnerID []byte
}

// Identity derives the cluster's identity from m.
func (m MasterSecret) Identity() (Identity, error) {
	var id Identity
	var err error
	if id.MeasurementSecret, err = DeriveKey(m.Key, m.Salt, MeasurementSecretID, 32); err != nil {
		return Identity{}, err
	}
	if id.ClusterID, err = ClusterID(id.MeasurementSecret, m.Salt); err != nil {
		return Identity{}, err
	}
	if id.OwnerID, err = DeriveKey(m.Key, m.Salt, OwnerIDKeyID, 32); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// String never prints the secret.
func (m MasterSecret) String() string {
	return "MasterSecret{redacted}"
}

// GoString never prints the secret, even with %#v.
func (m MasterSecret) GoString() string {
	return m.String()
}

// ReadMasterSecret loads and validates a master secret file (JSON, base64 fields, unknown fields refused).
func ReadMasterSecret(fh file.Handler, name string) (MasterSecret, error) {
	var m MasterSecret
	if err := fh.ReadJSON(name, &m); err != nil {
		return MasterSecret{}, fmt.Errorf("reading master secret: %w", err)
	}
	if err := m.Validate(); err != nil {
		return MasterSecret{}, fmt.Errorf("master secret %s: %w", name, err)
	}
	return m, nil
}

// WriteMasterSecret writes m with mode 0600. It never overwrites: losing the old secret loses the cluster.
func WriteMasterSecret(fh file.Handler, name string, m MasterSecret) error {
	if err := m.Validate(); err != nil {
		return err
	}
	return fh.WriteJSON(name, m, file.OptSecret)
}

// NewMasterSecret returns a master secret and salt from the system's random source.
func NewMasterSecret() (MasterSecret, error) {
	m := MasterSecret{Key: make([]byte, MasterSecretLength), Salt: make([]byte, SaltLength)}
	if _, err := rand.Read(m.Key); err != nil {
		return MasterSecret{}, err
	}
	if _, err := rand.Read(m.Salt); err != nil {
		return MasterSecret{}, err
	}
	return m, nil
}

// LoadOrCreateMasterSecret reads the master secret file name, or generates one and writes it first (0600).
// An init that is run again after an interruption gets the same secret: a node that took its lock with it
// accepts no other. created says whether the secret was generated now.
func LoadOrCreateMasterSecret(fh file.Handler, name string) (m MasterSecret, created bool, err error) {
	m, err = ReadMasterSecret(fh, name)
	if err == nil {
		return m, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return MasterSecret{}, false, err
	}
	if m, err = NewMasterSecret(); err != nil {
		return MasterSecret{}, false, err
	}
	if err := WriteMasterSecret(fh, name, m); err != nil {
		return MasterSecret{}, false, err
	}
	return m, true, nil
}
