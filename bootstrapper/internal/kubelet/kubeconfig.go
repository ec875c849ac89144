package kubelet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// NewClientKey returns a fresh kubelet client key and a CSR for it that the JoinService's signer accepts:
// CN "system:node:<nodeName>", O "system:nodes", nothing else.
func NewClientKey(nodeName string) (key *ecdsa.PrivateKey, csrDER []byte, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csrDER, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating kubelet CSR: %w", err)
	}
	return key, csrDER, nil
}

// WriteKubeconfig installs the kubelet's client credentials for a joining node: the certificate the
// JoinService signed (DER) with its key in ClientCertFile, and KubeconfigFile pointing at it, at the API
// server and at the cluster CA that kubeadm's discovery writes to CACertFile. With a valid kubeconfig in
// place the kubelet does not TLS-bootstrap with the join token.
func (p Paths) WriteKubeconfig(server string, certDER []byte, key *ecdsa.PrivateKey) error {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("kubelet certificate from the join ticket: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return fmt.Errorf("kubelet certificate from the join ticket is not for this node's key")
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	pemData := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	if err := writeFile(p.Path(ClientCertFile), pemData, 0o600); err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["default-cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: CACertFile}
	cfg.AuthInfos["default-auth"] = &clientcmdapi.AuthInfo{ClientCertificate: ClientCertFile, ClientKey: ClientCertFile}
	cfg.Contexts["default-context"] = &clientcmdapi.Context{Cluster: "default-cluster", AuthInfo: "default-auth", Namespace: "default"}
	cfg.CurrentContext = "default-context"
	raw, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return writeFile(p.Path(KubeconfigFile), raw, 0o600)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}
