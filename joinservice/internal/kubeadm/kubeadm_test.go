package kubeadm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"net"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestCreateToken(t *testing.T) {
	client := fake.NewClientset()
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	ti := &TokenIssuer{client: client, now: func() time.Time { return now }}
	token, err := ti.CreateToken(context.Background(), TokenTTL, "join node-1")
	require.NoError(t, err)
	require.Regexp(t, regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`), token)

	s, err := client.CoreV1().Secrets(metav1.NamespaceSystem).Get(context.Background(), "bootstrap-token-"+token[:6], metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "bootstrap.kubernetes.io/token", string(s.Type))
	assert.Equal(t, token[:6], s.StringData["token-id"])
	assert.Equal(t, token[7:], s.StringData["token-secret"])
	assert.Equal(t, "2026-11-21T12:15:00Z", s.StringData["expiration"])
	assert.Equal(t, "true", s.StringData["usage-bootstrap-authentication"])
	assert.Equal(t, NodeBootstrapGroup, s.StringData["auth-extra-groups"])

	other, err := ti.CreateToken(context.Background(), TokenTTL, "join node-2")
	require.NoError(t, err)
	assert.NotEqual(t, token, other, "every join gets its own token")
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return ca, key
}

func TestDiscoveryHash(t *testing.T) {
	ca, _ := newCA(t)
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	assert.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), DiscoveryHash(ca))
}

func csr(t *testing.T, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	require.NoError(t, err)
	return der
}

func TestSignKubeletCSR(t *testing.T) {
	ca, key := newCA(t)
	signer := NewCSRSigner(ca, key)
	good := func() *x509.CertificateRequest {
		return &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:worker-1", Organization: []string{"system:nodes"}}}
	}
	testCases := map[string]struct {
		der     func(t *testing.T) []byte
		node    string
		wantErr string
	}{
		"valid": {der: func(t *testing.T) []byte { return csr(t, good()) }, node: "worker-1"},
		"other node's name": {
			der: func(t *testing.T) []byte { return csr(t, good()) }, node: "worker-2", wantErr: `common name "system:node:worker-1", expected "system:node:worker-2"`,
		},
		"admin group": {
			der: func(t *testing.T) []byte {
				r := good()
				r.Subject.Organization = []string{"system:masters"}
				return csr(t, r)
			},
			node: "worker-1", wantErr: "organization [system:masters]",
		},
		"extra group": {
			der: func(t *testing.T) []byte {
				r := good()
				r.Subject.Organization = append(r.Subject.Organization, "system:masters")
				return csr(t, r)
			},
			node: "worker-1", wantErr: "expected [system:nodes]",
		},
		"alternative names": {
			der: func(t *testing.T) []byte {
				r := good()
				r.IPAddresses = []net.IP{net.ParseIP("10.0.0.1")}
				return csr(t, r)
			},
			node: "worker-1", wantErr: "no alternative names",
		},
		"tampered signature": {
			der: func(t *testing.T) []byte {
				der := csr(t, good())
				der[len(der)-2] ^= 1
				return der
			},
			node: "worker-1", wantErr: "signature",
		},
		"garbage":    {der: func(*testing.T) []byte { return []byte{1, 2, 3} }, node: "worker-1", wantErr: "refused"},
		"empty node": {der: func(t *testing.T) []byte { return csr(t, good()) }, node: "", wantErr: "common name"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			der, err := signer.SignKubeletCSR(tc.der(t), tc.node)
			if tc.wantErr != "" {
				require.ErrorIs(t, err, ErrBadCSR)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			cert, err := x509.ParseCertificate(der)
			require.NoError(t, err)
			require.NoError(t, cert.CheckSignatureFrom(ca))
			assert.Equal(t, "system:node:worker-1", cert.Subject.CommonName)
			assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, cert.ExtKeyUsage)
			assert.False(t, cert.IsCA)
		})
	}
}
