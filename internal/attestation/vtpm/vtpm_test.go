package vtpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/tpm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is a measured test node with an issuer.
type node struct {
	tpm    transport.TPMCloser
	issuer *Issuer
	log    []byte
	refs   measurements.M
}

var boot = vtpmtest.Boot

func newNode(t testing.TB, events []vtpmtest.Event) *node {
	t.Helper()
	vn := vtpmtest.NewNode(t, events)
	n := &node{tpm: vn.TPM, log: vn.EventLog, refs: vtpmtest.ReferenceValues(events)}
	n.issuer = NewIssuer(variant.QEMUVTPM, vn.TPM, WithEventLog(func() ([]byte, error) { return n.log, nil }))
	t.Cleanup(n.issuer.Close)
	return n
}

func newNonce(t *testing.T) []byte {
	t.Helper()
	nonce := make([]byte, 32)
	_, err := rand.Read(nonce)
	require.NoError(t, err)
	return nonce
}

func newValidator(t *testing.T, cfg ValidatorConfig) *Validator {
	t.Helper()
	v, err := NewValidator(variant.QEMUVTPM, cfg)
	require.NoError(t, err)
	return v
}

func TestIssueAndValidate(t *testing.T) {
	n := newNode(t, boot)
	nonce := newNonce(t)
	userData := []byte("sha256 of the TLS key")
	doc, err := n.issuer.Issue(context.Background(), userData, nonce)
	require.NoError(t, err)
	assert.Less(t, len(doc), 8<<10, "documents must stay small for TLS")

	v := newValidator(t, ValidatorConfig{Measurements: n.refs, AKRoots: vtpmtest.AKRoots(t)})
	res, err := v.ValidateDetailed(context.Background(), doc, nonce)
	require.NoError(t, err)
	assert.Equal(t, userData, res.UserData)
	assert.Len(t, res.PCRs, measurements.PCRCount)
	assert.Empty(t, res.Warnings)

	got, err := v.Validate(context.Background(), doc, nonce)
	require.NoError(t, err)
	assert.Equal(t, userData, got)

	// The AK is kept: a second document uses the same key.
	doc2, err := n.issuer.Issue(context.Background(), userData, nonce)
	require.NoError(t, err)
	assert.Equal(t, decode(t, doc).AKPublic, decode(t, doc2).AKPublic)
}

// The AK certificate names the node the platform certified the vTPM for; the JoinService binds join tickets
// to that name.
func TestCertifiedName(t *testing.T) {
	vn := vtpmtest.NewNamedNode(t, "worker-3", boot)
	issuer := NewIssuer(variant.QEMUVTPM, vn.TPM, WithEventLog(func() ([]byte, error) { return vn.EventLog, nil }))
	t.Cleanup(issuer.Close)
	doc, err := issuer.Issue(context.Background(), []byte("user data"), newNonce(t))
	require.NoError(t, err)
	name, err := CertifiedName(doc)
	require.NoError(t, err)
	assert.Equal(t, "worker-3", name)

	// Without an AK certificate (SEV-SNP variants) there is no name.
	d := decode(t, doc)
	d.AKCert = nil
	raw, err := json.Marshal(d)
	require.NoError(t, err)
	name, err = CertifiedName(raw)
	require.NoError(t, err)
	assert.Empty(t, name)

	_, err = CertifiedName([]byte("{"))
	assert.ErrorIs(t, err, attestation.ErrMalformedDocument)
}

func TestWarnOnlyMismatchIsReportedNotFatal(t *testing.T) {
	n := newNode(t, boot)
	refs := n.refs.Clone()
	other := sha256.Sum256([]byte("other boot loader"))
	refs[14] = measurements.Measurement{Expected: other[:], WarnOnly: true} // not a required PCR
	nonce := newNonce(t)
	doc, err := n.issuer.Issue(context.Background(), nil, nonce)
	require.NoError(t, err)
	res, err := newValidator(t, ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)}).ValidateDetailed(context.Background(), doc, nonce)
	require.NoError(t, err)
	require.Len(t, res.Warnings, 1)
	assert.Equal(t, uint32(14), res.Warnings[0].PCR)
	assert.True(t, res.Warnings[0].WarnOnly)
}

