package snp

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/pem"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sgtest "github.com/google/go-sev-guest/testing"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/vtpm"
)

// The real report cannot be re-signed, so the checks of fields it does not vary (MEASUREMENT, VMPL,
// MIGRATE_MA, a fresh REPORT_DATA) are shown on reports signed by a test-only AMD chain from go-sev-guest,
// which the policy trusts through TrustedRoots exactly as it would trust AMD's real roots.

// More report offsets (AMD SEV-SNP ABI specification, table "ATTESTATION_REPORT").
const (
	offPolicy = 0x008
	offVMPL   = 0x030
	offChipID = 0x1A0
)

// signedTCB is the firmware level of the test chain's VCEK and of every signed report: Milan's default
// minimum, so the default policy accepts it.
var signedTCB = TCB{Bootloader: 3, TEE: 0, SNP: 8, Microcode: 115}

type testChip struct {
	signer *sgtest.AmdSigner
	roots  []byte // the ASK and ARK as a KDS cert_chain PEM bundle
	now    time.Time
}

func newTestChip(t *testing.T) testChip {
	t.Helper()
	created := time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC)
	parts := kds.TCBParts{BlSpl: signedTCB.Bootloader, TeeSpl: signedTCB.TEE, SnpSpl: signedTCB.SNP, UcodeSpl: signedTCB.Microcode}
	b := &sgtest.AmdSignerBuilder{
		ProductName: "Milan-B0", CSPID: "test",
		ArkCreationTime: created, AskCreationTime: created, AsvkCreationTime: created, VcekCreationTime: created,
		VcekCustom: sgtest.CertOverride{
			Extensions: sgtest.CustomExtensions(parts, make([]byte, abi.ChipIDSize), "test", "Milan-B0"),
		},
	}
	signer, err := b.TestOnlyCertChain()
	require.NoError(t, err)
	roots := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ask.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ark.Raw})...)
	return testChip{signer: signer, roots: roots, now: created.Add(time.Hour)}
}

// launchDigest is the MEASUREMENT of every signed report unless a test changes it.
var launchDigest = bytes.Repeat([]byte{0x5a}, LaunchMeasurementSize)

// report returns a version 2 report of a non-debug guest at VMPL 0 with launchDigest and reportData,
// changed by edit, then signed by the chip. It starts from the real report's bytes so that every field the
// tests do not care about is well-formed.
func (c testChip) report(t *testing.T, reportData [64]byte, edit func(r []byte)) Attestation {
	t.Helper()
	r := bytes.Clone(realReport)
	binary.LittleEndian.PutUint64(r[offPolicy:], 0x30000) // SMT allowed, reserved bit 17; no DEBUG, no MIGRATE_MA
	binary.LittleEndian.PutUint32(r[offVMPL:], 0)
	copy(r[offReportData:], reportData[:])
	copy(r[offMeasurement:], launchDigest)
	tcb := uint64(kds.TCBVersion(0))
	if v, err := kds.ComposeTCBParts(kds.TCBParts{
		BlSpl: signedTCB.Bootloader, TeeSpl: signedTCB.TEE, SnpSpl: signedTCB.SNP, UcodeSpl: signedTCB.Microcode,
	}); err == nil {
		tcb = uint64(v)
	}
	for _, off := range []int{0x038 /* CURRENT_TCB */, offReportedTCB, 0x1E0 /* COMMITTED_TCB */, 0x1F0 /* LAUNCH_TCB */} {
		binary.LittleEndian.PutUint64(r[off:], tcb)
	}
	clear(r[offChipID : offChipID+abi.ChipIDSize]) // masked, as hosts may do
	if edit != nil {
		edit(r)
	}
	rs, ss, err := c.signer.Sign(abi.SignedComponent(r))
	require.NoError(t, err)
	require.NoError(t, abi.SetSignature(rs, ss, r))
	return Attestation{Report: r, VCEK: c.signer.Vcek.Raw}
}

