// Package akcert defines the attestation key (AK) every vTPM issuer creates and its certificate, for
// variants where nothing else vouches for the AK (qemu-vtpm): the platform that made the vTPM (its
// manufacturer: the local provider, tests; see package manufacturer) creates the AK from Template, certifies
// it with its CA and stores the certificate in the vTPM's NV memory at NVIndex, as GCE does for its vTPMs.
// The issuer attaches the certificate to every document; the validator checks it with Verify against the CA
// the admin's configuration names.
package akcert

import (
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

const (
	// NVIndex holds the AK certificate (DER), in the range of NV indices the TCG leaves to the platform
	// manufacturer.
	NVIndex tpm2.TPMHandle = 0x01500001
	// MaxSize bounds the certificate (the NV index's size).
	MaxSize = 1536
	// CANVIndex holds the certificate of the platform CA that certified the vTPM (DER): a node's own trust
	// root when it checks another node's attestation (the JoinService's, before it joins).
	CANVIndex tpm2.TPMHandle = 0x01500002
)

// EKU is the extended key usage an AK certificate must carry, so that no other certificate of the
// platform's CA (an EK certificate, say) can stand in for one.
var EKU = asn1.ObjectIdentifier{1, 3, 9901, 2, 1}

// Template returns the template every attestation key is created from (a copy).
func Template() tpm2.TPMTPublic { return template }

// template is a restricted ECDSA P-256 signing key: the TPM signs only structures it generated itself
// (quotes) with it, never caller-chosen data that could imitate a quote. Created in the endorsement
// hierarchy from this fixed template, it is the same key every time on the same TPM.
var template = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// ErrNoNVIndex is returned by ReadNV for an index that is not defined.
var ErrNoNVIndex = errors.New("NV index not defined")

// ReadNV reads a whole NV index with owner authorization (the empty owner password of a VM's vTPM).
func ReadNV(t transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, ErrNoNVIndex
		}
		return nil, fmt.Errorf("reading NV index %#x: %w", uint32(index), err)
	}
	nvPub, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	// The TPM bounds one read (TPM_PT_NV_BUFFER_MAX, at least 512 bytes); read in chunks of that.
	const chunk = 512
	data := make([]byte, 0, nvPub.DataSize)
	for off := uint16(0); off < nvPub.DataSize; {
		n := min(chunk, nvPub.DataSize-off)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: pub.NVName},
			Size:       n,
			Offset:     off,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("reading NV index %#x: %w", uint32(index), err)
		}
		data = append(data, rsp.Data.Buffer...)
		off += n
	}
	return data, nil
}

// ErrCertificate marks an AK certificate that is missing, malformed, not issued by a trusted CA or not
// for this AK.
var ErrCertificate = errors.New("attestation key certificate rejected")

// Verify checks that der is a certificate for ak with the AK certificate EKU, issued (directly
// or through intermediates it cannot carry: directly) by one of roots, and valid at the verifier's time.
func Verify(der []byte, ak crypto.PublicKey, roots *x509.CertPool) error {
	if len(der) == 0 {
		return fmt.Errorf("%w: the document carries none (the vTPM was not certified by its platform)", ErrCertificate)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCertificate, err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %w", ErrCertificate, err)
	}
	if !hasEKU(cert, EKU) {
		return fmt.Errorf("%w: the certificate is not an attestation key certificate (no EKU %s)", ErrCertificate, EKU)
	}
	certKey, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !certKey.Equal(ak) {
		return fmt.Errorf("%w: the certificate is for another key than the document's attestation key", ErrCertificate)
	}
	return nil
}

func hasEKU(cert *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, u := range cert.UnknownExtKeyUsage {
		if u.Equal(oid) {
			return true
		}
	}
	return false
}

// subjectSuffix follows the vTPM's name in the common name of its AK certificate.
const subjectSuffix = " attestation key"

// SubjectName is the common name of the AK certificate of the vTPM named vtpmName (the node's name).
func SubjectName(vtpmName string) string { return vtpmName + subjectSuffix }

// ErrNoName marks an AK certificate whose subject names no vTPM.
var ErrNoName = errors.New("the attestation key certificate names no vTPM")

// VTPMName returns the name of the vTPM an AK certificate (DER) was issued for: the node name the platform
// gave it. Call it only on a certificate Verify accepted.
func VTPMName(der []byte) (string, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCertificate, err)
	}
	name, ok := strings.CutSuffix(cert.Subject.CommonName, subjectSuffix)
	if !ok || name == "" {
		return "", fmt.Errorf("%w: common name %q", ErrNoName, cert.Subject.CommonName)
	}
	return name, nil
}

// ParseCertificates decodes one or more PEM certificates and nothing else: the form of the platform CA in
// the configuration (attestation.platformCA).
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q is not a certificate", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	for _, b := range data {
		if b != ' ' && b != '\t' && b != '\n' && b != '\r' {
			return nil, errors.New("data after the last PEM certificate")
		}
	}
	return certs, nil
}

// ReadPlatformCA returns the certificate of the CA that certified this vTPM, from CANVIndex.
func ReadPlatformCA(t transport.TPM) (*x509.Certificate, error) {
	der, err := ReadNV(t, CANVIndex)
	if err != nil {
		return nil, fmt.Errorf("reading the platform CA's certificate from the vTPM: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("the vTPM's platform CA certificate: %w", err)
	}
	return cert, nil
}
