package atls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/variant"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testIssuer and testValidator stand in for a real variant at the interface: the document is the nonce and
// user data in JSON. They exercise aTLS's own checks; real vTPM attestation is in the integration test.
type testIssuer struct {
	v variant.Variant
	// tamper changes a document after it is issued.
	tamper func(nonce, userData []byte) ([]byte, []byte)
	size   int
}

type testDoc struct {
	Nonce    []byte `json:"nonce"`
	UserData []byte `json:"userData"`
	Pad      []byte `json:"pad,omitempty"`
}

func (i testIssuer) Variant() variant.Variant { return i.v }

func (i testIssuer) Issue(_ context.Context, userData, nonce []byte) ([]byte, error) {
	if i.tamper != nil {
		nonce, userData = i.tamper(nonce, userData)
	}
	return json.Marshal(testDoc{Nonce: nonce, UserData: userData, Pad: make([]byte, i.size)})
}

type testValidator struct {
	v variant.Variant
}

var errTestNonce = errors.New("test validator: nonce mismatch")

func (v testValidator) Variant() variant.Variant { return v.v }

func (v testValidator) Validate(_ context.Context, raw, nonce []byte) ([]byte, error) {
	var d testDoc
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, err
	}
	if !bytes.Equal(d.Nonce, nonce) {
		return nil, errTestNonce
	}
	return d.UserData, nil
}

var (
	qemuIssuer    = testIssuer{v: variant.QEMUVTPM}
	qemuValidator = []attestation.Validator{testValidator{v: variant.QEMUVTPM}}
)

// handshake runs one TLS handshake over loopback and returns the client's and the server's errors.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	return connect(t, serverCfg, clientCfg, func(srv *tls.Conn) error {
		err := srv.Handshake()
		if err == nil {
			// TLS 1.3 servers finish before reading the client's certificate; a read completes it.
			_, err = srv.Read(make([]byte, 1))
			if errors.Is(err, io.EOF) {
				err = nil
			}
		}
		return err
	}, func(cli *tls.Conn) error { return cli.Handshake() })
}

// connect runs server on the one connection a loopback listener accepts and client on the connection
// dialed to it, and returns their errors. (A net.Pipe is unbuffered: both sides sending an alert at once
// would deadlock.)
func connect(t *testing.T, serverCfg, clientCfg *tls.Config, server func(*tls.Conn) error, client func(*tls.Conn) error) (clientErr, serverErr error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		s, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		srv := tls.Server(s, serverCfg)
		err = server(srv)
		_ = srv.Close()
		done <- err
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	require.NoError(t, err)
	cli := tls.Client(c, clientCfg)
	clientErr = client(cli)
	_ = cli.Close()
	return clientErr, <-done
}

func TestHandshakeModes(t *testing.T) {
	otherValidator := []attestation.Validator{testValidator{v: variant.AWSSEVSNP}}
	testCases := map[string]struct {
		serverIssuer     attestation.Issuer
		serverValidators []attestation.Validator
		clientIssuer     attestation.Issuer
		clientValidators []attestation.Validator
		wantClientErr    error
		wantServerErr    error
	}{
		"server attests": {serverIssuer: qemuIssuer, clientValidators: qemuValidator},
		"client attests": {serverValidators: qemuValidator, clientIssuer: qemuIssuer},
		"mutual":         {serverIssuer: qemuIssuer, serverValidators: qemuValidator, clientIssuer: qemuIssuer, clientValidators: qemuValidator},
		"server replays an old document": {
			serverIssuer: testIssuer{v: variant.QEMUVTPM, tamper: func(_, u []byte) ([]byte, []byte) {
				return bytes.Repeat([]byte{7}, NonceSize), u
			}},
			clientValidators: qemuValidator, wantClientErr: errTestNonce,
		},
		"client replays an old document": {
			serverValidators: qemuValidator,
			clientIssuer: testIssuer{v: variant.QEMUVTPM, tamper: func(_, u []byte) ([]byte, []byte) {
				return bytes.Repeat([]byte{7}, NonceSize), u
			}},
			wantServerErr: errTestNonce,
		},
		"attestation for another key": {
			serverIssuer: testIssuer{v: variant.QEMUVTPM, tamper: func(n, _ []byte) ([]byte, []byte) {
				return n, bytes.Repeat([]byte{1}, 32)
			}},
			clientValidators: qemuValidator, wantClientErr: ErrKeyMismatch,
		},
		"server does not attest but client expects it": {
			serverValidators: qemuValidator, clientIssuer: qemuIssuer, clientValidators: qemuValidator,
			wantClientErr: ErrNoAttestation,
		},
		"client does not attest but server expects it": {
			serverIssuer: qemuIssuer, serverValidators: qemuValidator, clientValidators: qemuValidator,
			wantServerErr: ErrNoCertificate,
		},
		"unknown variant": {
			serverIssuer: qemuIssuer, clientValidators: otherValidator, wantClientErr: ErrUnknownVariant,
		},
		"oversize document": {
			serverIssuer:     testIssuer{v: variant.QEMUVTPM, size: attestation.MaxDocumentSize},
			clientValidators: qemuValidator, wantClientErr: attestation.ErrDocumentTooLarge,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			serverCfg, err := NewServerConfig(tc.serverIssuer, tc.serverValidators)
			require.NoError(t, err)
			clientCfg, err := NewClientConfig(tc.clientIssuer, tc.clientValidators)
			require.NoError(t, err)
			clientErr, serverErr := handshake(t, serverCfg, clientCfg)
			if tc.wantClientErr == nil && tc.wantServerErr == nil {
				require.NoError(t, clientErr)
				require.NoError(t, serverErr)
				return
			}
			if tc.wantClientErr != nil {
				assert.ErrorIs(t, clientErr, tc.wantClientErr)
			}
			if tc.wantServerErr != nil {
				assert.ErrorIs(t, serverErr, tc.wantServerErr)
			}
		})
	}
}

