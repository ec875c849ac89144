// Package initserver serves the Init API: the CLI initialises the cluster on the first control plane
// through it, over aTLS in which the node attests.
//
// The order of Init is the security argument:
//
//  1. The caller proves it created the infrastructure: SHA-256 of its init secret must equal the hash in
//     the provider's metadata (constant-time comparison). Otherwise PermissionDenied, and nothing changed.
//  2. The request is validated completely (master secret and salt sizes, Kubernetes version, key backend,
//     everything the kubeadm configuration is built from): InvalidArgument, nothing changed.
//  3. The keys are derived: measurement secret = HKDF(master secret, salt, "key-measurementSecret"), cluster
//     ID = HKDF(measurement secret, salt, "key-clusterID") (the measurement salt is the request's salt),
//     owner ID = HKDF(master secret, salt, "key-ownerID").
//  4. The node lock is taken for the cluster ID (PCR 15, irreversible). If it is taken already (a join or an
//     earlier Init won), FailedPrecondition.
//  5. The Initializer sets up the node and the cluster, streaming progress. On success the stream carries
//     init_success with the admin kubeconfig, owner ID and cluster ID; on failure init_failure followed by
//     log messages with the node's recent logs, then the stream ends normally.
//
// Once the lock is taken the init runs to its end even if the caller goes away: stopping half-way would
// leave a worse node behind. A caller that comes back with the same request (same init secret, same master
// secret and salt, so the same cluster ID) resumes: it waits for the running init, or gets the stored
// result of the finished one, so an interrupted `constellation apply` can simply be run again. Any other
// request after the lock was taken gets FailedPrecondition.
package initserver

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/bootstrapper/initproto"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// logChunkSize bounds each log message of a failure report.
const logChunkSize = 64 << 10

// Metadata gives the hash of the init secret (SHA-256, from the provider's instance metadata).
type Metadata interface {
	InitSecretHash(ctx context.Context) ([]byte, error)
}

// Locker is the node lock.
type Locker interface {
	TryLock(clusterID []byte) (bool, error)
}

// Request is a validated Init request with its derived keys.
type Request struct {
	MasterSecret      crypto.MasterSecret
	MeasurementSecret []byte
	ClusterID         []byte
	OwnerID           []byte
	// KubernetesVersion is a full supported version.
	KubernetesVersion string
	Components        []*components.Component
	ClusterName       string
	APIServerCertSANs []string
	// KMSURI is the KeyService's backend, kms://cluster-kms by default.
	KMSURI string
	// KMSCredentials, with user-managed keys, are the cluster's credentials for the KMS; nil: the nodes'
	// AWS environment.
	KMSCredentials *awskms.Credentials
	// AttestationConfig is the attestation section of the admin's configuration (YAML), what the
	// JoinService enforces.
	AttestationConfig []byte
}

// Progress reports a step of the init to the caller.
type Progress func(step, message string)

// Initializer sets up the node and the cluster.
type Initializer interface {
	// Validate checks everything Init will use from the request, before the node lock is taken.
	Validate(req Request) error
	// Init runs after the node lock was taken and returns the admin kubeconfig.
	Init(ctx context.Context, req Request, progress Progress) ([]byte, error)
}

// Server implements initproto.APIServer.
type Server struct {
	initproto.UnimplementedAPIServer
	metadata Metadata
	lock     Locker
	init     Initializer
	logs     func() []byte
	log      *slog.Logger
	// workCtx bounds the init work: the bootstrapper's lifetime, not the caller's stream.
	workCtx context.Context

	mu       sync.Mutex
	finished chan struct{}
	// owner is the cluster ID an Init of this server took the node lock for.
	owner []byte
	// result is the finished Init's answer (success, or failure followed by logs).
	result []*initproto.InitResponse
}

// New returns the server. logs returns the node's recent logs for failure reports; workCtx bounds the
// init work.
func New(workCtx context.Context, metadata Metadata, lock Locker, init Initializer, logs func() []byte, log *slog.Logger) *Server {
	return &Server{
		metadata: metadata, lock: lock, init: init, logs: logs, log: log, workCtx: workCtx,
		finished: make(chan struct{}),
	}
}

