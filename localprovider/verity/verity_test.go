package verity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memDev is an in-memory device that grows on write.
type memDev struct{ b []byte }

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// refTree is an independent, naive implementation of the format: it returns the hash device (without
// superblock) and the root hash.
func refTree(data []byte, dbs, hbs int, salt []byte) (tree, root []byte) {
	digest := func(b []byte) []byte {
		h := sha256.New()
		h.Write(salt)
		h.Write(b)
		return h.Sum(nil)
	}
	n := len(data) / dbs
	if n == 1 {
		return nil, digest(data[:dbs])
	}
	var children [][]byte
	for i := range n {
		children = append(children, digest(data[i*dbs:(i+1)*dbs]))
	}
	per := hbs / 32
	var levels [][]byte // bottom up
	for {
		var level []byte
		var next [][]byte
		for i := 0; i < len(children); i += per {
			block := make([]byte, hbs)
			for j := i; j < len(children) && j < i+per; j++ {
				copy(block[(j-i)*32:], children[j])
			}
			level = append(level, block...)
			next = append(next, digest(block))
		}
		levels = append(levels, level)
		if len(next) == 1 {
			root = next[0]
			break
		}
		children = next
	}
	for i := len(levels) - 1; i >= 0; i-- { // top level first
		tree = append(tree, levels[i]...)
	}
	return tree, root
}

type treeCase struct {
	blocks   int
	dbs, hbs uint32
	salt     []byte
	sb       bool
	offset   int64
}

func (c treeCase) String() string {
	return fmt.Sprintf("blocks=%d/dbs=%d/hbs=%d/salt=%d/sb=%v/off=%d", c.blocks, c.dbs, c.hbs, len(c.salt), c.sb, c.offset)
}

func treeCases() []treeCase {
	salt32 := randBytes(7, 32)
	var cases []treeCase
	for _, blocks := range []int{1, 2, 16, 17, 256, 257, 300} {
		cases = append(cases,
			treeCase{blocks: blocks, dbs: 512, hbs: 512, salt: salt32, sb: true},
			treeCase{blocks: blocks, dbs: 4096, hbs: 512, salt: nil, sb: false},
		)
	}
	cases = append(cases,
		treeCase{blocks: 129, dbs: 4096, hbs: 4096, salt: salt32, sb: true},
		treeCase{blocks: 40, dbs: 1024, hbs: 2048, salt: randBytes(8, 256), sb: true, offset: 1024},
		treeCase{blocks: 40, dbs: 512, hbs: 1024, salt: randBytes(9, 1), sb: false, offset: 3072},
		treeCase{blocks: 3, dbs: 65536, hbs: 65536, salt: salt32, sb: true},
	)
	return cases
}

func build(t *testing.T, c treeCase, data []byte) (*Params, []byte, []byte) {
	t.Helper()
	dev := &memDev{}
	p, root, err := Build(context.Background(), bytes.NewReader(data), int64(len(data)), dev,
		Params{DataBlockSize: c.dbs, HashBlockSize: c.hbs, Salt: c.salt, Superblock: c.sb, HashOffset: c.offset, UUID: [16]byte{1, 2, 3}})
	require.NoError(t, err)
	return p, root, dev.b
}

func verify(data, hash []byte, p *Params, root []byte) error {
	if p.Superblock && p.HashOffset == 0 {
		_, err := Verify(context.Background(), bytes.NewReader(data), int64(len(data)), bytes.NewReader(hash), root)
		return err
	}
	return VerifyParams(context.Background(), bytes.NewReader(data), int64(len(data)), bytes.NewReader(hash), p, root)
}

func TestBuildMatchesReference(t *testing.T) {
	for i, c := range treeCases() {
		t.Run(c.String(), func(t *testing.T) {
			data := randBytes(uint64(i), c.blocks*int(c.dbs))
			p, root, hash := build(t, c, data)
			wantTree, wantRoot := refTree(data, int(c.dbs), int(c.hbs), c.salt)
			assert.Equal(t, hex.EncodeToString(wantRoot), hex.EncodeToString(root))
			assert.Equal(t, uint64(c.blocks), p.DataBlocks)
			size, err := p.HashDeviceSize()
			require.NoError(t, err)
			require.Equal(t, int(size), len(hash))
			require.True(t, bytes.Equal(wantTree, hash[p.TreeOffset():]), "tree layout")
			if c.sb {
				got, err := ParseSuperblock(hash[c.offset:])
				require.NoError(t, err)
				got.HashOffset = c.offset
				assert.Equal(t, p, got)
				assert.Equal(t, make([]byte, p.TreeOffset()-c.offset-SuperblockSize), hash[c.offset+SuperblockSize:p.TreeOffset()], "gap is zero")
			} else {
				assert.Equal(t, int64(c.offset), p.TreeOffset())
			}
			require.NoError(t, verify(data, hash, p, root))
		})
	}
}

