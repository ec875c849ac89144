package atls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"time"

	"github.com/constellation-go/constellation/internal/attestation"
)

// alpnH2 is offered in every configuration so that gRPC (which requires ALPN) works over aTLS.
const alpnH2 = "h2"

// ErrNothingToAttest is returned for a configuration in which neither side attests: that is not aTLS.
var ErrNothingToAttest = errors.New("aTLS needs an issuer, validators, or both")

// NewServerConfig returns a TLS configuration for an aTLS server. With an issuer, the server attests to each
// client (client nonce from the SNI). With validators, every client must attest (server nonce in the
// acceptable-CA list). Both together is mutual attestation.
func NewServerConfig(issuer attestation.Issuer, validators []attestation.Validator) (*tls.Config, error) {
	if issuer == nil && len(validators) == 0 {
		return nil, ErrNothingToAttest
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
		// A resumed session skips the certificate and with it the attestation: never issue tickets.
		SessionTicketsDisabled: true,
		// A fresh configuration per connection: each handshake has its own nonces and certificate.
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			return serverConnConfig(hello, issuer, validators)
		},
	}, nil
}

func serverConnConfig(hello *tls.ClientHelloInfo, issuer attestation.Issuer, validators []attestation.Validator) (*tls.Config, error) {
	ctx := hello.Context()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpnH2}, SessionTicketsDisabled: true}
	var clientNonce []byte
	if issuer != nil {
		var err error
		if clientNonce, err = decodeClientNonce(hello.ServerName); err != nil {
			return nil, err
		}
	}
	// Without an issuer this is a plain certificate, which a client that does not validate accepts.
	cert, err := attestedCertificate(ctx, issuer, clientNonce, time.Now())
	if err != nil {
		return nil, err
	}
	cfg.Certificates = []tls.Certificate{*cert}

	if len(validators) > 0 {
		serverNonce, err := newNonce()
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		name := serverNonceName(serverNonce)
		// The pool only needs to announce the name; this certificate is never used to verify anything.
		pool.AddCert(&x509.Certificate{Raw: name, RawSubject: name})
		cfg.ClientCAs = pool
		// Request, not require: the callback below then runs for a missing certificate too and says so.
		cfg.ClientAuth = tls.RequestClientCert
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyAttestedCertificate(ctx, raw, validators, serverNonce, time.Now())
		}
	}
	return cfg, nil
}

// NewClientConfig returns a TLS configuration for one aTLS connection; it must not be reused, since it holds
// the connection's nonce. With validators, the server must attest; with an issuer, the client attests when
// the server asks.
func NewClientConfig(issuer attestation.Issuer, validators []attestation.Validator) (*tls.Config, error) {
	if issuer == nil && len(validators) == 0 {
		return nil, ErrNothingToAttest
	}
	clientNonce, err := newNonce()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
		ServerName: encodeClientNonce(clientNonce),
		// Certificates are self-signed: trust comes from the attestation, checked below, not from a CA.
		InsecureSkipVerify: true, //nolint:gosec // verified by VerifyPeerCertificate
		// No session cache: a resumed session would skip the server's attestation.
		ClientSessionCache: nil,
	}
	if len(validators) > 0 {
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyAttestedCertificate(context.Background(), raw, validators, clientNonce, time.Now())
		}
	}
	if issuer != nil {
		cfg.GetClientCertificate = func(req *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			serverNonce, err := decodeServerNonce(req.AcceptableCAs)
			if err != nil {
				return nil, err
			}
			return attestedCertificate(req.Context(), issuer, serverNonce, time.Now())
		}
	}
	return cfg, nil
}