// Register adds the API to g.
func (s *Server) Register(g *grpc.Server) {
	initproto.RegisterAPIServer(g, s)
}

// Finished is closed when an Init that took the node lock has ended (successfully or not).
func (s *Server) Finished() <-chan struct{} {
	return s.finished
}

// Init initialises the cluster.
func (s *Server) Init(req *initproto.InitRequest, stream initproto.API_InitServer) error {
	ctx := stream.Context()
	if err := s.checkInitSecret(ctx, req.GetInitSecret()); err != nil {
		s.log.Warn("init refused", "error", err)
		return err
	}
	r, err := s.validate(req)
	if err != nil {
		s.log.Warn("init refused: invalid request", "error", err)
		return status.Error(codes.InvalidArgument, err.Error())
	}
	s.mu.Lock()
	if owner := s.owner; owner != nil {
		s.mu.Unlock()
		if subtle.ConstantTimeCompare(owner, r.ClusterID) != 1 {
			s.log.Warn("init refused: the node was initialised for another cluster")
			return status.Error(codes.FailedPrecondition, "this node already belongs to a cluster (it was initialised with another master secret)")
		}
		return s.resume(ctx, stream)
	}
	// Held while taking the lock: KeepServing, called when the lock is taken, must see the owner.
	locked, err := s.lock.TryLock(r.ClusterID)
	if locked {
		s.owner = r.ClusterID
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("taking the node lock failed", "error", err)
		if locked {
			s.finish(nil)
		}
		return status.Errorf(codes.Internal, "taking the node lock: %v", err)
	}
	if !locked {
		s.log.Warn("init refused: the node already belongs to a cluster")
		return status.Error(codes.FailedPrecondition, "this node already belongs to a cluster (it joined one, or was initialised before)")
	}
	s.log.Info("node lock taken for init", "clusterID", fmt.Sprintf("%x", r.ClusterID))

	send := s.sender(stream)
	progress := func(step, message string) {
		s.log.Info("init progress", "step", step, "message", message)
		send(&initproto.InitResponse{Kind: &initproto.InitResponse_Progress{Progress: &initproto.ProgressResponse{Step: step, Message: message}}})
	}
	var result []*initproto.InitResponse
	kubeconfig, err := s.init.Init(s.workCtx, r, progress)
	if err != nil {
		s.log.Error("init failed", "error", err)
		result = append(result, &initproto.InitResponse{Kind: &initproto.InitResponse_InitFailure{InitFailure: &initproto.InitFailureResponse{Error: err.Error()}}})
		logs := s.logs()
		for len(logs) > 0 {
			n := min(len(logs), logChunkSize)
			result = append(result, &initproto.InitResponse{Kind: &initproto.InitResponse_Log{Log: &initproto.LogResponse{Log: logs[:n]}}})
			logs = logs[n:]
		}
	} else {
		s.log.Info("init succeeded")
		result = append(result, &initproto.InitResponse{Kind: &initproto.InitResponse_InitSuccess{InitSuccess: &initproto.InitSuccessResponse{
			Kubeconfig: kubeconfig, OwnerId: r.OwnerID, ClusterId: r.ClusterID,
		}}})
	}
	s.finish(result)
	for _, resp := range result {
		send(resp)
	}
	return nil
}

// resume answers a repeated request: it waits for the running Init, then sends its result.
func (s *Server) resume(ctx context.Context, stream initproto.API_InitServer) error {
	s.log.Info("a caller resumes the init")
	send := s.sender(stream)
	send(&initproto.InitResponse{Kind: &initproto.InitResponse_Progress{Progress: &initproto.ProgressResponse{
		Step: "resume", Message: "this node is already being initialised with this request; waiting for the result",
	}}})
	select {
	case <-s.finished:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	s.mu.Lock()
	result := s.result
	s.mu.Unlock()
	if len(result) == 0 {
		return status.Error(codes.Internal, "the init on this node ended without a result (see the node's logs)")
	}
	for _, resp := range result {
		send(resp)
	}
	return nil
}

// KeepServing tells whether the Init API must keep serving after the node lock was taken: when an Init of
// this server took it, so that its caller can resume.
func (s *Server) KeepServing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owner != nil
}

