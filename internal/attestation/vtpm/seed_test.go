package vtpm

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
)

type seed = vtpmtest.Seed

func loadSeed(tb testing.TB) seed {
	tb.Helper()
	s, err := vtpmtest.LoadSeed()
	require.NoError(tb, err)
	return s
}

func TestUpdateSeed(t *testing.T) {
	if os.Getenv("UPDATE_SEED") == "" {
		t.Skip("set UPDATE_SEED=1 to regenerate vtpmtest/seed.json")
	}
	n := newNode(t, boot)
	nonce := sha256.Sum256([]byte("seed nonce"))
	userData := sha256.Sum256([]byte("seed user data"))
	doc, err := n.issuer.Issue(context.Background(), userData[:], nonce[:])
	require.NoError(t, err)
	out, err := json.MarshalIndent(seed{Document: doc, Nonce: nonce[:], UserData: userData[:], Measurements: n.refs}, "", " ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(vtpmtest.SeedFile, out, 0o644))
}

func seedValidator(tb testing.TB, s seed) *Validator {
	tb.Helper()
	v, err := NewValidator(variant.QEMUVTPM, ValidatorConfig{Measurements: s.Measurements, AKRoots: vtpmtest.AKRoots(tb)})
	require.NoError(tb, err)
	return v
}

// The committed document still validates: a regression test for the whole validation path.
func TestSeedDocumentValidates(t *testing.T) {
	s := loadSeed(t)
	userData, err := seedValidator(t, s).Validate(context.Background(), s.Document, s.Nonce)
	require.NoError(t, err)
	assert.Equal(t, s.UserData, userData)
}

// FuzzValidate feeds arbitrary documents to the validator: it must never panic, and only a document that
// carries the seed's quote and signature may pass.
func FuzzValidate(f *testing.F) {
	s := loadSeed(f)
	v := seedValidator(f, s)
	f.Add([]byte(s.Document))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"akPublic":"AAA=","quote":{"quoted":"AAA=","signature":"AAA=","pcrs":{"0":"AAA="}}}`))
	var want Document
	require.NoError(f, json.Unmarshal(s.Document, &want))
	// The seed with its event log in the compressed form issuers send now.
	compressed := want
	var err error
	compressed.EventLogDeflate, err = compressEventLog(want.EventLog)
	require.NoError(f, err)
	compressed.EventLog = nil
	raw, err := json.Marshal(compressed)
	require.NoError(f, err)
	f.Add(raw)
	f.Fuzz(func(t *testing.T, raw []byte) {
		userData, err := v.Validate(context.Background(), raw, s.Nonce)
		if err != nil {
			return
		}
		var got Document
		require.NoError(t, json.Unmarshal(raw, &got))
		assert.Equal(t, want.Quote.Quoted, got.Quote.Quoted)
		assert.Equal(t, want.Quote.Signature, got.Quote.Signature)
		assert.Equal(t, s.UserData, userData)
	})
}

// FuzzEventLogDeflate inflates arbitrary compressed event logs: never a panic, never more than the bound.
func FuzzEventLogDeflate(f *testing.F) {
	good, err := compressEventLog([]byte("an event log"))
	require.NoError(f, err)
	bomb, err := compressEventLog(make([]byte, MaxEventLogSize+1))
	require.NoError(f, err)
	f.Add(good)
	f.Add(bomb)
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, z []byte) {
		d := Document{EventLogDeflate: z}
		log, err := d.eventLog()
		if err == nil {
			assert.LessOrEqual(t, len(log), MaxEventLogSize)
		}
	})
}

func BenchmarkValidate(b *testing.B) {
	s := loadSeed(b)
	v := seedValidator(b, s)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Validate(context.Background(), s.Document, s.Nonce); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "validations/s")
}

func BenchmarkIssue(b *testing.B) {
	n := newNode(b, boot)
	nonce := sha256.Sum256([]byte("nonce"))
	for b.Loop() {
		if _, err := n.issuer.Issue(context.Background(), nil, nonce[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "documents/s")
}
