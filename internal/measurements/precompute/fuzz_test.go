package precompute

import (
	"testing"
)

// FuzzParseUKI checks that no input makes the parser or the hashing panic, and that whatever parses
// yields consistent sections and can be precomputed (or rejected with an error).
func FuzzParseUKI(f *testing.F) {
	f.Add(testPE(f, testUKISections(f), testPEOpts{}))
	f.Add(testPE(f, testUKISections(f), testPEOpts{trailer: []byte("x"), cert: make([]byte, 16)}))
	f.Add(testKernel(f))
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = AuthenticodeSHA256(data)
		u, err := ParseUKI(data)
		if err != nil {
			return
		}
		for _, s := range u.Sections {
			if uint64(s.PointerToRawData)+uint64(len(s.Raw)) > uint64(len(data)) {
				t.Fatalf("section %q refers beyond the input", s.Name)
			}
		}
		if u.Linux == nil {
			t.Fatal("parsed UKI without .linux")
		}
		_, _ = Precompute(u, Options{})
	})
}
