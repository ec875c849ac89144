package snp

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Real data from google/go-sev-guest v0.15.0 verify/testdata; see testdata/README.md.
var (
	//go:embed testdata/attestation.bin
	realReport []byte
	//go:embed testdata/vcek.testcer
	realVCEK []byte
	//go:embed testdata/milan.testcer
	milanChainPEM []byte
	//go:embed testdata/milanvlek.testcer
	milanVLEKChainPEM []byte
)

// validAt lies in the validity of the real VCEK (2022-09-24 00:55:28 UTC to 2029-09-24 00:55:28 UTC) and of
// the Milan ASK/ARK; it is the instant go-sev-guest's own TestVerifyVcekCert uses.
var validAt = time.Date(2022, time.September, 24, 1, 0, 0, 0, time.UTC)

// Byte offsets in the ATTESTATION_REPORT (AMD SEV-SNP ABI specification, table "ATTESTATION_REPORT").
const (
	offVersion     = 0x000
	offSignerInfo  = 0x048
	offReserved    = 0x04C // must be zero
	offReportData  = 0x050
	offMeasurement = 0x090
	offReportedTCB = 0x180 // first byte: bootloader SVN
	offSignature   = 0x2A0
)

// realFacts are what the real report says, read from it rather than written down, so that the tests ask
// for exactly one more than what the hardware reported.
type realFacts struct {
	report      *sevsnp.Report
	reportData  [64]byte
	tcb         TCB
	measurement []byte
}

var loadFacts = sync.OnceValues(func() (realFacts, error) {
	report, err := abi.ReportToProto(realReport)
	if err != nil {
		return realFacts{}, err
	}
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(report.GetReportedTcb()))
	f := realFacts{
		report:      report,
		tcb:         TCB{Bootloader: parts.BlSpl, TEE: parts.TeeSpl, SNP: parts.SnpSpl, Microcode: parts.UcodeSpl},
		measurement: report.GetMeasurement(),
	}
	copy(f.reportData[:], report.GetReportData())
	return f, nil
})

func facts(tb testing.TB) realFacts {
	tb.Helper()
	f, err := loadFacts()
	require.NoError(tb, err)
	return f
}

// realPolicy accepts the real report and nothing less: its own TCB as the minimum, its product line, and a
// time at which its certificates are valid. The real report's guest policy allows debugging, so a policy
// that accepts it must say so.
func realPolicy(tb testing.TB) Policy {
	return Policy{
		LaunchMeasurements: [][]byte{facts(tb).measurement},
		MinimumTCB:         facts(tb).tcb,
		AllowDebug:         true,
		Product:            "Milan",
		Now:                validAt,
	}
}

func realAttestation() Attestation {
	return Attestation{Report: bytes.Clone(realReport), VCEK: bytes.Clone(realVCEK)}
}

// derCerts splits a KDS cert_chain PEM bundle into DER certificates (AS[V]K, ARK).
func derCerts(tb testing.TB, bundle []byte) [][]byte {
	tb.Helper()
	var out [][]byte
	for {
		var block *pem.Block
		block, bundle = pem.Decode(bundle)
		if block == nil {
			break
		}
		out = append(out, block.Bytes)
	}
	require.Len(tb, out, 2)
	return out
}

func flip(offset int) func(*Attestation) {
	return func(a *Attestation) { a.Report[offset] ^= 0x01 }
}

var allSentinels = []error{
	ErrMalformedReport, ErrSignature, ErrMissingCertificate, ErrDebugEnabled, ErrTCBTooLow,
	ErrReportDataMismatch, ErrInvalidPolicy, ErrLaunchMeasurement, ErrVMPL, ErrMigrationAgent,
}

// requireOnly asserts that err is want and none of the other sentinels, so each failure is classified
// exactly once.
func requireOnly(t *testing.T, err, want error) {
	t.Helper()
	require.ErrorIs(t, err, want)
	for _, other := range allSentinels {
		if other != want {
			assert.NotErrorIs(t, err, other)
		}
	}
}