func (c testChip) policy() Policy {
	return Policy{
		Product:            "Milan",
		TrustedRoots:       [][]byte{c.roots},
		LaunchMeasurements: [][]byte{launchDigest},
		Now:                c.now,
	}
}

func TestValidateSignedReports(t *testing.T) {
	chip := newTestChip(t)
	binding := Binding([]byte("the node's AK"), []byte("the verifier's nonce"))

	testCases := map[string]struct {
		edit    func(r []byte)
		policy  func(*Policy)
		wantErr error
		wantMsg string
	}{
		"the expected launch, VMPL 0, strict guest policy, default minimum TCB": {},
		"another launch digest (another firmware)": {
			edit:    func(r []byte) { r[offMeasurement] ^= 0xff },
			wantErr: ErrLaunchMeasurement,
			wantMsg: "not one of the 1 configured",
		},
		"requested at VMPL 1": {
			edit:    func(r []byte) { binary.LittleEndian.PutUint32(r[offVMPL:], 1) },
			wantErr: ErrVMPL,
			wantMsg: "requested at VMPL 1",
		},
		"guest policy allows a migration agent": {
			edit:    func(r []byte) { binary.LittleEndian.PutUint64(r[offPolicy:], 0x30000|1<<18) },
			wantErr: ErrMigrationAgent,
			wantMsg: "guest policy 0x70000 has MIGRATE_MA set",
		},
		"a migration agent the policy allows": {
			edit:   func(r []byte) { binary.LittleEndian.PutUint64(r[offPolicy:], 0x30000|1<<18) },
			policy: func(p *Policy) { p.AllowMigrationAgent = true },
		},
		"guest policy allows debugging": {
			edit:    func(r []byte) { binary.LittleEndian.PutUint64(r[offPolicy:], 0x30000|1<<19) },
			wantErr: ErrDebugEnabled,
		},
		"firmware newer than the default minimum is not enough for a higher explicit one": {
			policy:  func(p *Policy) { p.MinimumTCB = TCB{Bootloader: 3, SNP: 9, Microcode: 115} },
			wantErr: ErrTCBTooLow,
			wantMsg: "SNP SVN is 8, policy requires at least 9",
		},
		"a chain the policy does not trust (go-sev-guest's embedded AMD roots)": {
			policy:  func(p *Policy) { p.TrustedRoots = nil },
			wantErr: ErrSignature,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			att := chip.report(t, binding, tc.edit)
			policy := chip.policy()
			if tc.policy != nil {
				tc.policy(&policy)
			}

			report, err := Validate(att, policy, binding)

			if tc.wantErr == nil {
				require.NoError(t, err)
				assert.Equal(t, binding[:], report.GetReportData())
				return
			}
			t.Logf("refused: %v", err)
			requireOnly(t, err, tc.wantErr)
			assert.ErrorContains(t, err, tc.wantMsg)
		})
	}
}

// TestVerifyAKFreshness shows the attack the nonce half of REPORT_DATA closes: a report that vouched for
// the node's AK in an earlier attestation, replayed with a new quote, is refused.
func TestVerifyAKFreshness(t *testing.T) {
	chip := newTestChip(t)
	ak := []byte("the node's AK")
	earlier := chip.report(t, Binding(ak, []byte("an earlier verifier's nonce")), nil)
	fresh := chip.report(t, Binding(ak, []byte("this verifier's nonce")), nil)

	testCases := map[string]struct {
		att     Attestation
		wantErr error
	}{
		"a report made for this nonce":          {att: fresh},
		"a report replayed from an earlier one": {att: earlier, wantErr: ErrReportDataMismatch},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			info, err := EncodeInstanceInfo(tc.att)
			require.NoError(t, err)
			doc := &vtpm.Document{AKPublic: ak, InstanceInfo: info}

			err = VerifyAK(chip.policy())(context.Background(), doc, nil, []byte("this verifier's nonce"))

			if tc.wantErr == nil {
				require.NoError(t, err)
				return
			}
			requireOnly(t, err, tc.wantErr)
		})
	}
}
