// Package recoverserver serves the Recovery API: when every control plane restarted, no JoinService can
// hand a restarted control plane its state disk key, and only the admin's master secret can unlock it.
//
// A restarted node (its state disk was unlocked in an earlier boot, PCR 15 is zero again) serves the API
// over aTLS, so the CLI checks the node's attestation before sending the master secret. Recover then:
//
//  1. derives the disk key HKDF(master secret, salt, "key-<disk UUID>") and unlocks the state disk with it;
//     a wrong master secret fails here (PermissionDenied) and nothing changed. With user-managed keys the
//     request carries the disk key instead: the CLI got the node's wrapped key from Describe and had the
//     admin's KMS unwrap it (the master secret still gives the cluster ID);
//  2. takes the node lock for the cluster ID the master secret gives (PCR 15), or FailedPrecondition if the
//     node was locked otherwise in the meantime (e.g. it rejoined);
//  3. installs the components the node recorded on its state disk (its /var is gone after a restart), so
//     the kubelet supervisor, started when the lock was taken, runs the node's static pods from the
//     unlocked /etc/kubernetes and /var/lib/etcd again.
//
// The same request again (a CLI re-run) succeeds without doing anything twice.
package recoverserver

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"sync"

	"github.com/constellation-go/constellation/bootstrapper/internal/nodestate"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// Disk is the node's state disk.
type Disk interface {
	Initialized() bool
	UUID() (string, error)
	Unlock(key []byte) error
	LoadComponents() ([]byte, error)
	WrappedKey() ([]byte, error)
	SaveWrappedKey(blob []byte) error
}

// Locker is the node lock.
type Locker interface {
	TryLock(clusterID []byte) (bool, error)
}

// Server implements recoverproto.APIServer.
type Server struct {
	recoverproto.UnimplementedAPIServer
	disk      Disk
	lock      Locker
	installer nodestate.Installer
	log       *slog.Logger
	// workCtx bounds the recovery work: the bootstrapper's lifetime, not the caller's call.
	workCtx context.Context

	mu        sync.Mutex
	recovered []byte
	diskUUID  string
	installed bool
}

// New returns the server.
func New(workCtx context.Context, disk Disk, lock Locker, installer nodestate.Installer, log *slog.Logger) *Server {
	return &Server{disk: disk, lock: lock, installer: installer, log: log, workCtx: workCtx}
}

// Register adds the API to g.
func (s *Server) Register(g *grpc.Server) { recoverproto.RegisterAPIServer(g, s) }

// Describe names the node's state disk and returns its wrapped key (user-managed keys), for the admin's KMS.
func (s *Server) Describe(context.Context, *recoverproto.DescribeRequest) (*recoverproto.DescribeResponse, error) {
	uuid, err := s.disk.UUID()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "state disk: %v", err)
	}
	wrapped, err := s.disk.WrappedKey()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	return &recoverproto.DescribeResponse{DiskUuid: uuid, WrappedStateDiskKey: wrapped}, nil
}

// Recover unlocks and restarts the node with the master secret.
func (s *Server) Recover(_ context.Context, req *recoverproto.RecoverRequest) (*recoverproto.RecoverResponse, error) {
	ms := crypto.MasterSecret{Key: req.GetMasterSecret(), Salt: req.GetSalt()}
	if err := ms.Validate(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "master secret: %v", err)
	}
	id, err := ms.Identity()
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	clusterID := id.ClusterID

	// One recovery at a time; a repeated one returns what the first did.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recovered != nil {
		if subtle.ConstantTimeCompare(s.recovered, clusterID) != 1 {
			return nil, status.Error(codes.FailedPrecondition, "this node was recovered for another cluster")
		}
		if err := s.install(); err != nil {
			return nil, err
		}
		return &recoverproto.RecoverResponse{DiskUuid: s.diskUUID}, nil
	}
	if !s.disk.Initialized() {
		return nil, status.Error(codes.FailedPrecondition, "this node's state disk was never unlocked: there is nothing to recover (initialize or join it instead)")
	}
	uuid, err := s.disk.UUID()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "state disk: %v", err)
	}
	key, keyFrom := req.GetStateDiskKey(), "the disk key unwrapped by the KMS"
	if len(key) == 0 {
		if key, err = crypto.DeriveKey(ms.Key, ms.Salt, uuid, joinproto.StateDiskKeyLength); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		keyFrom = "the master secret"
	} else if len(key) != joinproto.StateDiskKeyLength {
		return nil, status.Errorf(codes.InvalidArgument, "the disk key has %d bytes, not %d", len(key), joinproto.StateDiskKeyLength)
	}
	if err := s.disk.Unlock(key); err != nil {
		s.log.Warn("recovery refused: the key does not unlock the state disk", "from", keyFrom, "error", err)
		return nil, status.Errorf(codes.PermissionDenied, "%s does not unlock this node's state disk (%v)", keyFrom, err)
	}
	// A re-wrapped key (the KMS key moved) replaces the kept one only once its key proved right.
	if blob := req.GetWrappedStateDiskKey(); len(blob) > 0 && len(req.GetStateDiskKey()) > 0 {
		if err := s.disk.SaveWrappedKey(blob); err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
	}
	locked, err := s.lock.TryLock(clusterID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "taking the node lock: %v", err)
	}
	if !locked {
		return nil, status.Error(codes.FailedPrecondition, "this node already belongs to a cluster (it rejoined, or was recovered)")
	}
	s.recovered, s.diskUUID = clusterID, uuid
	s.log.Info("state disk unlocked and node lock taken for recovery", "diskUUID", uuid, "clusterID", fmt.Sprintf("%x", clusterID))

	if err := s.install(); err != nil {
		return nil, err
	}
	return &recoverproto.RecoverResponse{DiskUuid: uuid}, nil
}

// install installs the recorded components once; a failed attempt is retried by the next call.
func (s *Server) install() error {
	if s.installed {
		return nil
	}
	n, err := nodestate.Reinstall(s.workCtx, s.disk, s.installer)
	if err != nil {
		return status.Errorf(codes.Internal, "the node is unlocked, but (call again to retry): %v", err)
	}
	s.installed = true
	s.log.Info("node recovered", "components", n)
	return nil
}