// TestTamper flips bytes of the data and of every hash block and checks the error names the right block.
func TestTamper(t *testing.T) {
	for i, c := range treeCases() {
		t.Run(c.String(), func(t *testing.T) {
			data := randBytes(uint64(i), c.blocks*int(c.dbs))
			p, root, hash := build(t, c, data)
			g, err := p.geometry()
			require.NoError(t, err)

			for _, k := range []int{0, c.blocks / 2, c.blocks - 1} {
				d := bytes.Clone(data)
				d[k*int(c.dbs)+rand.IntN(int(c.dbs))] ^= 0x40
				err := verify(d, hash, p, root)
				if g.levels == 0 {
					require.ErrorIs(t, err, ErrRootHashMismatch)
					continue
				}
				var bm *BlockMismatchError
				require.ErrorAs(t, err, &bm, "data block %d", k)
				// Offset is the first byte that differs, which is within the block's digest but not
				// necessarily its first byte: a recomputed digest shares a leading byte with the stored one
				// 1 time in 256.
				digestAt := p.TreeOffset() + int64(g.start[0])*int64(c.hbs) + int64(k)*32
				assert.GreaterOrEqual(t, bm.Offset, digestAt)
				assert.Less(t, bm.Offset, digestAt+32)
				bm.Offset = digestAt
				assert.Equal(t, BlockMismatchError{Level: 0, Index: uint64(k), Offset: digestAt}, *bm)
				assert.Contains(t, err.Error(), fmt.Sprintf("data block %d", k))
			}

			// Every hash block: one byte in a digest and one in the padding (if any).
			for level := range g.levels {
				children := uint64(c.blocks)
				if level > 0 {
					children = g.blocks[level-1]
				}
				for b := range g.blocks[level] {
					entries := min(uint64(g.perBlock), children-b*uint64(g.perBlock))
					blockOff := p.TreeOffset() + int64(g.start[level]+b)*int64(c.hbs)
					e := rand.Uint64N(entries)
					h := bytes.Clone(hash)
					h[blockOff+int64(e)*32+5] ^= 1
					var bm *BlockMismatchError
					require.ErrorAs(t, verify(data, h, p, root), &bm)
					assert.Equal(t, BlockMismatchError{Level: level, Index: b*uint64(g.perBlock) + e, Offset: blockOff + int64(e)*32 + 5}, *bm)
					if entries < uint64(g.perBlock) {
						h := bytes.Clone(hash)
						off := blockOff + int64(c.hbs) - 1
						h[off] = 0xff
						require.ErrorAs(t, verify(data, h, p, root), &bm)
						assert.Equal(t, BlockMismatchError{Level: level, Index: b, Padding: true, Offset: off}, *bm)
						assert.Contains(t, bm.Error(), "padding")
					}
				}
			}

			bad := bytes.Clone(root)
			bad[31] ^= 1
			require.ErrorIs(t, verify(data, hash, p, bad), ErrRootHashMismatch)

			// Truncations.
			if g.levels > 0 {
				require.ErrorIs(t, verify(data, hash[:len(hash)-1], p, root), ErrHashTooShort)
			}
			require.ErrorIs(t, verify(data[:len(data)-1], hash, p, root), ErrDataTooShort)
			// Trailing data beyond the covered blocks is accepted (and not protected).
			require.NoError(t, verify(append(bytes.Clone(data), 1, 2, 3), hash, p, root))
		})
	}
}

func TestSuperblockTamper(t *testing.T) {
	c := treeCase{blocks: 300, dbs: 512, hbs: 512, salt: randBytes(1, 32), sb: true}
	data := randBytes(2, c.blocks*int(c.dbs))
	p, root, hash := build(t, c, data)
	_ = p

	h := bytes.Clone(hash)
	h[88] ^= 1 // salt: every digest changes
	var bm *BlockMismatchError
	require.ErrorAs(t, verify(data, h, p, root), &bm)
	assert.Equal(t, 0, bm.Level)
	assert.Equal(t, uint64(0), bm.Index)

	h = bytes.Clone(hash)
	binary.LittleEndian.PutUint64(h[72:], uint64(c.blocks+1))
	require.ErrorIs(t, verify(data, h, p, root), ErrDataTooShort)

	h = bytes.Clone(hash)
	h[0] = 'V'
	require.ErrorIs(t, verify(data, h, p, root), ErrNoSuperblock)

	_, err := Verify(context.Background(), bytes.NewReader(data), int64(len(data)), bytes.NewReader(hash[:100]), root)
	require.ErrorIs(t, err, ErrNoSuperblock)
}

