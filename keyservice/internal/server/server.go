// Package server is the KeyService's gRPC API: GetDataKey over the configured key backend.
package server

import (
	"context"
	"log/slog"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

// maxKeyIDLength bounds key IDs (disk UUIDs and names are far shorter).
const maxKeyIDLength = 128

// keyBackend is the part of a kms.KMS the server uses.
type keyBackend interface {
	DataKey(ctx context.Context, dekID string, length int) (key, wrapped []byte, err error)
}

// Server implements keyserviceproto.APIServer.
type Server struct {
	keyserviceproto.UnimplementedAPIServer
	kms      keyBackend
	log      *slog.Logger
	requests *prometheus.CounterVec
}

// New returns a Server deriving keys with kms. Its metrics go to reg.
func New(kms keyBackend, log *slog.Logger, reg prometheus.Registerer) *Server {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyservice_data_key_requests_total",
		Help: "GetDataKey requests by result (ok, invalid, error).",
	}, []string{"result"})
	reg.MustRegister(requests)
	return &Server{kms: kms, log: log, requests: requests}
}

// Register adds the API to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	keyserviceproto.RegisterAPIServer(g, s)
}

// GetDataKey returns the key for an ID. Keys are never logged; only the ID and length are.
func (s *Server) GetDataKey(ctx context.Context, req *keyserviceproto.GetDataKeyRequest) (*keyserviceproto.GetDataKeyResponse, error) {
	log := s.log.With("keyID", req.GetDataKeyId(), "length", req.GetLength())
	if msg := checkKeyID(req.GetDataKeyId()); msg != "" {
		s.requests.WithLabelValues("invalid").Inc()
		log.Warn("refused key request", "reason", msg)
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	length := req.GetLength()
	if length < crypto.MinKeyLength || length > crypto.MaxKeyLength {
		s.requests.WithLabelValues("invalid").Inc()
		log.Warn("refused key request", "reason", "length out of range")
		return nil, status.Errorf(codes.InvalidArgument, "key length %d out of range %d..%d", length, crypto.MinKeyLength, crypto.MaxKeyLength)
	}
	key, wrapped, err := s.kms.DataKey(ctx, req.GetDataKeyId(), int(length))
	if err != nil {
		s.requests.WithLabelValues("error").Inc()
		log.Error("getting the key failed", "error", err)
		// The reason (e.g. the user's KMS refused or is unreachable) names no key material and tells the
		// JoinService's callers, and so the admin, what to fix.
		return nil, status.Errorf(codes.Unavailable, "getting the key failed: %v", err)
	}
	s.requests.WithLabelValues("ok").Inc()
	log.Debug("issued data key")
	return &keyserviceproto.GetDataKeyResponse{DataKey: key, WrappedDataKey: wrapped}, nil
}

func checkKeyID(id string) string {
	if id == "" {
		return "key ID is empty"
	}
	if len(id) > maxKeyIDLength {
		return "key ID is too long"
	}
	for _, r := range id {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return "key ID contains unprintable characters or spaces"
		}
	}
	return ""
}