// recordingGetter stands in for kdsGetter to prove that validation never asks for anything.
type recordingGetter struct {
	mu   sync.Mutex
	urls []string
}

func (g *recordingGetter) Get(url string) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.urls = append(g.urls, url)
	return nil, errors.New("network access in a test")
}

func TestValidate(t *testing.T) {
	f := facts(t)
	getter := &recordingGetter{}
	saved := kdsGetter
	kdsGetter = getter
	t.Cleanup(func() { kdsGetter = saved })

	askDER, arkDER := derCerts(t, milanChainPEM)[0], derCerts(t, milanChainPEM)[1]
	asvkDER := derCerts(t, milanVLEKChainPEM)[0]
	vcekNotBefore := time.Date(2022, time.September, 24, 0, 55, 28, 0, time.UTC)
	vcekNotAfter := time.Date(2029, time.September, 24, 0, 55, 28, 0, time.UTC)

	testCases := map[string]struct {
		att        func(*Attestation)
		policy     func(*Policy)
		reportData func(*[64]byte)
		wantErr    error
		wantMsg    string
	}{
		"real report at exactly its own TCB": {},
		"real report, no TCB minimum: Milan's default is newer than its firmware": {
			policy:  func(p *Policy) { p.MinimumTCB = TCB{} },
			wantErr: ErrTCBTooLow,
			wantMsg: "bootloader SVN is 2, policy requires at least 3",
		},
		"real report among other accepted launch measurements": {
			policy: func(p *Policy) {
				p.LaunchMeasurements = [][]byte{bytes.Repeat([]byte{1}, 48), f.measurement, bytes.Repeat([]byte{2}, 48)}
			},
		},
		"host-supplied ASK and ARK are accepted but not needed": {
			att: func(a *Attestation) { a.CertChain = [][]byte{askDER, arkDER} },
		},
		"host-supplied chain is never trusted, so garbage there changes nothing": {
			att: func(a *Attestation) { a.CertChain = [][]byte{[]byte("not a certificate")} },
		},
		"an unused VLEK slot is ignored": {
			att: func(a *Attestation) { a.VLEK = []byte("not a certificate") },
		},
		"TrustedRoots with the real Milan bundle": {
			policy: func(p *Policy) { p.TrustedRoots = [][]byte{milanChainPEM, milanVLEKChainPEM} },
		},
		"last instant of VCEK validity": {
			policy: func(p *Policy) { p.Now = vcekNotAfter },
		},
		"first instant of VCEK validity": {
			policy: func(p *Policy) { p.Now = vcekNotBefore },
		},

		"empty report": {
			att:     func(a *Attestation) { a.Report = nil },
			wantErr: ErrMalformedReport,
			wantMsg: "empty report",
		},
		"truncated report": {
			att:     func(a *Attestation) { a.Report = a.Report[:abi.ReportSize-1] },
			wantErr: ErrMalformedReport,
			wantMsg: "report is 1183 bytes, want 1184",
		},
		"trailing bytes after the report": {
			att:     func(a *Attestation) { a.Report = append(a.Report, 0) },
			wantErr: ErrMalformedReport,
			wantMsg: "report is 1185 bytes, want 1184",
		},
		"unsupported report version": {
			att:     func(a *Attestation) { a.Report[offVersion] = 1 },
			wantErr: ErrMalformedReport,
			wantMsg: "report version is: 1",
		},
		"reserved must-be-zero byte set": {
			att:     func(a *Attestation) { a.Report[offReserved] = 1 },
			wantErr: ErrMalformedReport,
			wantMsg: "mbz range",
		},

		"signature byte flipped": {
			att:     flip(offSignature),
			wantErr: ErrSignature,
			wantMsg: "report signature verification error",
		},
		"REPORT_DATA byte flipped": {
			att:     flip(offReportData),
			wantErr: ErrSignature,
			wantMsg: "report signature verification error",
		},
		"MEASUREMENT byte flipped": {
			att:     flip(offMeasurement + 47),
			wantErr: ErrSignature,
			wantMsg: "report signature verification error",
		},
		"REPORTED_TCB raised by the host": {
			att:     func(a *Attestation) { a.Report[offReportedTCB]++ },
			wantErr: ErrSignature,
			wantMsg: "report signature verification error",
		},
		"Milan ASK instead of the VCEK": {
			att:     func(a *Attestation) { a.VCEK = askDER },
			wantErr: ErrSignature,
			wantMsg: "VCEK certificate public key type is RSA",
		},
		"Milan ASVK instead of the VCEK": {
			att:     func(a *Attestation) { a.VCEK = asvkDER },
			wantErr: ErrSignature,
			wantMsg: "VCEK certificate public key type is RSA",
		},
		"Milan ARK instead of the VCEK": {
			att:     func(a *Attestation) { a.VCEK = arkDER },
			wantErr: ErrSignature,
			wantMsg: "VCEK certificate public key type is RSA",
		},
		"VCEK is not DER": {
			att:     func(a *Attestation) { a.VCEK = []byte("not a certificate") },
			wantErr: ErrSignature,
			wantMsg: "could not interpret VCEK DER bytes",
		},
		"report claims the VLEK, given the VCEK as VLEK": {
			att: func(a *Attestation) {
				a.Report[offSignerInfo] |= byte(abi.VlekReportSigner) << 2
				a.VLEK = a.VCEK
			},
			wantErr: ErrSignature,
			wantMsg: "VLEK certificate subject common name SEV-VCEK",
		},
		"report signed by no key": {
			att:     func(a *Attestation) { a.Report[offSignerInfo] |= byte(abi.NoneReportSigner) << 2 },
			wantErr: ErrSignature,
			wantMsg: "report is not signed",
		},
		"VCEK not yet valid": {
			policy:  func(p *Policy) { p.Now = vcekNotBefore.Add(-time.Second) },
			wantErr: ErrSignature,
			wantMsg: "certificate has expired or is not yet valid",
		},
		"VCEK expired": {
			policy:  func(p *Policy) { p.Now = vcekNotAfter.Add(time.Second) },
			wantErr: ErrSignature,
			wantMsg: "certificate has expired or is not yet valid",
		},
		"policy expects Genoa": {
			policy:  func(p *Policy) { p.Product = "Genoa" },
			wantErr: ErrSignature,
			wantMsg: "VCEK cert product name",
		},
		"TrustedRoots replace the embedded ones: Genoa roots for a Milan VCEK": {
			policy:  func(p *Policy) { p.TrustedRoots = [][]byte{trust.AskArkGenoaVcekBytes} },
			wantErr: ErrSignature,
			wantMsg: "could not be verified by any trusted roots",
		},
		"TrustedRoots without an ASK cannot anchor a VCEK": {
			policy:  func(p *Policy) { p.TrustedRoots = [][]byte{milanVLEKChainPEM} },
			wantErr: ErrSignature,
			wantMsg: "missing intermediate certificate authority certificate for key VCEK",
		},

		"no VCEK": {
			att:     func(a *Attestation) { a.VCEK = nil },
			wantErr: ErrMissingCertificate,
			wantMsg: "signed with the VCEK but the attestation has no VCEK certificate",
		},
		"VCEK sent in the VLEK slot": {
			att:     func(a *Attestation) { a.VLEK, a.VCEK = a.VCEK, nil },
			wantErr: ErrMissingCertificate,
			wantMsg: "no VCEK certificate",
		},
		"report claims the VLEK, none given": {
			att:     func(a *Attestation) { a.Report[offSignerInfo] |= byte(abi.VlekReportSigner) << 2 },
			wantErr: ErrMissingCertificate,
			wantMsg: "no VLEK certificate",
		},

		"debug not allowed (the real report's guest policy has DEBUG)": {
			policy:  func(p *Policy) { p.AllowDebug = false },
			wantErr: ErrDebugEnabled,
			wantMsg: "guest policy 0xb0000 has DEBUG set",
		},
		"bootloader SVN below minimum": {
			policy:  func(p *Policy) { p.MinimumTCB.Bootloader++ },
			wantErr: ErrTCBTooLow,
			wantMsg: fmt.Sprintf("bootloader SVN is %d, policy requires at least %d", f.tcb.Bootloader, f.tcb.Bootloader+1),
		},
		"TEE SVN below minimum": {
			policy:  func(p *Policy) { p.MinimumTCB.TEE++ },
			wantErr: ErrTCBTooLow,
			wantMsg: fmt.Sprintf("TEE SVN is %d, policy requires at least %d", f.tcb.TEE, f.tcb.TEE+1),
		},
		"SNP SVN below minimum": {
			policy:  func(p *Policy) { p.MinimumTCB.SNP++ },
			wantErr: ErrTCBTooLow,
			wantMsg: fmt.Sprintf("SNP SVN is %d, policy requires at least %d", f.tcb.SNP, f.tcb.SNP+1),
		},
		"microcode SVN below minimum": {
			policy:  func(p *Policy) { p.MinimumTCB.Microcode++ },
			wantErr: ErrTCBTooLow,
			wantMsg: fmt.Sprintf("microcode SVN is %d, policy requires at least %d", f.tcb.Microcode, f.tcb.Microcode+1),
		},
		"report of another launch (firmware)": {
			policy:  func(p *Policy) { p.LaunchMeasurements = [][]byte{bytes.Repeat([]byte{0xaa}, 48)} },
			wantErr: ErrLaunchMeasurement,
			wantMsg: "the report's MEASUREMENT is " + hex.EncodeToString(f.measurement),
		},
		"policy without launch measurements": {
			policy:  func(p *Policy) { p.LaunchMeasurements = nil },
			wantErr: ErrInvalidPolicy,
			wantMsg: "no launch measurement",
		},
		"launch measurement of the wrong size": {
			policy:  func(p *Policy) { p.LaunchMeasurements = [][]byte{f.measurement[:32]} },
			wantErr: ErrInvalidPolicy,
			wantMsg: "launch measurement 0 is 32 bytes, want 48",
		},
		"product line without a default minimum TCB": {
			policy:  func(p *Policy) { p.Product, p.MinimumTCB = "Genoa", TCB{} },
			wantErr: ErrInvalidPolicy,
			wantMsg: "no default minimum TCB for Genoa",
		},
		"REPORT_DATA differs in its last byte": {
			reportData: func(d *[64]byte) { d[63] ^= 0x01 },
			wantErr:    ErrReportDataMismatch,
			wantMsg:    "report carries " + hex.EncodeToString(f.reportData[:]),
		},
		"report vouches for another AK": {
			reportData: func(d *[64]byte) { *d = Binding([]byte("the AK the verifier expected"), []byte("nonce")) },
			wantErr:    ErrReportDataMismatch,
			wantMsg:    "REPORT_DATA mismatch",
		},

		"policy without product": {
			policy:  func(p *Policy) { p.Product = "" },
			wantErr: ErrInvalidPolicy,
			wantMsg: "no AMD product line given (one of Genoa, Milan, Turin)",
		},
		"policy with unknown product and no roots": {
			policy:  func(p *Policy) { p.Product = "Naples" },
			wantErr: ErrInvalidPolicy,
			wantMsg: `no embedded AMD roots for product line "Naples"`,
		},
		"TrustedRoots bundle is not PEM": {
			policy:  func(p *Policy) { p.TrustedRoots = [][]byte{[]byte("not PEM")} },
			wantErr: ErrInvalidPolicy,
			wantMsg: "trusted root bundle 0",
		},
	}

	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			att := realAttestation()
			if tc.att != nil {
				tc.att(&att)
			}
			policy := realPolicy(t)
			if tc.policy != nil {
				tc.policy(&policy)
			}
			reportData := f.reportData
			if tc.reportData != nil {
				tc.reportData(&reportData)
			}

			report, err := Validate(att, policy, reportData)

			if tc.wantErr == nil {
				require.NoError(t, err)
				require.NotNil(t, report)
				assert.Equal(t, f.reportData[:], report.GetReportData())
				assert.Equal(t, f.measurement, report.GetMeasurement())
				return
			}
			t.Logf("refused: %v", err)
			requireOnly(t, err, tc.wantErr)
			assert.ErrorContains(t, err, tc.wantMsg)
			assert.Nil(t, report)
		})
	}

	assert.Empty(t, getter.urls, "validation must never reach the network")
}