func TestVerifyCancel(t *testing.T) {
	c := treeCase{blocks: 3000, dbs: 512, hbs: 512, sb: true}
	data := randBytes(3, c.blocks*int(c.dbs))
	_, root, hash := build(t, c, data)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Verify(ctx, bytes.NewReader(data), int64(len(data)), bytes.NewReader(hash), root)
	require.ErrorIs(t, err, context.Canceled)
}

// errReader fails every read past an offset.
type errReader struct {
	r     io.ReaderAt
	after int64
}

var errIO = errors.New("injected I/O error")

func (e errReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > e.after {
		return 0, errIO
	}
	return e.r.ReadAt(p, off)
}

func TestIOErrors(t *testing.T) {
	c := treeCase{blocks: 300, dbs: 512, hbs: 512, sb: true}
	data := randBytes(4, c.blocks*int(c.dbs))
	_, root, hash := build(t, c, data)
	ctx := context.Background()
	_, err := Verify(ctx, errReader{bytes.NewReader(data), 100 * 512}, int64(len(data)), bytes.NewReader(hash), root)
	require.ErrorIs(t, err, errIO)
	_, err = Verify(ctx, bytes.NewReader(data), int64(len(data)), errReader{bytes.NewReader(hash), 4096}, root)
	require.ErrorIs(t, err, errIO)
	_, err = Verify(ctx, bytes.NewReader(data), int64(len(data)), errReader{bytes.NewReader(hash), 0}, root)
	require.ErrorIs(t, err, errIO)
}

func TestVerifyArguments(t *testing.T) {
	c := treeCase{blocks: 20, dbs: 512, hbs: 512, sb: true}
	data := randBytes(5, c.blocks*int(c.dbs))
	p, root, hash := build(t, c, data)
	require.ErrorContains(t, verify(data, hash, p, root[:31]), "root hash is 31 bytes")
	var ip *InvalidParamsError
	require.ErrorAs(t, VerifyParams(context.Background(), bytes.NewReader(data), int64(len(data)), bytes.NewReader(hash), &Params{Algorithm: "sha1"}, root), &ip)
	assert.Equal(t, "hash algorithm", ip.Field)
	// No data at all: zero data blocks.
	require.ErrorAs(t, VerifyParams(context.Background(), bytes.NewReader(nil), 0, bytes.NewReader(hash), &Params{}, root), &ip)
	_, _, err := Build(context.Background(), bytes.NewReader(nil), 100, &memDev{}, Params{})
	require.ErrorAs(t, err, &ip)
}

func validSuperblock(t testing.TB) []byte {
	p := Params{Algorithm: AlgorithmSHA256, DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: 1000, Salt: randBytes(1, 32), Superblock: true}
	b, err := p.MarshalSuperblock()
	require.NoError(t, err)
	return b
}

