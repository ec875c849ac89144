package recoverserver

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

type fakeDisk struct {
	initialized bool
	// key is the only key that unlocks the disk.
	key      []byte
	unlocked bool
	comps    []byte
	wrapped  []byte
}

func (d *fakeDisk) WrappedKey() ([]byte, error) { return d.wrapped, nil }
func (d *fakeDisk) SaveWrappedKey(blob []byte) error {
	d.wrapped = blob
	return nil
}

func (d *fakeDisk) Initialized() bool     { return d.initialized }
func (d *fakeDisk) UUID() (string, error) { return "6f1c7b0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", nil }
func (d *fakeDisk) Unlock(key []byte) error {
	if !bytes.Equal(key, d.key) {
		return errors.New("required key not available")
	}
	d.unlocked = true
	return nil
}

func (d *fakeDisk) LoadComponents() ([]byte, error) {
	if !d.unlocked {
		return nil, errors.New("locked")
	}
	return d.comps, nil
}

type fakeLock struct {
	heldBy []byte
}

func (l *fakeLock) TryLock(id []byte) (bool, error) {
	if l.heldBy != nil {
		return false, nil
	}
	l.heldBy = id
	return true, nil
}

type fakeInstaller struct {
	fails int
	calls int
	got   []*components.Component
}

func (i *fakeInstaller) Install(_ context.Context, comps []*components.Component) error {
	i.calls++
	if i.fails > 0 {
		i.fails--
		return errors.New("download failed")
	}
	i.got = comps
	return nil
}

func master(b byte) crypto.MasterSecret {
	return crypto.MasterSecret{Key: bytes.Repeat([]byte{b}, 32), Salt: bytes.Repeat([]byte{b + 1}, 32)}
}

func diskKey(t *testing.T, ms crypto.MasterSecret) []byte {
	key, err := crypto.DeriveKey(ms.Key, ms.Salt, "6f1c7b0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", joinproto.StateDiskKeyLength)
	require.NoError(t, err)
	return key
}

func clusterID(t *testing.T, ms crypto.MasterSecret) []byte {
	m, err := crypto.DeriveKey(ms.Key, ms.Salt, crypto.MeasurementSecretID, 32)
	require.NoError(t, err)
	id, err := crypto.ClusterID(m, ms.Salt)
	require.NoError(t, err)
	return id
}

func TestRecover(t *testing.T) {
	comps, err := components.MarshalList([]*components.Component{{Url: "http://10.42.0.1:9081/kubelet", Hash: "sha256:00", InstallPath: "/var/lib/constellation/bin/kubelet"}})
	require.NoError(t, err)
	right := master(1)
	testCases := map[string]struct {
		initialized bool
		lockedBy    []byte
		send        crypto.MasterSecret
		installFail int
		wantCode    codes.Code
		wantLocked  bool
	}{
		"recovers":                              {initialized: true, send: right, wantLocked: true},
		"a wrong master secret changes nothing": {initialized: true, send: master(7), wantCode: codes.PermissionDenied},
		"a fresh node has nothing to recover":   {initialized: false, send: right, wantCode: codes.FailedPrecondition},
		"a node locked otherwise":               {initialized: true, lockedBy: []byte("other"), send: right, wantCode: codes.FailedPrecondition},
		"a bad request":                         {initialized: true, send: crypto.MasterSecret{Key: []byte{1}}, wantCode: codes.InvalidArgument},
		"a failed install can be retried":       {initialized: true, send: right, installFail: 1, wantCode: codes.Internal, wantLocked: true},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			disk := &fakeDisk{initialized: tc.initialized, key: diskKey(t, right), comps: comps}
			lock := &fakeLock{heldBy: tc.lockedBy}
			inst := &fakeInstaller{fails: tc.installFail}
			s := New(context.Background(), disk, lock, inst, slog.New(slog.DiscardHandler))
			req := &recoverproto.RecoverRequest{MasterSecret: tc.send.Key, Salt: tc.send.Salt}
			resp, err := s.Recover(context.Background(), req)
			assert.Equal(t, tc.wantCode, status.Code(err), "%v", err)
			if tc.wantLocked {
				assert.Equal(t, clusterID(t, right), lock.heldBy, "the node lock holds the cluster ID")
			} else if tc.lockedBy == nil {
				assert.Nil(t, lock.heldBy, "a refused recovery must not lock the node")
			}
			if tc.wantCode == codes.OK {
				assert.Equal(t, "6f1c7b0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", resp.GetDiskUuid())
				require.Len(t, inst.got, 1)
				assert.Equal(t, "/var/lib/constellation/bin/kubelet", inst.got[0].GetInstallPath())
			}
			if !tc.wantLocked {
				return
			}
			// Again, as a re-run CLI does: it succeeds (retrying a failed install) and nothing runs twice.
			_, err = s.Recover(context.Background(), req)
			require.NoError(t, err)
			calls := inst.calls
			_, err = s.Recover(context.Background(), req)
			require.NoError(t, err)
			assert.Equal(t, calls, inst.calls, "a recovered node does not install again")
			// Another cluster's secret is refused now.
			other := master(9)
			_, err = s.Recover(context.Background(), &recoverproto.RecoverRequest{MasterSecret: other.Key, Salt: other.Salt})
			assert.Equal(t, codes.FailedPrecondition, status.Code(err))
		})
	}
}

