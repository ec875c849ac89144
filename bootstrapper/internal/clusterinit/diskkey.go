package clusterinit

import (
	"context"
	"fmt"

	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/bootstrapper/internal/deploy"
	"github.com/constellation-go/constellation/bootstrapper/internal/initserver"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// WrappedKeyDisk keeps the disk key wrapped by the user's KMS key beside the state disk.
type WrappedKeyDisk interface {
	WrappedKey() ([]byte, error)
	SaveWrappedKey(blob []byte) error
}

// diskKey returns the first control plane's disk key. Constellation-managed: derived from the master
// secret, as the KeyService derives every other disk's. User-managed: the KMS generates it and the node
// keeps only its wrapped form beside the disk (no KeyService runs yet to keep it), so a redone init
// unwraps the same key, and so does the admin in a recovery; seedWrappedKey later hands it to the KeyService.
func (i *Initializer) diskKey(ctx context.Context, req initserver.Request, uuid string) (key, wrapped []byte, err error) {
	u, err := kmsuri.Parse(req.KMSURI)
	if err != nil {
		return nil, nil, err
	}
	if u.Host != kmsuri.AWSKMS {
		key, err := crypto.DeriveKey(req.MasterSecret.Key, req.MasterSecret.Salt, uuid, joinproto.StateDiskKeyLength)
		return key, nil, err
	}
	backend, err := awskms.Open(ctx, u, diskStore{i.deps.Disk}, req.KMSCredentials.Provider())
	if err != nil {
		return nil, nil, err
	}
	return backend.DataKey(ctx, uuid, joinproto.StateDiskKeyLength)
}

// seedWrappedKey stores the first control plane's wrapped disk key where the KeyService keeps the others,
// so that the node's rejoins get the same key.
func seedWrappedKey(ctx context.Context, client kubernetes.Interface, uuid string, wrapped []byte) error {
	if len(wrapped) == 0 {
		return nil
	}
	store := awskms.NewSecretStore(client, deploy.Namespace, awskms.DefaultSecret)
	if err := awskms.Seed(ctx, store, uuid, joinproto.StateDiskKeyLength, wrapped); err != nil {
		return fmt.Errorf("handing this node's wrapped disk key to the KeyService: %w", err)
	}
	return nil
}

// diskStore is an awskms.Store of one entry, the wrapped key beside the state disk.
type diskStore struct{ disk WrappedKeyDisk }

func (s diskStore) Get(context.Context, string) ([]byte, error) {
	blob, err := s.disk.WrappedKey()
	if err != nil {
		return nil, err
	}
	if blob == nil {
		return nil, awskms.ErrNotFound
	}
	return blob, nil
}

func (s diskStore) Create(ctx context.Context, name string, blob []byte) error {
	if _, err := s.Get(ctx, name); err == nil {
		return awskms.ErrExists
	}
	return s.disk.SaveWrappedKey(blob)
}

func (s diskStore) Update(_ context.Context, _ string, blob []byte) error {
	return s.disk.SaveWrappedKey(blob)
}

func (s diskStore) List(context.Context) ([]string, error) { return nil, nil }