func TestMismatchNamesPCRAndEvents(t *testing.T) {
	// The node booted a different UKI than the reference values describe.
	want := newNode(t, boot)
	n := newNode(t, vtpmtest.WithEvent(boot, 2, vtpmtest.Event{PCR: 4, Type: eventlog.EvEFIBootServicesApp, Data: "evil-uki.efi"}))

	nonce := newNonce(t)
	doc, err := n.issuer.Issue(context.Background(), nil, nonce)
	require.NoError(t, err)
	_, err = newValidator(t, ValidatorConfig{Measurements: want.refs, AKRoots: vtpmtest.AKRoots(t)}).Validate(context.Background(), doc, nonce)
	require.ErrorIs(t, err, attestation.ErrMeasurementMismatch)
	var verr *attestation.ValidationError
	require.ErrorAs(t, err, &verr)
	require.Len(t, verr.Mismatches, 1)
	m := verr.Mismatches[0]
	assert.Equal(t, uint32(4), m.PCR)
	assert.Equal(t, want.refs[4].Expected.String(), m.Expected)
	require.Len(t, m.Events, 3, "the PCR's events from the log")
	assert.Contains(t, strings.Join(m.Events, "\n"), "Calling EFI Application")
	assert.Contains(t, err.Error(), "PCR 4 (enforced): expected")

	js, err := verr.JSON()
	require.NoError(t, err)
	assert.Contains(t, string(js), `"pcr": 4`)
}

func TestNewValidatorRequiresReferences(t *testing.T) {
	n := newNode(t, boot)
	refs := n.refs.Clone()
	delete(refs, 11)
	_, err := NewValidator(variant.QEMUVTPM, ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)})
	require.ErrorIs(t, err, ErrMissingReference)
	assert.Contains(t, err.Error(), "[11]")

	_, err = NewValidator(variant.QEMUVTPM, ValidatorConfig{Measurements: measurements.M{4: {Expected: []byte{1}}}, Required: []uint32{}})
	assert.ErrorContains(t, err, "PCR 4: expected value must be 32 bytes")
}

// The zero value of every option is the strict one; the escape hatches are named.
func TestNewValidatorIsStrictByDefault(t *testing.T) {
	n := newNode(t, boot)
	_, err := NewValidator(variant.QEMUVTPM, ValidatorConfig{Measurements: n.refs})
	require.ErrorIs(t, err, ErrNoAKTrust, "nothing vouches for the AK: a software key would pass")

	_, err = NewValidator(variant.QEMUVTPM, ValidatorConfig{Measurements: n.refs, AllowUnverifiedAK: true})
	require.NoError(t, err, "the escape hatch is named")

	refs := n.refs.Clone()
	refs[12] = measurements.Measurement{Expected: refs[12].Expected, WarnOnly: true}
	_, err = NewValidator(variant.QEMUVTPM, ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)})
	require.ErrorIs(t, err, ErrWarnOnlyRequired, "a warn-only required PCR enforces nothing")
	assert.ErrorContains(t, err, "[12]")
	_, err = NewValidator(variant.QEMUVTPM, ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t), AllowWarnOnlyRequired: true})
	require.NoError(t, err)

	// A Validator made without NewValidator accepts nothing.
	nonce := newNonce(t)
	doc, err := n.issuer.Issue(context.Background(), nil, nonce)
	require.NoError(t, err)
	_, err = (&Validator{cfg: ValidatorConfig{Measurements: n.refs}}).Validate(context.Background(), doc, nonce)
	require.ErrorIs(t, err, ErrNoAKTrust)
}