func TestNothingToAttest(t *testing.T) {
	_, err := NewServerConfig(nil, nil)
	assert.ErrorIs(t, err, ErrNothingToAttest)
	_, err = NewClientConfig(nil, nil)
	assert.ErrorIs(t, err, ErrNothingToAttest)
}

func TestServerRefusesClientWithoutNonce(t *testing.T) {
	serverCfg, err := NewServerConfig(qemuIssuer, nil)
	require.NoError(t, err)
	clientCfg, err := NewClientConfig(nil, qemuValidator)
	require.NoError(t, err)
	clientCfg.ServerName = "example.com"
	_, serverErr := handshake(t, serverCfg, clientCfg)
	assert.ErrorIs(t, serverErr, ErrNoNonce)
}

func TestVerifyCertificateChecks(t *testing.T) {
	nonce := bytes.Repeat([]byte{3}, NonceSize)
	now := time.Now()
	certAt := func(t *testing.T, issuer attestation.Issuer, at time.Time) [][]byte {
		t.Helper()
		c, err := attestedCertificate(context.Background(), issuer, nonce, at)
		require.NoError(t, err)
		return c.Certificate
	}
	testCases := map[string]struct {
		raw     func(t *testing.T) [][]byte
		wantErr error
	}{
		"valid":           {raw: func(t *testing.T) [][]byte { return certAt(t, qemuIssuer, now) }},
		"expired":         {raw: func(t *testing.T) [][]byte { return certAt(t, qemuIssuer, now.Add(-time.Hour)) }, wantErr: ErrCertificateValidity},
		"not yet valid":   {raw: func(t *testing.T) [][]byte { return certAt(t, qemuIssuer, now.Add(time.Hour)) }, wantErr: ErrCertificateValidity},
		"no certificate":  {raw: func(*testing.T) [][]byte { return nil }, wantErr: ErrNoCertificate},
		"no attestation":  {raw: func(t *testing.T) [][]byte { return certAt(t, nil, now) }, wantErr: ErrNoAttestation},
		"empty extension": {raw: func(t *testing.T) [][]byte { return certAt(t, emptyIssuer{}, now) }, wantErr: ErrEmptyDocument},
		"unknown variant": {raw: func(t *testing.T) [][]byte { return certAt(t, testIssuer{v: variant.GCPSEVSNP}, now) }, wantErr: ErrUnknownVariant},
		"garbage":         {raw: func(*testing.T) [][]byte { return [][]byte{{0x30, 0x03, 0x02, 0x01}} }},
		"wrong signature": {raw: func(t *testing.T) [][]byte { return flipSignature(t, certAt(t, qemuIssuer, now)) }},
		// A handler reading the peer's document (PeerDocument) must read the validated one: an unvalidated
		// document of another variant placed first must not get through.
		"two documents": {raw: func(t *testing.T) [][]byte { return twoDocuments(t, nonce, now) }, wantErr: ErrSeveralAttestations},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			err := verifyAttestedCertificate(context.Background(), tc.raw(t), qemuValidator, nonce, now)
			switch {
			case name == "valid":
				assert.NoError(t, err)
			case tc.wantErr != nil:
				assert.ErrorIs(t, err, tc.wantErr)
			default:
				assert.Error(t, err)
			}
		})
	}
}

// twoDocuments returns a certificate with a made-up document of an unaccepted variant before a valid one.
func twoDocuments(t *testing.T, nonce []byte, now time.Time) [][]byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	userData, err := keyDigest(&key.PublicKey)
	require.NoError(t, err)
	valid, err := qemuIssuer.Issue(context.Background(), userData, nonce)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Minute),
		ExtraExtensions: []pkix.Extension{
			{Id: variant.GCPSEVSNP.OID(), Value: []byte(`{"made":"up"}`)},
			{Id: variant.QEMUVTPM.OID(), Value: valid},
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return [][]byte{der}
}

type emptyIssuer struct{}

func (emptyIssuer) Variant() variant.Variant                              { return variant.QEMUVTPM }
func (emptyIssuer) Issue(context.Context, []byte, []byte) ([]byte, error) { return []byte{}, nil }