// TestRecoverUserManaged: with user-managed keys the CLI reads the node's wrapped key (Describe), has the
// admin's KMS unwrap it, and sends the key with the master secret (which still gives the cluster ID). A
// key that does not unlock the disk changes nothing; a re-wrapped key replaces the kept one only once its
// key unlocked the disk.
func TestRecoverUserManaged(t *testing.T) {
	comps, err := components.MarshalList([]*components.Component{{Url: "http://10.42.0.1:9081/kubelet", Hash: "sha256:00", InstallPath: "/var/lib/constellation/bin/kubelet"}})
	require.NoError(t, err)
	kmsKey := bytes.Repeat([]byte{0x5a}, joinproto.StateDiskKeyLength)
	ms := master(1)
	tests := map[string]struct {
		key, rewrapped []byte
		wantCode       codes.Code
		wantWrapped    string
	}{
		"recovers":                       {key: kmsKey, wantWrapped: "blob"},
		"keeps a re-wrapped key":         {key: kmsKey, rewrapped: []byte("blob of the new KMS key"), wantWrapped: "blob of the new KMS key"},
		"a wrong key changes nothing":    {key: bytes.Repeat([]byte{1}, 64), rewrapped: []byte("x"), wantCode: codes.PermissionDenied, wantWrapped: "blob"},
		"a key of the wrong length":      {key: []byte{1, 2}, wantCode: codes.InvalidArgument, wantWrapped: "blob"},
		"the master secret alone cannot": {wantCode: codes.PermissionDenied, wantWrapped: "blob"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			disk := &fakeDisk{initialized: true, key: kmsKey, comps: comps, wrapped: []byte("blob")}
			lock := &fakeLock{}
			s := New(context.Background(), disk, lock, &fakeInstaller{}, slog.New(slog.DiscardHandler))
			desc, err := s.Describe(context.Background(), &recoverproto.DescribeRequest{})
			require.NoError(t, err)
			assert.Equal(t, "6f1c7b0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", desc.GetDiskUuid())
			assert.Equal(t, "blob", string(desc.GetWrappedStateDiskKey()))

			_, err = s.Recover(context.Background(), &recoverproto.RecoverRequest{
				MasterSecret: ms.Key, Salt: ms.Salt, StateDiskKey: tc.key, WrappedStateDiskKey: tc.rewrapped,
			})
			assert.Equal(t, tc.wantCode, status.Code(err), "%v", err)
			assert.Equal(t, tc.wantWrapped, string(disk.wrapped))
			if tc.wantCode == codes.OK {
				assert.Equal(t, clusterID(t, ms), lock.heldBy, "the cluster ID comes from the master secret")
			} else {
				assert.Nil(t, lock.heldBy)
			}
		})
	}
}
