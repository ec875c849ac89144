package eventlog

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzParse checks that no input makes the parser or the replay panic, and that a successful parse is
// internally consistent.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.bin"))
	require.NoError(f, err)
	require.NotEmpty(f, files)
	for _, file := range files {
		raw, err := os.ReadFile(file)
		require.NoError(f, err)
		f.Add(raw)
		// Truncations inside the header, the first event and near the end.
		for _, n := range []int{1, 31, 40, 70, 100, len(raw) / 2, len(raw) - 1} {
			if n < len(raw) {
				f.Add(raw[:n])
			}
		}
	}
	b := NewBuilder()
	b.Add(0, EvNoAction, [32]byte{}, locality(3))
	b.Add(0, EvPostCode, [32]byte{1}, []byte("POST CODE"))
	f.Add(b.Bytes())

	f.Fuzz(func(t *testing.T, raw []byte) {
		log, err := Parse(raw)
		if err != nil {
			if log != nil {
				t.Fatalf("Parse returned a log and an error: %v", err)
			}
			return
		}
		if len(log.Events) == 0 || len(log.Events) > MaxEvents {
			t.Fatalf("Parse returned %d events", len(log.Events))
		}
		for i, e := range log.Events {
			if e.Index != i {
				t.Fatalf("event %d has index %d", i, e.Index)
			}
			for alg, d := range e.Digests {
				if i > 0 && len(d) != log.Algorithms[alg] {
					t.Fatalf("event %d: %s digest is %d bytes, announced %d", i, alg, len(d), log.Algorithms[alg])
				}
			}
			_ = e.Description()
		}
		pcrs, err := log.Replay(AlgSHA256)
		if err == nil {
			for pcr, v := range pcrs {
				if len(v) != 32 {
					t.Fatalf("PCR %d is %d bytes", pcr, len(v))
				}
			}
			_ = log.EventsFor(0)
		}
	})
}

func BenchmarkParseReplay(b *testing.B) {
	// gdc-host.bin is the largest log in the corpus (50 KB, 159 events).
	raw, err := os.ReadFile(filepath.Join("testdata", "gdc-host.bin"))
	require.NoError(b, err)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		log, err := Parse(raw)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := log.Replay(AlgSHA256); err != nil {
			b.Fatal(err)
		}
	}
}
