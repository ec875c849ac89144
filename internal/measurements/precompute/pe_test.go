package precompute

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Layout of the PE32+ files testPE builds: fixed offsets, so that tests can state the Authenticode ranges
// as plain numbers instead of re-deriving them the way the code under test does.
const (
	tOptOff      = 0x58 // 0x40 DOS header + "PE\0\0" + 20-byte COFF header
	tOptSize     = 240  // PE32+ optional header with 16 data directories
	tCheckSumOff = tOptOff + 64
	tCertDirOff  = tOptOff + 112 + 4*8
	tFileAlign   = 0x200
)

type testSection struct {
	name    string
	content []byte
	// virtualSize overrides the default VirtualSize of len(content).
	virtualSize *uint32
}

type testPEOpts struct {
	// cert, if set, is appended as the attribute certificate table and named by the Certificate Table entry.
	cert []byte
	// trailer is appended after the sections (before any cert), like data objcopy does not know about.
	trailer []byte
}

func alignUp(n, a int) int { return (n + a - 1) / a * a }

// testPE builds a minimal but well-formed PE32+ image: DOS header, PE header, one section header per
// section, each section's data padded to the file alignment (like objcopy does), then trailer and cert.
func testPE(t testing.TB, sections []testSection, opts testPEOpts) []byte {
	t.Helper()
	hdrEnd := tOptOff + tOptSize + len(sections)*sectionHeaderSize
	sizeOfHeaders := alignUp(hdrEnd, tFileAlign)
	buf := make([]byte, sizeOfHeaders)
	copy(buf, "MZ")
	binary.LittleEndian.PutUint32(buf[peOffsetField:], 0x40)
	copy(buf[0x40:], peSignature)
	coff := buf[0x44:]
	binary.LittleEndian.PutUint16(coff[0:], 0x8664)
	binary.LittleEndian.PutUint16(coff[2:], uint16(len(sections)))
	binary.LittleEndian.PutUint16(coff[16:], tOptSize)
	binary.LittleEndian.PutUint16(coff[18:], 0x22)
	opt := buf[tOptOff:]
	binary.LittleEndian.PutUint16(opt[0:], optMagicPE32Plus)
	binary.LittleEndian.PutUint32(opt[32:], 0x1000) // SectionAlignment
	binary.LittleEndian.PutUint32(opt[36:], tFileAlign)
	binary.LittleEndian.PutUint32(opt[60:], uint32(sizeOfHeaders))
	binary.LittleEndian.PutUint32(opt[64:], 0x12345678) // CheckSum: must not influence the hash
	binary.LittleEndian.PutUint32(opt[108:], 16)

	va := uint32(0x1000)
	for i, s := range sections {
		raw := alignUp(len(s.content), tFileAlign)
		h := buf[tOptOff+tOptSize+i*sectionHeaderSize:]
		copy(h[:8], s.name)
		vs := uint32(len(s.content))
		if s.virtualSize != nil {
			vs = *s.virtualSize
		}
		binary.LittleEndian.PutUint32(h[8:], vs)
		binary.LittleEndian.PutUint32(h[12:], va)
		binary.LittleEndian.PutUint32(h[16:], uint32(raw))
		binary.LittleEndian.PutUint32(h[20:], uint32(len(buf)))
		va += uint32(alignUp(max(raw, 1), 0x1000))
		// Non-zero padding, so that a parser returning SizeOfRawData bytes instead of VirtualSize fails.
		buf = append(buf, s.content...)
		buf = append(buf, bytes.Repeat([]byte{0xCC}, raw-len(s.content))...)
	}
	buf = append(buf, opts.trailer...)
	if opts.cert != nil {
		binary.LittleEndian.PutUint32(buf[tCertDirOff:], uint32(len(buf)))
		binary.LittleEndian.PutUint32(buf[tCertDirOff+4:], uint32(len(opts.cert)))
		buf = append(buf, opts.cert...)
	}
	return buf
}

func u32p(v uint32) *uint32 { return &v }

// testKernel is a tiny stand-in for the kernel's EFI stub: any PE will do for parsing and hashing.
func testKernel(t testing.TB) []byte {
	return testPE(t, []testSection{{name: ".text", content: []byte("kernel code")}}, testPEOpts{})
}