// decode decodes a document with its event log inflated into EventLog (the uncompressed form validators
// also accept), so that forgeries can edit the log directly.
func decode(t *testing.T, raw []byte) *Document {
	t.Helper()
	var d Document
	require.NoError(t, json.Unmarshal(raw, &d))
	log, err := d.eventLog()
	require.NoError(t, err)
	d.EventLog, d.EventLogDeflate = log, nil
	return &d
}

func encode(t *testing.T, d *Document) []byte {
	t.Helper()
	raw, err := json.Marshal(d)
	require.NoError(t, err)
	return raw
}

// forgery describes one attack: it gets a legitimately issued document and its nonce and returns what the
// attacker presents (document, nonce, validator config).
type forgery struct {
	forge   func(t *testing.T, f *fixture) (doc, nonce []byte, cfg ValidatorConfig)
	wantErr error
	wantMsg string
}

type fixture struct {
	node  *node
	other *node // a different node with the same boot
	nonce []byte
	doc   []byte
}

func TestAttackMatrix(t *testing.T) {
	f := &fixture{node: newNode(t, boot), other: newNode(t, boot), nonce: newNonce(t)}
	var err error
	f.doc, err = f.node.issuer.Issue(context.Background(), []byte("user data"), f.nonce)
	require.NoError(t, err)
	good := func(f *fixture) ValidatorConfig {
		return ValidatorConfig{Measurements: f.node.refs, AKRoots: vtpmtest.AKRoots(t)}
	}

	matrix := map[string]forgery{
		"wrong nonce": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return f.doc, newNonce(t), good(f)
			},
			wantErr: ErrNonceMismatch,
		},
		"replayed document (old nonce, new challenge)": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				old, err := f.node.issuer.Issue(context.Background(), []byte("user data"), newNonce(t))
				require.NoError(t, err)
				return old, f.nonce, good(f)
			},
			wantErr: ErrNonceMismatch,
		},
		"user data swapped (key substitution)": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.UserData = []byte("attacker's key hash")
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrNonceMismatch,
		},
		"nonce too short": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return f.doc, f.nonce[:16], good(f)
			},
			wantErr: attestation.ErrNonceTooShort,
		},
		"quote from a different AK": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				otherDoc, err := f.other.issuer.Issue(context.Background(), []byte("user data"), f.nonce)
				require.NoError(t, err)
				d := decode(t, f.doc)
				d.Quote = decode(t, otherDoc).Quote
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrQuoteSignature,
		},
		"AK replaced, quote kept": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				otherDoc, err := f.other.issuer.Issue(context.Background(), []byte("user data"), f.nonce)
				require.NoError(t, err)
				d := decode(t, f.doc)
				d.AKPublic = decode(t, otherDoc).AKPublic
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrUntrustedAK,
			wantMsg: "for another key",
		},
		"AK and its certificate replaced, quote kept": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				otherDoc, err := f.other.issuer.Issue(context.Background(), []byte("user data"), f.nonce)
				require.NoError(t, err)
				d := decode(t, f.doc)
				d.AKPublic, d.AKCert = decode(t, otherDoc).AKPublic, decode(t, otherDoc).AKCert
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrQuoteSignature,
		},
		"software key as the AK": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return forgeWithSoftwareAK(t, f, nil), f.nonce, good(f)
			},
			wantErr: ErrUntrustedAK,
			wantMsg: "carries none",
		},
		"software key as the AK, certified by the attacker's CA": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				attackerCA, err := manufacturer.NewCA("vtpmtest platform CA") // same name, other key
				require.NoError(t, err)
				return forgeWithSoftwareAK(t, f, attackerCA), f.nonce, good(f)
			},
			wantErr: akcert.ErrCertificate,
			wantMsg: "unknown authority",
		},
		"certificate of another vTPM": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				otherDoc, err := f.other.issuer.Issue(context.Background(), []byte("user data"), f.nonce)
				require.NoError(t, err)
				d := decode(t, f.doc)
				d.AKCert = decode(t, otherDoc).AKCert
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: akcert.ErrCertificate,
			wantMsg: "for another key",
		},
		"the vTPM's EK certificate as the AK certificate": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				ek, err := akcert.ReadNV(f.node.tpm, manufacturer.ECCEKCertNVIndex)
				require.NoError(t, err)
				d := decode(t, f.doc)
				d.AKCert = ek
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: akcert.ErrCertificate,
			wantMsg: "not an attestation key certificate",
		},
		"AK certificate stripped": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.AKCert = nil
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: akcert.ErrCertificate,
		},
		"AK that can sign arbitrary data": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return forgeWithUnrestrictedKey(t, f), f.nonce, good(f)
			},
			wantErr: ErrBadAK,
		},
		"self-written TPMS_ATTEST signed by the real AK through TPM2_Hash": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return forgeWithHashTicket(t, f), f.nonce, good(f)
			},
			wantErr: ErrNotTPMGenerated,
		},
		"garbage AK": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.AKPublic = []byte{0, 4, 1, 2, 3, 4}
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrBadAK,
		},
		"signature bit flipped": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.Quote.Signature[len(d.Quote.Signature)-1] ^= 1
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrQuoteSignature,
		},
		"quoted structure altered": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.Quote.Quoted[len(d.Quote.Quoted)-1] ^= 1
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrQuoteSignature,
		},
		"tampered PCR value": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.Quote.PCRs[4] = bytes.Repeat([]byte{0xaa}, 32)
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrPCRDigestMismatch,
		},
		"PCR dropped from the document": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				delete(d.Quote.PCRs, 9)
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrPCRDigestMismatch,
		},
		"extra PCR smuggled into the document": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.Quote.PCRs[99] = make([]byte, 32)
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrPCRDigestMismatch,
		},
		"SHA-1-only quote": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return forgeSHA1Quote(t, f), f.nonce, good(f)
			},
			wantErr: tpm.ErrNotSHA256,
		},
		"tampered event log": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				b := eventlog.NewBuilder()
				for _, ev := range boot {
					data := ev.Data
					if ev.Type == eventlog.EvEFIBootServicesApp {
						data = "innocent-looking.efi"
					}
					b.Add(ev.PCR, ev.Type, sha256.Sum256([]byte(data)), []byte(data))
				}
				d.EventLog = b.Bytes()
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrEventLogMismatch,
		},
		"truncated event log": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.EventLog = d.EventLog[:len(d.EventLog)-7]
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrEventLog,
		},
		"event log with an event left out": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				b := eventlog.NewBuilder()
				for _, ev := range boot[1:] {
					b.Add(ev.PCR, ev.Type, sha256.Sum256([]byte(ev.Data)), []byte(ev.Data))
				}
				d.EventLog = b.Bytes()
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrEventLogMismatch,
		},
		"tampered compressed event log": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				b := eventlog.NewBuilder()
				for _, ev := range boot[1:] {
					b.Add(ev.PCR, ev.Type, sha256.Sum256([]byte(ev.Data)), []byte(ev.Data))
				}
				var err error
				d.EventLog = nil
				d.EventLogDeflate, err = compressEventLog(b.Bytes())
				require.NoError(t, err)
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrEventLogMismatch,
		},
		"compressed event log that inflates beyond the bound": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				bomb, err := compressEventLog(make([]byte, MaxEventLogSize+1))
				require.NoError(t, err)
				d.EventLog, d.EventLogDeflate = nil, bomb
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: attestation.ErrDocumentTooLarge,
			wantMsg: "inflates to more than 1048576 bytes",
		},
		"corrupt compressed event log": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.EventLog, d.EventLogDeflate = nil, []byte{0xff, 0xff, 0xff}
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: attestation.ErrMalformedDocument,
		},
		"event log in both forms": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				var err error
				d.EventLogDeflate, err = compressEventLog(d.EventLog)
				require.NoError(t, err)
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: attestation.ErrMalformedDocument,
			wantMsg: "both eventLog and eventLogDeflate",
		},
		"event log stripped": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.EventLog = nil
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: ErrNoEventLog,
		},
		"booted something else": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				refs := f.node.refs.Clone()
				other := sha256.Sum256([]byte("the published kernel command line"))
				refs[9] = measurements.Measurement{Expected: other[:]}
				return f.doc, f.nonce, ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)}
			},
			wantErr: attestation.ErrMeasurementMismatch,
			wantMsg: "PCR 9 (enforced)",
		},
		"PCR 15 already set on a fresh node": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				n := newNode(t, boot)
				ev := measurements.ClusterIDEvent([]byte("someone else's cluster"))
				require.NoError(t, tpm.Extend(n.tpm, measurements.PCRClusterID, ev))
				doc, err := n.issuer.Issue(context.Background(), nil, f.nonce)
				require.NoError(t, err)
				return doc, f.nonce, ValidatorConfig{Measurements: f.node.refs.WithFreshNode(), AKRoots: vtpmtest.AKRoots(t)}
			},
			wantErr: attestation.ErrMeasurementMismatch,
			wantMsg: "PCR 15 (enforced)",
		},
		"wrong cluster ID": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				n := newNode(t, boot)
				require.NoError(t, tpm.Extend(n.tpm, measurements.PCRClusterID, measurements.ClusterIDEvent([]byte("cluster A"))))
				doc, err := n.issuer.Issue(context.Background(), nil, f.nonce)
				require.NoError(t, err)
				refs, err := f.node.refs.WithClusterID([]byte("cluster B"))
				require.NoError(t, err)
				return doc, f.nonce, ValidatorConfig{Measurements: refs, AKRoots: vtpmtest.AKRoots(t)}
			},
			wantErr: attestation.ErrMeasurementMismatch,
			wantMsg: "PCR 15 (enforced)",
		},
		"untrusted AK": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				cfg := good(f)
				cfg.VerifyAK = func(context.Context, *Document, crypto.PublicKey, []byte) error {
					return errors.New("no report vouches for it")
				}
				return f.doc, f.nonce, cfg
			},
			wantErr: ErrUntrustedAK,
		},
		"oversize document": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				d := decode(t, f.doc)
				d.InstanceInfo = make([]byte, attestation.MaxDocumentSize)
				return encode(t, d), f.nonce, good(f)
			},
			wantErr: attestation.ErrDocumentTooLarge,
		},
		"not JSON": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return []byte("\x30\x82garbage"), f.nonce, good(f)
			},
			wantErr: attestation.ErrMalformedDocument,
		},
		"unknown field": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return append(bytes.TrimSuffix(bytes.Clone(f.doc), []byte("}")), []byte(`,"trustMe":true}`)...), f.nonce, good(f)
			},
			wantErr: attestation.ErrMalformedDocument,
		},
		"empty document": {
			forge: func(t *testing.T, f *fixture) ([]byte, []byte, ValidatorConfig) {
				return []byte("{}"), f.nonce, good(f)
			},
			wantErr: attestation.ErrMalformedDocument,
		},
	}
	for name, tc := range matrix {
		t.Run(name, func(t *testing.T) {
			doc, nonce, cfg := tc.forge(t, f)
			v := newValidator(t, cfg)
			userData, err := v.Validate(context.Background(), doc, nonce)
			require.Error(t, err, "forgery was accepted")
			assert.ErrorIs(t, err, tc.wantErr)
			assert.Nil(t, userData, "no user data may leave a failed validation")
			if tc.wantMsg != "" {
				assert.Contains(t, err.Error(), tc.wantMsg)
			}
		})
	}
	// The untouched document still validates: every failure above is the forgery's doing.
	_, err = newValidator(t, good(f)).Validate(context.Background(), f.doc, f.nonce)
	require.NoError(t, err)
}