func TestValidateReportsAllPolicyFailuresAtOnce(t *testing.T) {
	f := facts(t)
	policy := realPolicy(t)
	policy.AllowDebug = false
	policy.MinimumTCB = TCB{
		Bootloader: f.tcb.Bootloader + 1, TEE: f.tcb.TEE + 1, SNP: f.tcb.SNP + 1, Microcode: f.tcb.Microcode + 1,
	}
	reportData := Binding([]byte("another AK"), []byte("nonce"))

	report, err := Validate(realAttestation(), policy, reportData)

	require.Error(t, err)
	assert.Nil(t, report)
	assert.ErrorIs(t, err, ErrDebugEnabled)
	assert.ErrorIs(t, err, ErrTCBTooLow)
	assert.ErrorIs(t, err, ErrReportDataMismatch)
	assert.NotErrorIs(t, err, ErrSignature)
	for _, component := range []string{"bootloader", "TEE", "SNP", "microcode"} {
		assert.ErrorContains(t, err, component+" SVN is")
	}
	assert.Len(t, strings.Split(err.Error(), "\n"), 1+6, "one heading and six violations: %s", err)
}

// A tampered report must fail on its signature even when the policy would refuse it too, and even when the
// tampering makes REPORT_DATA match what the verifier expects: nothing from an unverified report is judged.
func TestValidateChecksSignatureBeforePolicy(t *testing.T) {
	forgedBinding := Binding([]byte("attacker's AK"), []byte("nonce"))
	att := realAttestation()
	copy(att.Report[offReportData:], forgedBinding[:])

	policy := realPolicy(t)
	policy.AllowDebug = false
	policy.MinimumTCB.Microcode = 255

	report, err := Validate(att, policy, forgedBinding)

	requireOnly(t, err, ErrSignature)
	assert.Nil(t, report)
}

