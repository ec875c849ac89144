package precompute

import (
	"crypto/sha256"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// benchUKI reads the UKI MEASUREMENTS_BENCH_UKI names (the node image's, for `make bench`), or else builds
// the cross-check UKI (with the real kernel if MEASUREMENTS_TEST_VMLINUZ names one), so that the benchmarks
// run on realistic sizes.
func benchUKI(b *testing.B) []byte {
	b.Helper()
	path := os.Getenv("MEASUREMENTS_BENCH_UKI")
	if path == "" {
		path = buildUKI(b, testInputs(b, false))
	}
	data, err := os.ReadFile(path)
	require.NoError(b, err)
	return data
}

// BenchmarkPrecompute measures parsing plus every hash of a boot, in bytes of UKI per second. Compare with
// BenchmarkSHA256 over the same bytes: the kernel is hashed three times (in the UKI's Authenticode hash, in
// its own, and as .linux for PCR 11), in parallel.
func BenchmarkPrecompute(b *testing.B) {
	data := benchUKI(b)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		u, err := ParseUKI(data)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Precompute(u, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA256 is one SHA-256 pass over the UKI: the speed of `sha256sum uki.efi` without the I/O.
func BenchmarkSHA256(b *testing.B) {
	data := benchUKI(b)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		sha256.Sum256(data)
	}
}