// finish records the result and marks the Init finished.
func (s *Server) finish(result []*initproto.InitResponse) {
	s.mu.Lock()
	s.result = result
	s.mu.Unlock()
	s.markFinished()
}

func (s *Server) markFinished() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.finished:
	default:
		close(s.finished)
	}
}

// sender sends on the stream; once the caller is gone, sending stops (and the init continues).
func (s *Server) sender(stream initproto.API_InitServer) func(*initproto.InitResponse) {
	gone := false
	return func(resp *initproto.InitResponse) {
		if gone {
			return
		}
		if err := stream.Send(resp); err != nil {
			gone = true
			s.log.Warn("the init caller went away; init continues", "error", err)
		}
	}
}

func (s *Server) checkInitSecret(ctx context.Context, secret []byte) error {
	want, err := s.metadata.InitSecretHash(ctx)
	if err != nil {
		return status.Errorf(codes.Unavailable, "getting the init secret hash from metadata: %v", err)
	}
	if len(want) != sha256.Size {
		return status.Errorf(codes.FailedPrecondition, "the init secret hash in metadata is %d bytes, expected %d", len(want), sha256.Size)
	}
	got := sha256.Sum256(secret)
	if len(secret) == 0 || subtle.ConstantTimeCompare(got[:], want) != 1 {
		return status.Error(codes.PermissionDenied, "wrong init secret")
	}
	return nil
}

// validate checks the request and derives its keys.
func (s *Server) validate(req *initproto.InitRequest) (Request, error) {
	var errs []error
	master := crypto.MasterSecret{Key: req.GetMasterSecret(), Salt: req.GetSalt()}
	if err := master.Validate(); err != nil {
		errs = append(errs, err)
	}
	version, err := versions.ResolveKubernetes(req.GetKubernetesVersion())
	if err != nil {
		errs = append(errs, err)
	}
	kmsURI := req.GetKmsUri()
	if kmsURI == "" {
		kmsURI = kmsuri.Default
	}
	// The KeyService parses the URI the same way, but only once it runs: refuse before the node is locked.
	var kmsCreds *awskms.Credentials
	if u, err := kmsuri.Parse(kmsURI); err != nil {
		errs = append(errs, err)
	} else if c := req.GetKmsCredentials(); c != nil {
		kmsCreds = &awskms.Credentials{AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken()}
		if u.Host != kmsuri.AWSKMS {
			errs = append(errs, fmt.Errorf("KMS credentials are for %s, not %s", kmsuri.AWSKMS, u.Host))
		} else if err := kmsCreds.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for i, c := range req.GetKubernetesComponents() {
		if c.GetUrl() == "" || c.GetHash() == "" || c.GetInstallPath() == "" {
			errs = append(errs, fmt.Errorf("component %d (%s): needs url, hash and install_path", i, c.GetName()))
		}
	}
	if len(errs) > 0 {
		return Request{}, errors.Join(errs...)
	}
	r := Request{
		MasterSecret:      master,
		KubernetesVersion: version,
		Components:        req.GetKubernetesComponents(),
		ClusterName:       req.GetClusterName(),
		APIServerCertSANs: req.GetApiserverCertSans(),
		KMSURI:            kmsURI,
		KMSCredentials:    kmsCreds,
		AttestationConfig: req.GetAttestationConfig(),
	}
	id, err := master.Identity()
	if err != nil {
		return Request{}, err
	}
	r.MeasurementSecret, r.ClusterID, r.OwnerID = id.MeasurementSecret, id.ClusterID, id.OwnerID
	if err := s.init.Validate(r); err != nil {
		return Request{}, err
	}
	return r, nil
}
