// Package manufacturer plays the vTPM's manufacturer for the platforms that make virtual TPMs (the local
// provider for its nodes, tests): like the maker of a hardware TPM or a cloud's vTPM service, it certifies
// each new vTPM. Its CA issues the vTPM an endorsement key (EK) certificate, stored at the TCG's NV index for
// ECC EK certificates, and a certificate for the attestation key (AK) every issuer creates from
// akcert.Template, stored at akcert.NVIndex. qemu-vtpm validators trust exactly the AKs certified by the
// CA the admin's configuration names (attestation.platformCA), so a software key can no longer pass as a
// TPM.
//
// The platform creates the AK itself, in the vTPM it has just powered on and before any software of the node
// runs; the AK is a primary key of the endorsement hierarchy, so the node's issuer re-creates the very same
// key. Credential activation against the EK, which a remote CA needs to learn that a key lives in the TPM
// it certifies, proves nothing more here. The NV indices are the platform's (TPMA_NV_PLATFORMCREATE), can
// only be written with platform authorization and are write-locked for good once written.
//
// What this protects against, and what not: see docs in the README ("Trust model of local clusters").
package manufacturer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
)

const (
	// ECCEKCertNVIndex is the TCG's NV index of the ECC P-256 EK certificate (TCG EK Credential Profile).
	ECCEKCertNVIndex tpm2.TPMHandle = 0x01c0000a
	// File names of a CA kept in a directory (LoadOrCreateCA).
	caKeyFile  = "platform-ca.key"
	caCertFile = "platform-ca.crt"
	// caLifetime and certLifetime: a vTPM lives as long as its node's state.
	caLifetime   = 20 * 365 * 24 * time.Hour
	certLifetime = 20 * 365 * 24 * time.Hour
	// nvChunk bounds one NV write (TPM_PT_NV_BUFFER_MAX is at least 512 bytes).
	nvChunk = 512
)

// ekCertEKU is tcg-kp-EKCertificate (TCG EK Credential Profile).
var ekCertEKU = asn1.ObjectIdentifier{2, 23, 133, 8, 1}

// Errors of Manufacture.
var (
	// ErrOtherManufacturer: the vTPM holds an AK certificate that this CA did not issue for its AK.
	ErrOtherManufacturer = errors.New("the vTPM was certified by another platform CA")
)

// CA is a platform's certificate authority for its vTPMs.
type CA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	now  func() time.Time
}

// NewCA creates a CA with a fresh ECDSA P-256 key and a self-signed certificate named name.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the platform CA's key: %w", err)
	}
	return NewCAWithKey(name, key)
}

// NewCAWithKey creates a CA with the given key and a self-signed certificate named name. Two CAs of the
// same key and name accept each other's certificates (tests that span processes rely on that).
func NewCAWithKey(name string, key *ecdsa.PrivateKey) (*CA, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	ski := sha256.Sum256(spki)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating the platform CA's certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{key: key, cert: cert, now: time.Now}, nil
}

// Files returns the paths of the key and the certificate of a CA kept in dir.
func Files(dir string) (key, cert string) {
	return filepath.Join(dir, caKeyFile), filepath.Join(dir, caCertFile)
}

// LoadOrCreateCA loads the CA kept in dir, or creates one there (the key with mode 0600). A half-written
// CA (a key without its certificate, or one that does not match) is an error, never silently replaced:
// replacing it would orphan every vTPM the old one certified.
func LoadOrCreateCA(dir, name string) (*CA, error) {
	keyPath, certPath := Files(dir)
	_, keyErr := os.Stat(keyPath)
	_, certErr := os.Stat(certPath)
	if errors.Is(keyErr, os.ErrNotExist) && errors.Is(certErr, os.ErrNotExist) {
		ca, err := NewCA(name)
		if err != nil {
			return nil, err
		}
		if err := ca.save(dir); err != nil {
			return nil, err
		}
		return ca, nil
	}
	return LoadCA(dir)
}

// LoadCA loads the CA kept in dir.
func LoadCA(dir string) (*CA, error) {
	keyPath, certPath := Files(dir)
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading the platform CA: %w", err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("reading the platform CA: %w", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: not a PEM private key", keyPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", keyPath)
	}
	certs, err := akcert.ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if len(certs) != 1 || !certs[0].IsCA || !key.PublicKey.Equal(certs[0].PublicKey) {
		return nil, fmt.Errorf("%s does not hold the certificate of the key in %s", certPath, keyPath)
	}
	return &CA{key: key, cert: certs[0], now: time.Now}, nil
}