// forgeWithUnrestrictedKey builds a document whose "quote" is a TPMS_ATTEST the attacker wrote (claiming the
// reference PCR values) and signed with an unrestricted TPM key, which will sign any digest.
func forgeWithUnrestrictedKey(t *testing.T, f *fixture) []byte {
	t.Helper()
	template := akTemplate
	template.ObjectAttributes.Restricted = false
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(template)}.Execute(f.other.tpm)
	require.NoError(t, err)
	defer func() { _, _ = tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(f.other.tpm) }()

	d := decode(t, f.doc)
	attest, err := tpm2.Unmarshal[tpm2.TPMSAttest](d.Quote.Quoted)
	require.NoError(t, err)
	attest.QualifiedSigner = rsp.Name
	quoted := tpm2.Marshal(attest)
	digest := sha256.Sum256(quoted)
	sig, err := tpm2.Sign{
		KeyHandle:  tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:     tpm2.TPM2BDigest{Buffer: digest[:]},
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck},
	}.Execute(f.other.tpm)
	require.NoError(t, err, "an unrestricted key signs any digest: that is the attack")
	d.AKPublic = tpm2.Marshal(rsp.OutPublic)
	d.Quote.Quoted = quoted
	d.Quote.Signature = tpm2.Marshal(sig.Signature)
	return encode(t, d)
}