func flipSignature(t *testing.T, raw [][]byte) [][]byte {
	t.Helper()
	der := bytes.Clone(raw[0])
	der[len(der)-3] ^= 0x01
	return [][]byte{der}
}

func TestNonceEncodings(t *testing.T) {
	nonce := bytes.Repeat([]byte{0xab}, NonceSize)
	sni := encodeClientNonce(nonce)
	for _, label := range bytes.Split([]byte(sni), []byte(".")) {
		assert.LessOrEqual(t, len(label), 63, "DNS label limit")
	}
	got, err := decodeClientNonce(sni)
	require.NoError(t, err)
	assert.Equal(t, nonce, got)
	for _, bad := range []string{"", "example.com", sni[:len(sni)-1] + "z"} {
		_, err := decodeClientNonce(bad)
		assert.ErrorIs(t, err, ErrNoNonce, bad)
	}

	got, err = decodeServerNonce([][]byte{serverNonceName(nonce)})
	require.NoError(t, err)
	assert.Equal(t, nonce, got)
	_, err = decodeServerNonce(nil)
	assert.ErrorIs(t, err, ErrNoNonce)
	_, err = decodeServerNonce([][]byte{serverNonceName(nonce), serverNonceName(nonce)})
	assert.ErrorIs(t, err, ErrNoNonce)
	_, err = decodeServerNonce([][]byte{{1, 2, 3}})
	assert.ErrorIs(t, err, ErrNoNonce)
}

func TestGRPCOverBufconn(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	serverCreds, err := NewCredentials(qemuIssuer, qemuValidator)
	require.NoError(t, err)
	// Handlers see the document the handshake validated.
	var (
		mu       sync.Mutex
		peerDocs [][]byte
	)
	srv := grpc.NewServer(grpc.Creds(serverCreds), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			doc, err := PeerDocument(ctx)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			peerDocs = append(peerDocs, doc)
			mu.Unlock()
			return handler(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	call := func(issuer attestation.Issuer, validators []attestation.Validator) error {
		creds, err := NewCredentials(issuer, validators)
		require.NoError(t, err)
		conn, err := grpc.NewClient("passthrough:///bufnet",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(creds))
		require.NoError(t, err)
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
		return err
	}
	// Two calls: each handshake builds a fresh configuration with a fresh nonce.
	require.NoError(t, call(qemuIssuer, qemuValidator))
	require.NoError(t, call(qemuIssuer, qemuValidator))
	assert.Error(t, call(nil, qemuValidator), "the server requires the client to attest")
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, peerDocs, 2)
	var doc testDoc
	require.NoError(t, json.Unmarshal(peerDocs[1], &doc))
	assert.Len(t, doc.Nonce, NonceSize, "the client's document, bound to the server's nonce")

	_, err = PeerDocument(context.Background())
	assert.ErrorIs(t, err, ErrNoAttestedPeer)
}

// countingValidator counts validations.
type countingValidator struct {
	testValidator
	n *int
}

func (v countingValidator) Validate(ctx context.Context, raw, nonce []byte) ([]byte, error) {
	*v.n++
	return v.testValidator.Validate(ctx, raw, nonce)
}

// A TLS session resumed from a ticket skips the certificate and so the attestation: a node that attested
// once could come back for days, also after its measurements were revoked. Every handshake must attest.
// (A client that validates the server cannot be tricked into resuming: it keeps no sessions and its server
// name, the session cache's key, is a fresh nonce every time.)
func TestNoSessionResumption(t *testing.T) {
	validations := 0
	validators := []attestation.Validator{countingValidator{testValidator{v: variant.QEMUVTPM}, &validations}}
	serverCfg, err := NewServerConfig(nil, validators)
	require.NoError(t, err)
	// The attacker's client keeps sessions and sends its first server name (the cache's key) again.
	cache := tls.NewLRUClientSessionCache(4)
	serverName := ""
	for i := range 3 {
		clientCfg, err := NewClientConfig(qemuIssuer, nil)
		require.NoError(t, err)
		clientCfg.ClientSessionCache = cache
		if serverName == "" {
			serverName = clientCfg.ServerName
		}
		clientCfg.ServerName = serverName
		resumed := exchange(t, serverCfg, clientCfg)
		assert.False(t, resumed, "handshake %d resumed a session", i+1)
		assert.Equal(t, i+1, validations, "handshake %d was not attested", i+1)
	}
}

// exchange connects, has the server send a byte that the client reads (which makes a TLS 1.3 client take
// the session tickets the server sent after the handshake) and tells whether the client resumed a session.
func exchange(t *testing.T, serverCfg, clientCfg *tls.Config) bool {
	t.Helper()
	resumed := false
	clientErr, serverErr := connect(t, serverCfg, clientCfg, func(srv *tls.Conn) error {
		if _, err := srv.Write([]byte{1}); err != nil {
			return err
		}
		_, err := io.ReadAll(srv)
		return err
	}, func(cli *tls.Conn) error {
		_, err := io.ReadFull(cli, make([]byte, 1))
		resumed = cli.ConnectionState().DidResume
		return err
	})
	require.NoError(t, clientErr)
	require.NoError(t, serverErr)
	return resumed
}
