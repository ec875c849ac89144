// Package server is the JoinService API. The aTLS layer has already validated the joining node's attestation
// when a request reaches it; the server then fetches the node's disk key and the measurement secret from the
// KeyService, creates a bootstrap token, signs the kubelet's certificate and, for control planes, hands out
// the cluster's CA keys.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/audit"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/internal/kubeadm"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

// KeyGetter fetches data keys from the KeyService: the key and, with user-managed keys, its wrapped form.
type KeyGetter interface {
	GetDataKey(ctx context.Context, id string, length int) (key, wrapped []byte, err error)
}

type tokenCreator interface {
	CreateToken(ctx context.Context, ttl time.Duration, description string) (string, error)
}

type csrSigner interface {
	SignKubeletCSR(der []byte, nodeName string) ([]byte, error)
}

// auditLog records every decision (package audit).
type auditLog interface {
	Append(audit.Entry) error
}

// Config is what the JoinService tells joining nodes.
type Config struct {
	APIServerEndpoint string
	// DiscoveryHash is kubeadm.DiscoveryHash of the cluster CA.
	DiscoveryHash     string
	MeasurementSalt   []byte
	KubernetesVersion string
	Components        []*components.Component
	// PKIDir holds the cluster's CA files (joinproto.ControlPlaneFiles).
	PKIDir string
}

// Server implements joinproto.APIServer.
type Server struct {
	joinproto.UnimplementedAPIServer
	cfg     Config
	keys    KeyGetter
	tokens  tokenCreator
	signer  csrSigner
	log     *slog.Logger
	metrics *metrics
	audit   auditLog
}

type metrics struct {
	attempts *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// Results and failure reasons of join attempts, the labels of joinservice_join_attempts_total.
const (
	resultOK      = "ok"
	resultRefused = "refused"
	resultFailed  = "failed"

	reasonNone        = ""
	reasonAttestation = "attestation"
	reasonRequest     = "invalid_request"
	reasonNodeName    = "node_name"
	reasonKeyService  = "keyservice"
	reasonToken       = "token"
	reasonCSR         = "kubelet_csr"
	reasonPKI         = "control_plane_files"
)

// New returns a JoinService server; metrics go to reg.
func New(cfg Config, keys KeyGetter, tokens tokenCreator, signer csrSigner, log *slog.Logger, reg prometheus.Registerer) *Server {
	m := &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "joinservice_join_attempts_total",
			Help: "Join and rejoin attempts by RPC, result (ok, refused, failed) and failure reason.",
		}, []string{"rpc", "result", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "joinservice_request_duration_seconds",
			Help:    "Time to issue a ticket, by RPC and result.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"rpc", "result"}),
	}
	reg.MustRegister(m.attempts, m.latency)
	return &Server{cfg: cfg, keys: keys, tokens: tokens, signer: signer, log: log, metrics: m}
}

// RecordTo makes the server record every join, rejoin and refused handshake in a.
func (s *Server) RecordTo(a auditLog) { s.audit = a }

// record appends an entry to the audit log, if there is one. A decision stands even if it cannot be
// recorded (a full disk must not stop the cluster from healing); the failure is logged.
func (s *Server) record(e audit.Entry) {
	if s.audit == nil {
		return
	}
	if err := s.audit.Append(e); err != nil {
		s.log.Error("could not record a decision in the audit log", "kind", e.Kind, "node", e.Node, "error", err)
	}
}

// Register adds the API to g.
func (s *Server) Register(g *grpc.Server) {
	joinproto.RegisterAPIServer(g, s)
}