// forgeWithHashTicket is the attack of whoever can use a node's TPM (root on the node): write a TPMS_ATTEST
// that claims the reference PCR values (the node itself may run anything), have the TPM hash it with
// TPM2_Hash, which returns a ticket for any data that does not start with TPM_GENERATED_VALUE, and sign the
// digest with the node's real, restricted AK, which accepts the ticket. Only the magic value tells this
// structure from a quote.
func forgeWithHashTicket(t *testing.T, f *fixture) []byte {
	t.Helper()
	i := f.node.issuer
	i.mu.Lock()
	defer i.mu.Unlock()
	d := decode(t, f.doc)
	attest, err := tpm2.Unmarshal[tpm2.TPMSAttest](d.Quote.Quoted)
	require.NoError(t, err)
	attest.Magic = 0 // anything but TPM_GENERATED_VALUE, or TPM2_Hash gives no ticket
	quoted := tpm2.Marshal(attest)
	hash, err := tpm2.Hash{Data: tpm2.TPM2BMaxBuffer{Buffer: quoted}, HashAlg: tpm2.TPMAlgSHA256, Hierarchy: tpm2.TPMRHOwner}.Execute(i.tpm)
	require.NoError(t, err)
	sig, err := tpm2.Sign{
		KeyHandle:  tpm2.AuthHandle{Handle: i.ak.handle, Name: i.ak.name, Auth: tpm2.PasswordAuth(nil)},
		Digest:     hash.OutHash,
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		Validation: hash.Validation,
	}.Execute(i.tpm)
	require.NoError(t, err, "the restricted AK signs a digest with a hash ticket: that is the attack")
	d.Quote.Quoted = quoted
	d.Quote.Signature = tpm2.Marshal(sig.Signature)
	return encode(t, d)
}