// The real report's guest policy has DEBUG set and it cannot be re-signed, so the non-debug direction of the
// debug check is shown on parsed copies here. Validate reaches checkPolicy only after verifySignature.
func TestCheckPolicy(t *testing.T) {
	const debugBit = 1 << 19
	f := facts(t)
	require.NotZero(t, f.report.GetPolicy()&debugBit, "the real report is expected to allow debugging")

	testCases := map[string]struct {
		report  func(*sevsnp.Report)
		policy  func(*Policy)
		wantErr error
	}{
		"as reported, debug allowed": {},
		"as reported, debug refused": {
			policy:  func(p *Policy) { p.AllowDebug = false },
			wantErr: ErrDebugEnabled,
		},
		"DEBUG cleared, debug refused": {
			report: func(r *sevsnp.Report) { r.Policy &^= debugBit },
			policy: func(p *Policy) { p.AllowDebug = false },
		},
		"reserved guest policy bit 17 cleared": {
			report:  func(r *sevsnp.Report) { r.Policy &^= 1 << 17 },
			wantErr: ErrMalformedReport,
		},
		"higher REPORTED_TCB meets a raised minimum": {
			report: func(r *sevsnp.Report) { r.ReportedTcb += 1 << 56 }, // microcode SVN + 1
			policy: func(p *Policy) { p.MinimumTCB.Microcode++ },
		},
		"REPORT_DATA changed": {
			report:  func(r *sevsnp.Report) { r.ReportData[0] ^= 0x01 },
			wantErr: ErrReportDataMismatch,
		},
	}

	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			report, err := abi.ReportToProto(realReport) // a fresh copy to modify
			require.NoError(t, err)
			if tc.report != nil {
				tc.report(report)
			}
			policy := realPolicy(t)
			if tc.policy != nil {
				tc.policy(&policy)
			}

			err = checkPolicy(report, policy, f.reportData)

			if tc.wantErr == nil {
				assert.NoError(t, err)
				return
			}
			requireOnly(t, err, tc.wantErr)
		})
	}
}