func (ca *CA) save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return err
	}
	// The certificate is written last: a crash in between leaves a key without a certificate, which
	// LoadOrCreateCA reports instead of replacing.
	if err := writeAtomic(filepath.Join(dir, caKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, caCertFile), ca.CertificatePEM(), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Certificate returns the CA's certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertificatePEM returns the CA's certificate in PEM: what the configuration's attestation.platformCA holds.
func (ca *CA) CertificatePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// Manufacture certifies the vTPM t, named name in its certificates: an EK certificate and an AK
// certificate in NV memory, and the CA's own certificate (the node's trust root for its peers), all
// write-locked. It is idempotent: a vTPM that this CA already certified is
// left alone (a node that restarts keeps its vTPM state); one certified by another CA is refused.
func (ca *CA) Manufacture(t transport.TPM, name string) error {
	akTmpl := akcert.Template()
	akPub, err := primaryPublic(t, akTmpl)
	if err != nil {
		return fmt.Errorf("creating the attestation key: %w", err)
	}
	existing, err := akcert.ReadNV(t, akcert.NVIndex)
	switch {
	case err == nil:
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		if verr := akcert.Verify(existing, akPub, pool); verr != nil {
			return fmt.Errorf("%w: %w", ErrOtherManufacturer, verr)
		}
		if _, cerr := akcert.ReadPlatformCA(t); cerr != nil {
			return fmt.Errorf("the vTPM was certified only in part (its NV lacks the CA's certificate): replace the node: %w", cerr)
		}
		return nil
	case !errors.Is(err, akcert.ErrNoNVIndex):
		return err
	}

	ekPub, err := primaryPublic(t, tpm2.ECCEKTemplate)
	if err != nil {
		return fmt.Errorf("creating the endorsement key: %w", err)
	}
	ekCert, err := ca.issue(ekPub, name+" endorsement key", x509.KeyUsageKeyAgreement, ekCertEKU)
	if err != nil {
		return err
	}
	if err := writeLockedNV(t, ECCEKCertNVIndex, ekCert); err != nil {
		return fmt.Errorf("storing the EK certificate: %w", err)
	}
	akCert, err := ca.IssueAKCertificate(akPub, name)
	if err != nil {
		return err
	}
	if len(akCert) > akcert.MaxSize {
		return fmt.Errorf("the AK certificate has %d bytes, at most %d fit", len(akCert), akcert.MaxSize)
	}
	if err := writeLockedNV(t, akcert.NVIndex, akCert); err != nil {
		return fmt.Errorf("storing the AK certificate: %w", err)
	}
	// Last: a vTPM with the CA's certificate is a completely manufactured one.
	if err := writeLockedNV(t, akcert.CANVIndex, ca.cert.Raw); err != nil {
		return fmt.Errorf("storing the platform CA's certificate: %w", err)
	}
	return nil
}

// IssueAKCertificate returns an AK certificate (DER) for pub, naming the vTPM name. Manufacture calls it for
// the AK it created in the vTPM; nothing else should.
func (ca *CA) IssueAKCertificate(pub crypto.PublicKey, name string) ([]byte, error) {
	return ca.issue(pub, akcert.SubjectName(name), x509.KeyUsageDigitalSignature, akcert.EKU)
}

// issue signs a certificate for pub.
func (ca *CA) issue(pub crypto.PublicKey, commonName string, usage x509.KeyUsage, eku asn1.ObjectIdentifier) ([]byte, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              usage,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{eku},
		BasicConstraintsValid: true,
		AuthorityKeyId:        ca.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuing %q: %w", commonName, err)
	}
	return der, nil
}

// primaryPublic creates the primary key of tmpl in the endorsement hierarchy and returns its public key.
func primaryPublic(t transport.TPM, tmpl tpm2.TPMTPublic) (crypto.PublicKey, error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}.Execute(t)
	if err != nil {
		return nil, err
	}
	defer func() { _, _ = tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(t) }()
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, err
	}
	return tpm2.Pub(*pub)
}

// writeLockedNV defines index under the platform hierarchy, writes data and locks it for good.
func writeLockedNV(t transport.TPM, index tpm2.TPMHandle, data []byte) error {
	platform := tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)}
	pub := tpm2.TPMSNVPublic{
		NVIndex: index,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			PPWrite:        true,
			WriteDefine:    true, // NV_WriteLock locks it until the index is deleted
			PPRead:         true,
			OwnerRead:      true,
			AuthRead:       true,
			NoDA:           true,
			PlatformCreate: true,
			NT:             tpm2.TPMNTOrdinary,
		},
		DataSize: uint16(len(data)),
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: platform, PublicInfo: tpm2.New2B(pub)}).Execute(t); err != nil {
		return err
	}
	for off := 0; off < len(data); off += nvChunk {
		end := min(off+nvChunk, len(data))
		name, err := nvName(t, index)
		if err != nil {
			return err
		}
		if _, err := (tpm2.NVWrite{
			AuthHandle: platform,
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: name},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}).Execute(t); err != nil {
			return err
		}
	}
	name, err := nvName(t, index)
	if err != nil {
		return err
	}
	_, err = tpm2.NVWriteLock{AuthHandle: platform, NVIndex: tpm2.NamedHandle{Handle: index, Name: name}}.Execute(t)
	return err
}

// nvName returns an index's current name (it changes once the index is written).
func nvName(t transport.TPM, index tpm2.TPMHandle) (tpm2.TPM2BName, error) {
	rsp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(t)
	if err != nil {
		return tpm2.TPM2BName{}, err
	}
	return rsp.NVName, nil
}

func serialNumber() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating a serial number: %w", err)
	}
	return serial, nil
}