// forgeWithSoftwareAK is the attack on an unverified AK: a software ECDSA key wrapped in the attributes
// of a restricted TPM signing key, and a TPMS_ATTEST the attacker wrote (claiming the reference PCRs, with
// the right magic: software can write anything) signed with it. With ca, the attacker also certifies the key.
func forgeWithSoftwareAK(t *testing.T, f *fixture, ca *manufacturer.CA) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	pub := akTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: key.X.FillBytes(make([]byte, 32))},
		Y: tpm2.TPM2BECCParameter{Buffer: key.Y.FillBytes(make([]byte, 32))},
	})
	d := decode(t, f.doc)
	digest := sha256.Sum256(d.Quote.Quoted) // the real quote's structure, re-signed: any content would do
	r, sigS, err := ecdsa.Sign(rand.Reader, key, digest[:])
	require.NoError(t, err)
	d.AKPublic = tpm2.Marshal(tpm2.New2B(pub))
	d.Quote.Signature = tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: sigS.Bytes()},
		}),
	})
	d.AKCert = nil
	if ca != nil {
		d.AKCert, err = ca.IssueAKCertificate(&key.PublicKey, "attacker")
		require.NoError(t, err)
	}
	return encode(t, d)
}

// A software AK is a complete forgery wherever nothing vouches for the AK: this is what AKRoots closes.
func TestSoftwareAKPassesOnlyWithoutTrustRoot(t *testing.T) {
	f := &fixture{node: newNode(t, boot), nonce: newNonce(t)}
	var err error
	f.doc, err = f.node.issuer.Issue(context.Background(), []byte("user data"), f.nonce)
	require.NoError(t, err)
	forged := forgeWithSoftwareAK(t, f, nil)
	unverified := newValidator(t, ValidatorConfig{Measurements: f.node.refs, AllowUnverifiedAK: true})
	userData, err := unverified.Validate(context.Background(), forged, f.nonce)
	require.NoError(t, err, "without a trust root the forgery passes: the attack is real")
	assert.Equal(t, []byte("user data"), userData)
	_, err = newValidator(t, ValidatorConfig{Measurements: f.node.refs, AKRoots: vtpmtest.AKRoots(t)}).Validate(context.Background(), forged, f.nonce)
	require.ErrorIs(t, err, ErrUntrustedAK)
}