// A report and its certificate are both signed by AMD, so a mismatch between them cannot be built from
// real data; the binding check is shown on parsed copies of the real report. verifySignature runs it only
// after go-sev-guest accepted the signature and chain.
func TestCheckCertBinding(t *testing.T) {
	testCases := map[string]struct {
		report  func(*sevsnp.Report)
		wantErr error
		wantMsg string
	}{
		"as reported": {},
		"CHIP_ID masked by the host": {
			report: func(r *sevsnp.Report) { r.ChipId = make([]byte, abi.ChipIDSize) },
		},
		"REPORTED_TCB differs from the VCEK's TCB": {
			report:  func(r *sevsnp.Report) { r.ReportedTcb += 1 << 56 }, // microcode SVN + 1
			wantErr: ErrSignature,
			wantMsg: "the VCEK certificate is for TCB 0x4405000000000002 but the report's REPORTED_TCB is 0x4505000000000002",
		},
		"CHIP_ID of another chip": {
			report:  func(r *sevsnp.Report) { r.ChipId[0] ^= 0x01 },
			wantErr: ErrSignature,
			wantMsg: "the VCEK certificate is for chip 3ac3fe21",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			report, err := abi.ReportToProto(realReport) // a fresh copy to modify
			require.NoError(t, err)
			if tc.report != nil {
				tc.report(report)
			}

			err = checkCertBinding(report, abi.VcekReportSigner, realVCEK)

			if tc.wantErr == nil {
				assert.NoError(t, err)
				return
			}
			requireOnly(t, err, tc.wantErr)
			assert.ErrorContains(t, err, tc.wantMsg)
		})
	}
}