func TestParseSuperblock(t *testing.T) {
	le := binary.LittleEndian
	p, err := ParseSuperblock(validSuperblock(t))
	require.NoError(t, err)
	assert.Equal(t, uint64(1000), p.DataBlocks)
	assert.Equal(t, int64(4096), p.TreeOffset())

	for name, tc := range map[string]struct {
		mut   func(b []byte)
		field string
		is    error
	}{
		"magic":               {func(b []byte) { b[6] = 1 }, "", ErrNoSuperblock},
		"version":             {func(b []byte) { le.PutUint32(b[8:], 2) }, "superblock version", nil},
		"hash type 0":         {func(b []byte) { le.PutUint32(b[12:], 0) }, "hash type", nil},
		"algorithm":           {func(b []byte) { copy(b[32:], "sha512\x00") }, "hash algorithm", nil},
		"algorithm case":      {func(b []byte) { copy(b[32:], "SHA256\x00") }, "hash algorithm", nil},
		"algorithm no NUL":    {func(b []byte) { copy(b[32:64], bytes.Repeat([]byte("a"), 32)) }, "hash algorithm", nil},
		"data block size 0":   {func(b []byte) { le.PutUint32(b[64:], 0) }, "data block size", nil},
		"data block size odd": {func(b []byte) { le.PutUint32(b[64:], 4097) }, "data block size", nil},
		"data block 256":      {func(b []byte) { le.PutUint32(b[64:], 256) }, "data block size", nil},
		"data block 128K":     {func(b []byte) { le.PutUint32(b[64:], 131072) }, "data block size", nil},
		"hash block size":     {func(b []byte) { le.PutUint32(b[68:], 3000) }, "hash block size", nil},
		"hash block 1M":       {func(b []byte) { le.PutUint32(b[68:], 1<<20) }, "hash block size", nil},
		"salt size":           {func(b []byte) { le.PutUint16(b[80:], 257) }, "salt size", nil},
		"zero data blocks":    {func(b []byte) { le.PutUint64(b[72:], 0) }, "data blocks", nil},
		"huge data blocks":    {func(b []byte) { le.PutUint64(b[72:], 1<<62) }, "data blocks", nil},
		"max data blocks":     {func(b []byte) { le.PutUint64(b[72:], ^uint64(0)) }, "data blocks", nil},
	} {
		t.Run(name, func(t *testing.T) {
			b := validSuperblock(t)
			tc.mut(b)
			_, err := ParseSuperblock(b)
			require.Error(t, err)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
				return
			}
			var ip *InvalidParamsError
			require.ErrorAs(t, err, &ip)
			assert.Equal(t, tc.field, ip.Field)
		})
	}
	_, err = ParseSuperblock(validSuperblock(t)[:511])
	require.ErrorIs(t, err, ErrNoSuperblock)

	// Salt of 256 bytes and largest block sizes are fine.
	b := validSuperblock(t)
	le.PutUint16(b[80:], 256)
	le.PutUint32(b[64:], 65536)
	le.PutUint32(b[68:], 512)
	p, err = ParseSuperblock(b)
	require.NoError(t, err)
	assert.Len(t, p.Salt, 256)
}

func TestRepartDerivations(t *testing.T) {
	var seed [16]byte
	for i := range seed {
		seed[i] = byte(i)
	}
	// Computed independently with Python's hmac module.
	assert.Equal(t, "8f0755d02e2a17ba89fcc9b389efe23fd29b62ced51e6a6b4d12ac3e5fcd0ee3", hex.EncodeToString(RepartSalt(seed)))
	u := RepartUUID(seed)
	assert.Equal(t, "74e9ebc0304a4b9897fc0cee5cd2d9f3", hex.EncodeToString(u[:]))
}

func TestRootHashFromCmdline(t *testing.T) {
	h := "b4994d4d141127e4f0368e4aa99d989a0ea045cf52bdb93e12b79bafb9e31767"
	got, err := RootHashFromCmdline("console=ttyS0 roothash=" + strings0(64) + " rw roothash=" + h + " quiet")
	require.NoError(t, err)
	assert.Equal(t, h, hex.EncodeToString(got))
	_, err = RootHashFromCmdline("console=ttyS0 usrhash=" + h)
	require.ErrorContains(t, err, "no roothash=")
	_, err = RootHashFromCmdline("roothash=abc")
	require.Error(t, err)
	_, err = RootHashFromCmdline("roothash=" + h[:62])
	require.ErrorContains(t, err, "want 32")
}

func strings0(n int) string { return string(bytes.Repeat([]byte("0"), n)) }

// TestGeometryNotBound documents why callers should check the returned parameters: the level-0 hash
// blocks of a tree, presented as data under a superblock claiming that many data blocks, verify against
// the same root hash.
func TestGeometryNotBound(t *testing.T) {
	c := treeCase{blocks: 300, dbs: 512, hbs: 512, salt: randBytes(6, 32), sb: true}
	data := randBytes(6, c.blocks*int(c.dbs))
	p, root, hash := build(t, c, data)
	g, err := p.geometry()
	require.NoError(t, err)
	require.Equal(t, 3, g.levels)

	level0 := hash[p.TreeOffset()+int64(g.start[0])*512:]
	upper := hash[p.TreeOffset() : p.TreeOffset()+int64(g.start[0])*512]
	forged := *p
	forged.DataBlocks = g.blocks[0]
	sb, err := forged.MarshalSuperblock()
	require.NoError(t, err)
	forgedHash := append(sb, upper...)

	got, err := Verify(context.Background(), bytes.NewReader(level0), int64(len(level0)), bytes.NewReader(forgedHash), root)
	require.NoError(t, err)
	assert.Equal(t, g.blocks[0], got.DataBlocks)
	assert.NotEqual(t, p.DataSize(), got.DataSize(), "the data size tells them apart")
}
