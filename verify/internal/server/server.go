// Package server is the VerificationService: it returns the node's attestation bound to a caller's nonce,
// over gRPC and over HTTP (GET /?nonce=<hex>&userData=<hex>), so that `constellation verify` can check any
// node at any time.
package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

// maxUserData bounds the caller's user data; it is hashed into the quote, so it need not be large.
const maxUserData = 1024

// issuer is the part of an attestation.Issuer the server uses.
type issuer interface {
	Issue(ctx context.Context, userData, nonce []byte) ([]byte, error)
}

// Server implements verifyproto.APIServer and the HTTP endpoint.
type Server struct {
	verifyproto.UnimplementedAPIServer
	issuer   issuer
	node     string
	log      *slog.Logger
	requests *prometheus.CounterVec
}

// New returns the Server of node (its Kubernetes node name); its metrics go to reg.
func New(i issuer, node string, log *slog.Logger, reg prometheus.Registerer) *Server {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "verificationservice_attestation_requests_total",
		Help: "Attestation requests by protocol and result (ok, invalid, error).",
	}, []string{"protocol", "result"})
	reg.MustRegister(requests)
	return &Server{issuer: i, node: node, log: log, requests: requests}
}

// Register adds the gRPC API to g.
func (s *Server) Register(g *grpc.Server) {
	verifyproto.RegisterAPIServer(g, s)
}

var (
	errNonce    = errors.New("nonce must be at least 32 bytes")
	errUserData = errors.New("user data must be at most 1024 bytes")
)

func (s *Server) attest(ctx context.Context, protocol string, nonce, userData []byte) ([]byte, error) {
	if len(nonce) < attestation.MinNonceSize {
		s.requests.WithLabelValues(protocol, "invalid").Inc()
		return nil, errNonce
	}
	if len(userData) > maxUserData {
		s.requests.WithLabelValues(protocol, "invalid").Inc()
		return nil, errUserData
	}
	// Never the caller's user data as it is: see verifyproto.Binding.
	doc, err := s.issuer.Issue(ctx, verifyproto.Binding(s.node, userData), nonce)
	if err != nil {
		s.requests.WithLabelValues(protocol, "error").Inc()
		s.log.Error("issuing attestation failed", "error", err)
		return nil, err
	}
	s.requests.WithLabelValues(protocol, "ok").Inc()
	return doc, nil
}

// GetAttestation returns an attestation document for the request's nonce and user data.
func (s *Server) GetAttestation(ctx context.Context, req *verifyproto.GetAttestationRequest) (*verifyproto.GetAttestationResponse, error) {
	doc, err := s.attest(ctx, "grpc", req.GetNonce(), req.GetUserData())
	switch {
	case errors.Is(err, errNonce) || errors.Is(err, errUserData):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Error(codes.Internal, "issuing the attestation failed")
	}
	return &verifyproto.GetAttestationResponse{Attestation: doc, NodeName: s.node}, nil
}

// HTTPResponse is the body of the HTTP endpoint's answer.
type HTTPResponse struct {
	Attestation []byte `json:"attestation"`
	// NodeName is the node that answered; the attestation is bound to verifyproto.Binding(NodeName, userData).
	NodeName string `json:"nodeName"`
}

// ServeHTTP answers GET /?nonce=<hex>&userData=<hex>.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	nonce, err := hex.DecodeString(r.URL.Query().Get("nonce"))
	if err != nil {
		http.Error(w, "nonce must be hex", http.StatusBadRequest)
		return
	}
	userData, err := hex.DecodeString(r.URL.Query().Get("userData"))
	if err != nil {
		http.Error(w, "userData must be hex", http.StatusBadRequest)
		return
	}
	doc, err := s.attest(r.Context(), "http", nonce, userData)
	switch {
	case errors.Is(err, errNonce) || errors.Is(err, errUserData):
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	case err != nil:
		http.Error(w, "issuing the attestation failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(HTTPResponse{Attestation: doc, NodeName: s.node})
}