func testUKISections(t testing.TB) []testSection {
	return []testSection{
		{name: ".text", content: []byte("stub code")},
		{name: ".sbat", content: []byte("sbat,1,SBAT Version,sbat,1\n")},
		{name: ".osrel", content: []byte("ID=test\nVERSION_ID=1\n")},
		{name: ".cmdline", content: []byte("console=ttyS0 root=/dev/vda\n")},
		{name: ".linux", content: testKernel(t)},
		{name: ".initrd", content: bytes.Repeat([]byte("initrd"), 1000)},
	}
}

func TestParseUKI(t *testing.T) {
	kernel := testKernel(t)
	uki := testPE(t, testUKISections(t), testPEOpts{})
	u, err := ParseUKI(uki)
	require.NoError(t, err)
	assert.Equal(t, kernel, u.Linux)
	assert.Equal(t, []byte("ID=test\nVERSION_ID=1\n"), u.OSRel)
	assert.Equal(t, []byte("console=ttyS0 root=/dev/vda\n"), u.Cmdline)
	assert.Equal(t, bytes.Repeat([]byte("initrd"), 1000), u.Initrd)
	sbat, ok := u.Content(SectionSBAT)
	assert.True(t, ok)
	assert.Equal(t, []byte("sbat,1,SBAT Version,sbat,1\n"), sbat)
	_, ok = u.Content(SectionSplash)
	assert.False(t, ok)
	require.Len(t, u.Sections, 6)
	assert.Equal(t, ".cmdline", u.Sections[3].Name, "an 8-character name has no NUL and must not be cut")
	assert.Equal(t, uint32(tFileAlign), u.Sections[3].SizeOfRawData)
	assert.Len(t, u.Sections[3].Raw, tFileAlign, "Raw keeps the padding, Content drops it")

	// A VirtualSize below the data's length is honoured: the stub measures VirtualSize bytes.
	secs := testUKISections(t)
	secs[2].virtualSize = u32p(3)
	u, err = ParseUKI(testPE(t, secs, testPEOpts{}))
	require.NoError(t, err)
	assert.Equal(t, []byte("ID="), u.OSRel)
}

func TestParseUKIErrors(t *testing.T) {
	good := testPE(t, testUKISections(t), testPEOpts{})
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	put32 := func(off int, v uint32) []byte {
		return mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b })
	}
	put16 := func(off int, v uint16) []byte {
		return mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[off:], v); return b })
	}
	sec := func(i int) int { return tOptOff + tOptSize + i*sectionHeaderSize }
	withSections := func(f func([]testSection) []testSection) []byte {
		return testPE(t, f(testUKISections(t)), testPEOpts{})
	}

	testCases := map[string]struct {
		data    []byte
		wantErr error
	}{
		"empty":                    {data: nil, wantErr: ErrMalformedPE},
		"short":                    {data: good[:0x3f], wantErr: ErrMalformedPE},
		"no MZ":                    {data: mutate(func(b []byte) []byte { b[0] = 'X'; return b }), wantErr: ErrMalformedPE},
		"PE offset beyond end":     {data: put32(peOffsetField, 0xfffffff0), wantErr: ErrMalformedPE},
		"PE offset max":            {data: put32(peOffsetField, 0xffffffff), wantErr: ErrMalformedPE},
		"no PE signature":          {data: put32(0x40, 0), wantErr: ErrMalformedPE},
		"unknown magic":            {data: put16(tOptOff, 0x107), wantErr: ErrMalformedPE},
		"optional header too big":  {data: put16(0x44+16, 0xffff), wantErr: ErrMalformedPE},
		"optional header too tiny": {data: put16(0x44+16, 8), wantErr: ErrMalformedPE},
		"too many sections":        {data: put16(0x44+2, 0xffff), wantErr: ErrMalformedPE},
		"headers beyond end":       {data: put32(tOptOff+60, 0x7fffffff), wantErr: ErrMalformedPE},
		"headers overlap sections": {data: put32(tOptOff+60, 0x100), wantErr: ErrMalformedPE},
		"cert entry does not fit":  {data: put16(0x44+16, 148), wantErr: ErrMalformedPE},
		"section beyond end":       {data: put32(sec(4)+20, 0xfffff000), wantErr: ErrMalformedPE},
		"section size overflows":   {data: put32(sec(4)+16, 0xffffffff), wantErr: ErrMalformedPE},
		"VirtualSize > raw": {
			data:    put32(sec(2)+8, 0x10000),
			wantErr: ErrMalformedPE,
		},
		"truncated": {data: good[:len(good)-1], wantErr: ErrMalformedPE},
		"no .linux": {
			data:    withSections(func(s []testSection) []testSection { return append(s[:4], s[5:]...) }),
			wantErr: ErrNoKernel,
		},
		".linux not a PE": {
			data: withSections(func(s []testSection) []testSection {
				s[4].content = []byte("bzImage without EFI stub")
				return s
			}),
			wantErr: ErrMalformedPE,
		},
		"duplicate .cmdline": {
			data: withSections(func(s []testSection) []testSection {
				return append(s, testSection{name: ".cmdline", content: []byte("evil")})
			}),
			wantErr: ErrMalformedPE,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseUKI(tc.data)
			assert.ErrorIs(t, err, tc.wantErr)
		})
	}
}