// forgeSHA1Quote has the node's real AK quote the SHA-1 bank, properly bound to the nonce.
func forgeSHA1Quote(t *testing.T, f *fixture) []byte {
	t.Helper()
	i := f.node.issuer
	i.mu.Lock()
	defer i.mu.Unlock()
	d := decode(t, f.doc)
	sel := tpm.Selection([]uint32{0, 4, 9})
	sel.PCRSelections[0].Hash = tpm2.TPMAlgSHA1
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: i.ak.handle, Name: i.ak.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: qualifyingData(f.nonce, d.UserData)},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      sel,
	}.Execute(i.tpm)
	require.NoError(t, err)
	d.Quote.Quoted = rsp.Quoted.Bytes()
	d.Quote.Signature = tpm2.Marshal(rsp.Signature)
	return encode(t, d)
}

// A PCR extended between two documents must show in the second: the issuer's cache of PCR values must not
// hide the change.
func TestIssuerSeesPCRChanges(t *testing.T) {
	n := newNode(t, boot)
	nonce := newNonce(t)
	v := newValidator(t, ValidatorConfig{Measurements: n.refs, AKRoots: vtpmtest.AKRoots(t)})
	first, err := n.issuer.Issue(context.Background(), nil, nonce)
	require.NoError(t, err)
	_, err = v.Validate(context.Background(), first, nonce)
	require.NoError(t, err)

	require.NoError(t, tpm.Extend(n.tpm, measurements.PCRClusterID, measurements.ClusterIDEvent([]byte("cluster"))))
	second, err := n.issuer.Issue(context.Background(), nil, nonce)
	require.NoError(t, err)
	assert.Equal(t, []byte(measurements.PCR15ForCluster([]byte("cluster"))), decode(t, second).Quote.PCRs[15])
	_, err = v.Validate(context.Background(), second, nonce)
	assert.ErrorIs(t, err, attestation.ErrMeasurementMismatch)
}

// The issuer compresses an unchanged log once, and a changed log (something was measured) again: every
// document carries the log as it is when the document is made.
func TestIssuerCompressesTheCurrentLog(t *testing.T) {
	n := newNode(t, boot)
	nonce := sha256.Sum256([]byte("nonce"))
	logOf := func() []byte {
		raw, err := n.issuer.Issue(context.Background(), nil, nonce[:])
		require.NoError(t, err)
		var d Document
		require.NoError(t, json.Unmarshal(raw, &d))
		assert.Empty(t, d.EventLog, "issuers send the compressed form")
		log, err := d.eventLog()
		require.NoError(t, err)
		return log
	}
	first := bytes.Clone(n.log)
	assert.Equal(t, first, logOf())
	assert.Equal(t, first, logOf())

	n.log = append(bytes.Clone(first), 0x00) // the next log; its content need not parse for this check
	assert.Equal(t, n.log, logOf())
	n.log = first
	assert.Equal(t, first, logOf())
}
