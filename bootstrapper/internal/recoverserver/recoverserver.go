// Package recoverserver serves the Recovery API: when every control plane restarted, no JoinService can
// hand a restarted control plane its state disk key, and only the admin's master secret can unlock it.
//
// A restarted node (its state disk was unlocked in an earlier boot, PCR 15 is zero again) serves the API
// over aTLS, so the CLI checks the node's attestation before sending the master secret. Recover then:
//
//  1. derives the disk key HKDF(master secret, salt, "key-<disk UUID>") and unlocks the state disk with it;
//     a wrong master secret fails here (PermissionDenied) and nothing changed;
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
	key, err := crypto.DeriveKey(ms.Key, ms.Salt, uuid, joinproto.StateDiskKeyLength)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := s.disk.Unlock(key); err != nil {
		s.log.Warn("recovery refused: the master secret does not unlock the state disk", "error", err)
		return nil, status.Errorf(codes.PermissionDenied, "the master secret does not unlock this node's state disk (%v)", err)
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
