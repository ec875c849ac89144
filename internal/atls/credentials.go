package atls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/constellation-go/constellation/internal/attestation"
)

// Credentials are gRPC transport credentials for aTLS. The client side builds a fresh TLS configuration,
// with a fresh nonce, for every handshake.
type Credentials struct {
	issuer     attestation.Issuer
	validators []attestation.Validator
	server     credentials.TransportCredentials
}

// NewCredentials returns aTLS credentials. On the client, validators check the server and the issuer
// answers the server's challenge; on the server, the issuer attests to clients and validators check them.
func NewCredentials(issuer attestation.Issuer, validators []attestation.Validator) (*Credentials, error) {
	serverCfg, err := NewServerConfig(issuer, validators)
	if err != nil {
		return nil, err
	}
	return &Credentials{issuer: issuer, validators: validators, server: credentials.NewTLS(serverCfg)}, nil
}

// ClientHandshake performs an aTLS client handshake on conn. It does not use gRPC's TLS credentials, which
// would replace the server name (our nonce) with the dial authority.
func (c *Credentials) ClientHandshake(ctx context.Context, _ string, rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg, err := NewClientConfig(c.issuer, c.validators)
	if err != nil {
		return nil, nil, err
	}
	conn := tls.Client(rawConn, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("aTLS handshake: %w", err)
	}
	state := conn.ConnectionState()
	if state.NegotiatedProtocol != alpnH2 {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("aTLS handshake: server did not negotiate %s", alpnH2)
	}
	return conn, credentials.TLSInfo{
		State:          state,
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

// ServerHandshake performs an aTLS server handshake on conn.
func (c *Credentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.server.ServerHandshake(conn)
}

// Info describes the protocol.
func (c *Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

// Clone returns a copy of the credentials.
func (c *Credentials) Clone() credentials.TransportCredentials {
	clone := *c
	return &clone
}

// OverrideServerName is a no-op: the server name carries the aTLS nonce.
//
// Deprecated: required by the interface; gRPC no longer calls it.
func (c *Credentials) OverrideServerName(string) error {
	return nil
}

// ErrNoAttestedPeer is returned by PeerDocument for a call that did not arrive over aTLS.
var ErrNoAttestedPeer = errors.New("the call did not come over an attested TLS connection")

// PeerDocument returns the attestation document of the client of a gRPC call that arrived over these
// credentials with validators: the document the handshake validated (the peer's leaf certificate is the one
// its verification ran on). Handlers use it to bind a request to what the peer's attestation says.
func PeerDocument(ctx context.Context) ([]byte, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, ErrNoAttestedPeer
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil, ErrNoAttestedPeer
	}
	for _, ext := range info.State.PeerCertificates[0].Extensions {
		if isAttestationOID(ext.Id) {
			return ext.Value, nil
		}
	}
	return nil, ErrNoAttestedPeer
}
