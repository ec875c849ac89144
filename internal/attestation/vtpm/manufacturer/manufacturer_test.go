package manufacturer

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm/swtpmtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTPM(t *testing.T) transport.TPMCloser {
	t.Helper()
	p := swtpmtest.Start(t)
	tp, err := tpm.Open(p.Address())
	require.NoError(t, err)
	t.Cleanup(func() { _ = tp.Close() })
	return tp
}

func akPublic(t *testing.T, tp transport.TPM) any {
	t.Helper()
	pub, err := primaryPublic(tp, akcert.Template())
	require.NoError(t, err)
	return pub
}

func TestManufacture(t *testing.T) {
	ca, err := NewCA("test platform CA")
	require.NoError(t, err)
	tp := newTPM(t)
	require.NoError(t, ca.Manufacture(tp, "cp-0"))

	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	der, err := akcert.ReadNV(tp, akcert.NVIndex)
	require.NoError(t, err)
	require.NoError(t, akcert.Verify(der, akPublic(t, tp), roots), "the AK the issuer re-creates is the certified one")
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	assert.Equal(t, "cp-0 attestation key", cert.Subject.CommonName)

	ek, err := akcert.ReadNV(tp, ECCEKCertNVIndex)
	require.NoError(t, err)
	ekCert, err := x509.ParseCertificate(ek)
	require.NoError(t, err)
	_, err = ekCert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	require.NoError(t, err, "the EK certificate chains to the CA")
	assert.Error(t, akcert.Verify(ek, akPublic(t, tp), roots), "an EK certificate is no AK certificate")

	caCert, err := akcert.ReadPlatformCA(tp)
	require.NoError(t, err)
	assert.Equal(t, ca.Certificate().Raw, caCert.Raw, "the node can read its platform's CA")

	// A restarted node keeps its vTPM state: manufacturing again changes nothing.
	require.NoError(t, ca.Manufacture(tp, "cp-0"))
	again, err := akcert.ReadNV(tp, akcert.NVIndex)
	require.NoError(t, err)
	assert.Equal(t, der, again)

	// Another platform CA cannot take the vTPM over.
	other, err := NewCA("other platform CA")
	require.NoError(t, err)
	assert.ErrorIs(t, other.Manufacture(tp, "cp-0"), ErrOtherManufacturer)
}

// The node's own software (root on the node) cannot replace the certificate: the index is the platform's
// and write-locked for good.
func TestCertificateIsWriteLocked(t *testing.T) {
	ca, err := NewCA("test platform CA")
	require.NoError(t, err)
	tp := newTPM(t)
	require.NoError(t, ca.Manufacture(tp, "worker-0"))
	name, err := nvName(tp, akcert.NVIndex)
	require.NoError(t, err)
	for _, auth := range []tpm2.TPMHandle{tpm2.TPMRHPlatform, tpm2.TPMRHOwner} {
		_, err = tpm2.NVWrite{
			AuthHandle: tpm2.AuthHandle{Handle: auth, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: akcert.NVIndex, Name: name},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: []byte("forged")},
		}.Execute(tp)
		assert.Error(t, err, "write with handle %#x", uint32(auth))
	}
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir, "cluster platform CA")
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(dir, caKeyFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the CA key is a secret")

	again, err := LoadOrCreateCA(dir, "cluster platform CA")
	require.NoError(t, err)
	assert.Equal(t, ca.CertificatePEM(), again.CertificatePEM(), "the same CA, not a new one")
	certs, err := akcert.ParseCertificates(again.CertificatePEM())
	require.NoError(t, err)
	assert.True(t, certs[0].IsCA)

	// A key without its certificate, or another certificate, is reported, never replaced.
	require.NoError(t, os.Remove(filepath.Join(dir, caCertFile)))
	_, err = LoadOrCreateCA(dir, "cluster platform CA")
	assert.ErrorContains(t, err, caCertFile)
	other, err := NewCA("other")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, caCertFile), other.CertificatePEM(), 0o644))
	_, err = LoadOrCreateCA(dir, "cluster platform CA")
	assert.ErrorContains(t, err, "does not hold the certificate of the key")
}

func TestParseCertificates(t *testing.T) {
	ca, err := NewCA("a")
	require.NoError(t, err)
	testCases := map[string]struct {
		in      string
		wantErr string
	}{
		"one":           {in: string(ca.CertificatePEM())},
		"two":           {in: string(ca.CertificatePEM()) + string(ca.CertificatePEM())},
		"empty":         {in: "", wantErr: "no PEM certificate"},
		"private key":   {in: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", wantErr: "not a certificate"},
		"trailing junk": {in: string(ca.CertificatePEM()) + "junk", wantErr: "after the last"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := akcert.ParseCertificates([]byte(tc.in))
			if tc.wantErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.wantErr)
			}
		})
	}
}