func TestAuthenticodeSHA256(t *testing.T) {
	secs := []testSection{
		{name: ".text", content: []byte("code")},
		{name: ".data", content: bytes.Repeat([]byte{1}, 700)},
	}
	// Ranges of the layout testPE produces: headers without CheckSum (4 bytes at tCheckSumOff) and the
	// Certificate Table entry (8 bytes at tCertDirOff) up to SizeOfHeaders 0x200, then two sections of 0x200
	// and 0x400 bytes.
	want := func(file []byte, trailerEnd int) []byte {
		h := sha256.New()
		h.Write(file[:tCheckSumOff])
		h.Write(file[tCheckSumOff+4 : tCertDirOff])
		h.Write(file[tCertDirOff+8 : 0x200])
		h.Write(file[0x200:0x400])
		h.Write(file[0x400:0x800])
		h.Write(file[0x800:trailerEnd])
		return h.Sum(nil)
	}
	testCases := map[string]struct {
		opts       testPEOpts
		trailerEnd func(file []byte) int
	}{
		"plain": {trailerEnd: func([]byte) int { return 0x800 }},
		"trailing data": {
			opts:       testPEOpts{trailer: []byte("appended")},
			trailerEnd: func([]byte) int { return 0x808 },
		},
		"signed": {
			opts:       testPEOpts{cert: bytes.Repeat([]byte{7}, 16)},
			trailerEnd: func([]byte) int { return 0x800 },
		},
		"trailing data and signature": {
			opts:       testPEOpts{trailer: []byte("appended"), cert: bytes.Repeat([]byte{7}, 16)},
			trailerEnd: func(f []byte) int { return len(f) - 16 },
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			file := testPE(t, secs, tc.opts)
			got, err := AuthenticodeSHA256(file)
			require.NoError(t, err)
			assert.Equal(t, want(file, tc.trailerEnd(file)), got)
		})
	}

	t.Run("excluded fields do not matter, others do", func(t *testing.T) {
		file := testPE(t, secs, testPEOpts{})
		base, err := AuthenticodeSHA256(file)
		require.NoError(t, err)
		for _, off := range []int{tCheckSumOff, tCheckSumOff + 3, tCertDirOff, tCertDirOff + 3} {
			f := bytes.Clone(file)
			f[off] ^= 0x55
			if off >= tCertDirOff {
				// A certificate table size that no longer fits is an error, not a different hash.
				f[tCertDirOff+4] = 0
			}
			got, err := AuthenticodeSHA256(f)
			require.NoError(t, err)
			assert.Equal(t, base, got, "offset %#x", off)
		}
		for _, off := range []int{2, tCheckSumOff - 5, tCheckSumOff + 4, tCertDirOff - 1, tCertDirOff + 8, 0x200, 0x7ff} {
			f := bytes.Clone(file)
			f[off] ^= 0x55
			got, err := AuthenticodeSHA256(f)
			require.NoError(t, err)
			assert.NotEqual(t, base, got, "offset %#x", off)
		}
	})

	t.Run("certificate table larger than the file", func(t *testing.T) {
		file := testPE(t, secs, testPEOpts{trailer: []byte("x")})
		binary.LittleEndian.PutUint32(file[tCertDirOff+4:], 100)
		_, err := AuthenticodeSHA256(file)
		assert.ErrorIs(t, err, ErrMalformedPE)
	})

	t.Run("malformed", func(t *testing.T) {
		_, err := AuthenticodeSHA256([]byte("MZ"))
		assert.ErrorIs(t, err, ErrMalformedPE)
	})
}