// TestRealReportFacts pins down what the test data is, so a changed file cannot silently weaken the tests.
func TestRealReportFacts(t *testing.T) {
	f := facts(t)
	assert.Equal(t, uint32(2), f.report.GetVersion())
	assert.Equal(t, uint64(0xb0000), f.report.GetPolicy(), "SMT, reserved bit 17 and DEBUG")
	assert.Equal(t, TCB{Bootloader: 2, TEE: 0, SNP: 5, Microcode: 68}, f.tcb)
	assert.Equal(t, f.report.GetReportedTcb(), f.report.GetCurrentTcb())
	info, err := abi.ParseSignerInfo(f.report.GetSignerInfo())
	require.NoError(t, err)
	assert.Equal(t, abi.VcekReportSigner, info.SigningKey)
	assert.Equal(t, "0102030405"+strings.Repeat("00", 59), hex.EncodeToString(f.reportData[:]))
	assert.Equal(t, "377e6241d3b373ab1df80c0f96978594e7e21f4797dd6ea95e2957e1c1e26060", sha256Hex(realReport))
	assert.Equal(t, "0d057f9b6e29a69eda9c0154b259567d291c1c08d73a11e9d31ace07c435b6d8", sha256Hex(realVCEK))
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestBinding(t *testing.T) {
	// SHA-256("abc") from FIPS 180-2, appendix B.1.
	wantAK := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	nonceSum := sha256.Sum256([]byte("constellation sev-snp report nonce\x00n1"))
	got := Binding([]byte("abc"), []byte("n1"))
	assert.Equal(t, wantAK+hex.EncodeToString(nonceSum[:]), hex.EncodeToString(got[:]))
	assert.NotEqual(t, got, Binding([]byte("abd"), []byte("n1")), "another AK")
	assert.NotEqual(t, got, Binding([]byte("abc"), []byte("n2")), "another nonce")
}

func TestTrustedRoots(t *testing.T) {
	testCases := map[string]struct {
		policy  Policy
		wantErr error
	}{
		"embedded Milan":  {policy: Policy{Product: "Milan"}},
		"embedded Genoa":  {policy: Policy{Product: "Genoa"}},
		"embedded Turin":  {policy: Policy{Product: "Turin"}},
		"explicit Milan":  {policy: Policy{Product: "Milan", TrustedRoots: [][]byte{milanVLEKChainPEM, milanChainPEM}}},
		"no product":      {policy: Policy{}, wantErr: ErrInvalidPolicy},
		"unknown product": {policy: Policy{Product: "Venice"}, wantErr: ErrInvalidPolicy},
		"one bad bundle": {
			policy:  Policy{Product: "Milan", TrustedRoots: [][]byte{milanChainPEM, milanChainPEM[:100]}},
			wantErr: ErrInvalidPolicy,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			roots, err := trustedRoots(tc.policy)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			// The VCEK and VLEK bundles share their ARK and merge into one root with both intermediates.
			require.Len(t, roots, 1)
			assert.Equal(t, tc.policy.Product, roots[0].GetProductLine())
			require.NotNil(t, roots[0].ProductCerts)
			assert.Equal(t, "ARK-"+tc.policy.Product, roots[0].ProductCerts.Ark.Subject.CommonName)
			assert.Equal(t, "SEV-"+tc.policy.Product, roots[0].ProductCerts.Ask.Subject.CommonName)
			assert.Equal(t, "SEV-VLEK-"+tc.policy.Product, roots[0].ProductCerts.Asvk.Subject.CommonName)
		})
	}
}