var (
	nodeNameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	diskUUIDRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// joinError carries the metric reason and the gRPC status of a failed step.
type joinError struct {
	reason string
	code   codes.Code
	err    error
}

func (e *joinError) Error() string { return e.err.Error() }

func fail(reason string, code codes.Code, format string, args ...any) error {
	return &joinError{reason: reason, code: code, err: fmt.Errorf(format, args...)}
}

// IssueJoinTicket gives an attested node everything it needs to join.
func (s *Server) IssueJoinTicket(ctx context.Context, req *joinproto.IssueJoinTicketRequest) (*joinproto.IssueJoinTicketResponse, error) {
	start := time.Now()
	log := s.log.With("node", req.GetNodeName(), "diskUUID", req.GetDiskUuid(), "controlPlane", req.GetIsControlPlane())
	resp, err := s.issueJoinTicket(ctx, req)
	return resp, s.finish("IssueJoinTicket", start, log, audit.Entry{Kind: audit.KindJoin, Node: req.GetNodeName(),
		Detail: fmt.Sprintf("disk %s, control plane %t", req.GetDiskUuid(), req.GetIsControlPlane())}, err)
}

func (s *Server) issueJoinTicket(ctx context.Context, req *joinproto.IssueJoinTicketRequest) (*joinproto.IssueJoinTicketResponse, error) {
	if !diskUUIDRe.MatchString(req.GetDiskUuid()) {
		return nil, fail(reasonRequest, codes.InvalidArgument, "disk UUID %q is not a UUID", req.GetDiskUuid())
	}
	if len(req.GetNodeName()) > 253 || !nodeNameRe.MatchString(req.GetNodeName()) {
		return nil, fail(reasonRequest, codes.InvalidArgument, "node name %q is not a DNS subdomain", req.GetNodeName())
	}
	if err := checkCertifiedName(ctx, req.GetNodeName()); err != nil {
		return nil, fail(reasonNodeName, codes.PermissionDenied, "%w", err)
	}
	diskKey, wrappedDiskKey, measurementSecret, err := s.secrets(ctx, req.GetDiskUuid())
	if err != nil {
		return nil, err
	}
	kubeletCert, err := s.signer.SignKubeletCSR(req.GetCertificateRequest(), req.GetNodeName())
	if err != nil {
		return nil, fail(reasonCSR, codes.InvalidArgument, "%w", err)
	}
	var files []*joinproto.ControlPlaneCertOrKey
	if req.GetIsControlPlane() {
		if files, err = s.controlPlaneFiles(); err != nil {
			return nil, fail(reasonPKI, codes.Internal, "%w", err)
		}
	}
	// The token comes last: a failed join leaves no live credential behind.
	token, err := s.tokens.CreateToken(ctx, kubeadm.TokenTTL, "join "+req.GetNodeName())
	if err != nil {
		return nil, fail(reasonToken, codes.Unavailable, "%w", err)
	}
	return &joinproto.IssueJoinTicketResponse{
		StateDiskKey:             diskKey,
		WrappedStateDiskKey:      wrappedDiskKey,
		MeasurementSalt:          s.cfg.MeasurementSalt,
		MeasurementSecret:        measurementSecret,
		KubeletCert:              kubeletCert,
		ApiServerEndpoint:        s.cfg.APIServerEndpoint,
		Token:                    token,
		DiscoveryTokenCaCertHash: s.cfg.DiscoveryHash,
		ControlPlaneFiles:        files,
		KubernetesVersion:        s.cfg.KubernetesVersion,
		KubernetesComponents:     s.cfg.Components,
	}, nil
}

// IssueRejoinTicket gives a restarted node its disk key and the measurement secret, nothing else.
func (s *Server) IssueRejoinTicket(ctx context.Context, req *joinproto.IssueRejoinTicketRequest) (*joinproto.IssueRejoinTicketResponse, error) {
	start := time.Now()
	log := s.log.With("diskUUID", req.GetDiskUuid())
	resp, err := func() (*joinproto.IssueRejoinTicketResponse, error) {
		if !diskUUIDRe.MatchString(req.GetDiskUuid()) {
			return nil, fail(reasonRequest, codes.InvalidArgument, "disk UUID %q is not a UUID", req.GetDiskUuid())
		}
		diskKey, wrappedDiskKey, measurementSecret, err := s.secrets(ctx, req.GetDiskUuid())
		if err != nil {
			return nil, err
		}
		return &joinproto.IssueRejoinTicketResponse{StateDiskKey: diskKey, WrappedStateDiskKey: wrappedDiskKey,
			MeasurementSecret: measurementSecret, MeasurementSalt: s.cfg.MeasurementSalt}, nil
	}()
	return resp, s.finish("IssueRejoinTicket", start, log, audit.Entry{Kind: audit.KindRejoin, Detail: "disk " + req.GetDiskUuid()}, err)
}

// ErrNodeNameNotCertified refuses a node that asks to join under another name than the one its platform
// certified for its vTPM: a kubelet certificate and bootstrap token for another node's name would let it
// impersonate that node to the API server.
var ErrNodeNameNotCertified = errors.New("the node name is not the one the platform certified for the node's vTPM")

// checkCertifiedName binds the request's node name to the caller's attestation. Documents of variants in
// which an SEV-SNP report vouches for the AK name no node (the report says which VM, not which name), so
// only vTPM names are checked; for qemu-vtpm the validator has already required the AK certificate.
func checkCertifiedName(ctx context.Context, nodeName string) error {
	doc, err := atls.PeerDocument(ctx)
	if err != nil {
		return err
	}
	certified, err := vtpm.CertifiedName(doc)
	if err != nil {
		return err
	}
	if certified != "" && certified != nodeName {
		return fmt.Errorf("%w: asked to join as %q, the vTPM is certified as %q", ErrNodeNameNotCertified, nodeName, certified)
	}
	return nil
}

func (s *Server) secrets(ctx context.Context, diskUUID string) (diskKey, wrappedDiskKey, measurementSecret []byte, err error) {
	if diskKey, wrappedDiskKey, err = s.keys.GetDataKey(ctx, diskUUID, joinproto.StateDiskKeyLength); err != nil {
		return nil, nil, nil, fail(reasonKeyService, codes.Unavailable, "getting the disk key: %w", err)
	}
	if measurementSecret, _, err = s.keys.GetDataKey(ctx, crypto.MeasurementSecretID, 32); err != nil {
		return nil, nil, nil, fail(reasonKeyService, codes.Unavailable, "getting the measurement secret: %w", err)
	}
	return diskKey, wrappedDiskKey, measurementSecret, nil
}

func (s *Server) controlPlaneFiles() ([]*joinproto.ControlPlaneCertOrKey, error) {
	files := make([]*joinproto.ControlPlaneCertOrKey, 0, len(joinproto.ControlPlaneFiles))
	for _, name := range joinproto.ControlPlaneFiles {
		data, err := os.ReadFile(filepath.Join(s.cfg.PKIDir, name))
		if err != nil {
			return nil, fmt.Errorf("reading control-plane file: %w", err)
		}
		files = append(files, &joinproto.ControlPlaneCertOrKey{Name: name, Data: data})
	}
	return files, nil
}

// finish records the attempt (metrics, the audit log's entry e) and turns err into a gRPC status that tells
// the node what failed.
func (s *Server) finish(rpc string, start time.Time, log *slog.Logger, e audit.Entry, err error) error {
	if err == nil {
		s.metrics.attempts.WithLabelValues(rpc, resultOK, reasonNone).Inc()
		s.metrics.latency.WithLabelValues(rpc, resultOK).Observe(time.Since(start).Seconds())
		log.Info("issued ticket", "rpc", rpc, "duration", time.Since(start))
		e.Result = resultOK
		s.record(e)
		return nil
	}
	var je *joinError
	if !errors.As(err, &je) {
		je = &joinError{reason: "internal", code: codes.Internal, err: err}
	}
	result := resultFailed
	if je.code == codes.InvalidArgument || je.code == codes.PermissionDenied {
		result = resultRefused
	}
	s.metrics.attempts.WithLabelValues(rpc, result, je.reason).Inc()
	s.metrics.latency.WithLabelValues(rpc, result).Observe(time.Since(start).Seconds())
	log.Warn("ticket not issued", "rpc", rpc, "reason", je.reason, "error", je.err)
	e.Result, e.Reason = result, je.reason
	e.Detail = strings.TrimSpace(e.Detail + ": " + je.err.Error())
	s.record(e)
	return status.Error(je.code, je.err.Error())
}

// CountingValidator counts the attestations the aTLS layer refuses, which never reach a handler.
func (s *Server) CountingValidator(v attestation.Validator) attestation.Validator {
	return &countingValidator{Validator: v, s: s}
}

type countingValidator struct {
	attestation.Validator
	s *Server
}

func (c *countingValidator) Validate(ctx context.Context, doc, nonce []byte) ([]byte, error) {
	userData, err := c.Validator.Validate(ctx, doc, nonce)
	if err != nil {
		c.s.metrics.attempts.WithLabelValues("handshake", resultRefused, reasonAttestation).Inc()
		c.s.log.Warn("refused a node's attestation", "error", err)
		c.s.record(audit.Entry{Kind: audit.KindHandshake, Result: resultRefused, Reason: reasonAttestation, Detail: err.Error()})
	}
	return userData, err
}

// Variant returns the wrapped validator's variant.
func (c *countingValidator) Variant() variant.Variant {
	return c.Validator.Variant()
}
