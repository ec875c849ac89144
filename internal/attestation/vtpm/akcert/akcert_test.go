package akcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testChain returns a CA pool, a certificate for an AK signed by the CA, and the AK.
func testChain(t testing.TB) (*x509.CertPool, []byte, *ecdsa.PrivateKey) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ak"}, KeyUsage: x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{EKU}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &ak.PublicKey, caKey)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, der, ak
}

func TestVerify(t *testing.T) {
	pool, der, ak := testChain(t)
	require.NoError(t, Verify(der, &ak.PublicKey, pool))
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	require.ErrorIs(t, Verify(der, &other.PublicKey, pool), ErrCertificate)
	otherPool, _, _ := testChain(t)
	require.ErrorIs(t, Verify(der, &ak.PublicKey, otherPool), ErrCertificate)
	require.ErrorIs(t, Verify(nil, &ak.PublicKey, pool), ErrCertificate)
	certs, err := ParseCertificates(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	require.NoError(t, err)
	require.Len(t, certs, 1)
}

func TestVTPMName(t *testing.T) {
	_, der, _ := testChain(t) // common name "ak": names no vTPM
	_, err := VTPMName(der)
	require.ErrorIs(t, err, ErrNoName)
	_, err = VTPMName([]byte{1, 2, 3})
	require.ErrorIs(t, err, ErrCertificate)
}

// FuzzVerify: arbitrary certificate bytes never panic and only the genuine certificate passes.
func FuzzVerify(f *testing.F) {
	pool, der, ak := testChain(f)
	f.Add(der)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		if err := Verify(in, &ak.PublicKey, pool); err == nil && string(in) != string(der) {
			cert, perr := x509.ParseCertificate(in)
			require.NoError(t, perr)
			require.True(t, cert.PublicKey.(*ecdsa.PublicKey).Equal(&ak.PublicKey), "a certificate for another key passed")
		}
		_, _ = ParseCertificates(in)
	})
}

// BenchmarkVerify is the trust-root check's share of a validation: one certificate chain (ECDSA P-256).
func BenchmarkVerify(b *testing.B) {
	pool, der, ak := testChain(b)
	for b.Loop() {
		if err := Verify(der, &ak.PublicKey, pool); err != nil {
			b.Fatal(err)
		}
	}
}