func TestVerifyOptionsStayOffline(t *testing.T) {
	opts := verifyOptions(Policy{Product: "Milan"}, nil)

	assert.True(t, opts.DisableCertFetching)
	assert.False(t, opts.CheckRevocations)
	require.NotNil(t, opts.Getter, "a nil Getter would make go-sev-guest fall back to http.Get")
	_, err := opts.Getter.Get("https://kdsintf.amd.com/vcek/v1/Milan/cert_chain")
	assert.Error(t, err)
	assert.WithinDuration(t, time.Now(), opts.Now, time.Minute, "zero Policy.Now means now")
	assert.Contains(t, opts.TrustedRoots, "Milan")
	assert.Equal(t, "Milan", kds.ProductLine(opts.Product))

	assert.Equal(t, validAt, verifyOptions(Policy{Product: "Milan", Now: validAt}, nil).Now)
}

func FuzzValidate(f *testing.F) {
	f.Add(bytes.Clone(realReport))
	f.Add(realReport[:offSignature])
	f.Fuzz(func(t *testing.T, raw []byte) {
		facts := facts(t)
		report, err := Validate(Attestation{Report: raw, VCEK: realVCEK}, realPolicy(t), facts.reportData)
		if err != nil {
			assert.Nil(t, report)
			classified := false
			for _, sentinel := range allSentinels {
				classified = classified || errors.Is(err, sentinel)
			}
			assert.True(t, classified, "unclassified error: %v", err)
			return
		}
		// Only AMD can sign, so whatever passes must carry the signed content of the real report.
		require.NotNil(t, report)
		require.Len(t, raw, abi.ReportSize)
		assert.Equal(t, realReport[:offSignature], raw[:offSignature])
	})
}
