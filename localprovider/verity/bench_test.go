package verity

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchSize is the data size of the benchmarks: a 256 MiB root file system.
const benchSize = 256 << 20

// benchData returns a data file of benchSize bytes: VERITY_BENCH_DATA if set (bench/verity.sh passes
// the file it also hands to sha256sum), else a random file in a temporary directory.
func benchData(b *testing.B) (*os.File, int64) {
	b.Helper()
	path := os.Getenv("VERITY_BENCH_DATA")
	if path == "" {
		path = filepath.Join(b.TempDir(), "data")
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		r := rand.NewChaCha8([32]byte{1})
		if _, err := io.CopyN(f, r, benchSize); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	return f, st.Size()
}

// BenchmarkVerify measures Verify (superblock, 4 KiB blocks, 32-byte salt: systemd-repart's format) of
// a file, in bytes of data per second, with the data in the page cache.
func BenchmarkVerify(b *testing.B) {
	data, size := benchData(b)
	hashPath := filepath.Join(b.TempDir(), "hash")
	hf, err := os.Create(hashPath)
	if err != nil {
		b.Fatal(err)
	}
	defer hf.Close()
	_, root, err := Build(context.Background(), data, size, hf, Params{Salt: RepartSalt([16]byte{1}), Superblock: true})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(context.Background(), data, size, hf, root); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA256File is one streaming SHA-256 pass over the same file on one core: Go's equivalent of
// `sha256sum data`.
func BenchmarkSHA256File(b *testing.B) {
	data, size := benchData(b)
	b.SetBytes(size)
	buf := make([]byte, 1<<20)
	for b.Loop() {
		h := sha256.New()
		if _, err := io.CopyBuffer(h, io.NewSectionReader(data, 0, size), buf); err != nil {
			b.Fatal(err)
		}
		h.Sum(nil)
	}
}
