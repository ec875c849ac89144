// Package kubeadm gives a joining node what `kubeadm join` needs: a bootstrap token in the cluster, the
// discovery hash of the cluster CA, and a kubelet client certificate signed by that CA.
package kubeadm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
)

// TokenTTL is how long a join token is valid: long enough for one join, short enough to be useless later.
const TokenTTL = 15 * time.Minute

// NodeBootstrapGroup is the group kubeadm's default RBAC lets join nodes and post CSRs.
const NodeBootstrapGroup = "system:bootstrappers:kubeadm:default-node-token"

// TokenIssuer creates kubeadm bootstrap tokens in the Kubernetes API.
type TokenIssuer struct {
	client kubernetes.Interface
	now    func() time.Time
}

// NewTokenIssuer returns a TokenIssuer using client.
func NewTokenIssuer(client kubernetes.Interface) *TokenIssuer {
	return &TokenIssuer{client: client, now: time.Now}
}

// CreateToken creates a bootstrap token valid for ttl and returns it as "<id>.<secret>". The token's
// secret has the format kubeadm and the API server's token authenticator read.
func (t *TokenIssuer) CreateToken(ctx context.Context, ttl time.Duration, description string) (string, error) {
	token, err := bootstraputil.GenerateBootstrapToken()
	if err != nil {
		return "", fmt.Errorf("generating bootstrap token: %w", err)
	}
	id, secret, _ := strings.Cut(token, ".")
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      bootstraputil.BootstrapTokenSecretName(id),
			Namespace: metav1.NamespaceSystem,
		},
		Type: corev1.SecretType(bootstrapapi.SecretTypeBootstrapToken),
		StringData: map[string]string{
			bootstrapapi.BootstrapTokenIDKey:               id,
			bootstrapapi.BootstrapTokenSecretKey:           secret,
			bootstrapapi.BootstrapTokenDescriptionKey:      description,
			bootstrapapi.BootstrapTokenExpirationKey:       t.now().Add(ttl).UTC().Format(time.RFC3339),
			bootstrapapi.BootstrapTokenUsageAuthentication: "true",
			bootstrapapi.BootstrapTokenUsageSigningKey:     "true",
			bootstrapapi.BootstrapTokenExtraGroupsKey:      NodeBootstrapGroup,
		},
	}
	if _, err := t.client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating bootstrap token secret: %w", err)
	}
	return token, nil
}

// DiscoveryHash is kubeadm's --discovery-token-ca-cert-hash of a CA: "sha256:" and the hex SHA-256 of its
// DER SubjectPublicKeyInfo.
func DiscoveryHash(ca *x509.Certificate) string {
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// kubeletCertLifetime matches kubeadm's default for kubelet client certificates.
const kubeletCertLifetime = 365 * 24 * time.Hour

// Errors of CSR checks.
var (
	ErrBadCSR = errors.New("kubelet certificate request refused")
)

// CSRSigner signs kubelet client certificates with the cluster CA.
type CSRSigner struct {
	ca  *x509.Certificate
	key crypto.Signer
	now func() time.Time
}

// NewCSRSigner returns a signer for ca.
func NewCSRSigner(ca *x509.Certificate, key crypto.Signer) *CSRSigner {
	return &CSRSigner{ca: ca, key: key, now: time.Now}
}

// SignKubeletCSR checks a DER CSR and signs it. The request must be self-signed and name exactly the node:
// CN "system:node:<nodeName>" and O "system:nodes", so that the NodeRestriction admission plugin confines the
// kubelet to its own node; it may not ask for anything else.
func (s *CSRSigner) SignKubeletCSR(der []byte, nodeName string) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrBadCSR, err)
	}
	wantCN := "system:node:" + nodeName
	if nodeName == "" || csr.Subject.CommonName != wantCN {
		return nil, fmt.Errorf("%w: common name %q, expected %q", ErrBadCSR, csr.Subject.CommonName, wantCN)
	}
	if len(csr.Subject.Organization) != 1 || csr.Subject.Organization[0] != "system:nodes" {
		return nil, fmt.Errorf("%w: organization %v, expected [system:nodes]", ErrBadCSR, csr.Subject.Organization)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses)+len(csr.URIs) > 0 {
		return nil, fmt.Errorf("%w: a client certificate carries no alternative names", ErrBadCSR)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := s.now()
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: wantCN, Organization: []string{"system:nodes"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(kubeletCertLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cert, err := x509.CreateCertificate(rand.Reader, template, s.ca, csr.PublicKey, s.key)
	if err != nil {
		return nil, fmt.Errorf("signing kubelet certificate: %w", err)
	}
	return cert, nil
}
