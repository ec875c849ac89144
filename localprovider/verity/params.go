package verity

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/bits"
)

const (
	// SuperblockSize is the size of the on-disk superblock.
	SuperblockSize = 512
	// MaxSaltSize is the largest salt the superblock can hold.
	MaxSaltSize = 256
	// DefaultBlockSize is veritysetup's and systemd-repart's (for image files) data and hash block size.
	DefaultBlockSize = 4096
	// MinBlockSize and MaxBlockSize bound the block sizes this package accepts (powers of two).
	MinBlockSize = 512
	MaxBlockSize = 65536
	// AlgorithmSHA256 is the only hash algorithm supported.
	AlgorithmSHA256 = "sha256"
	// DigestSize is the size of a SHA-256 digest, and so of a root hash.
	DigestSize = 32

	// hashTypeNormal is dm-verity format 1 (salt prepended, digests padded to a power of two).
	hashTypeNormal = 1
	// maxLevels is dm-verity's limit (DM_VERITY_MAX_LEVELS).
	maxLevels = 63
)

var superblockMagic = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// Params describe a hash tree: what the superblock records, plus where the tree lies in the hash device.
type Params struct {
	// Algorithm is the hash algorithm; only "sha256" is supported. Empty means sha256 in Build.
	Algorithm string
	// DataBlockSize and HashBlockSize are powers of two between MinBlockSize and MaxBlockSize.
	DataBlockSize uint32
	HashBlockSize uint32
	// DataBlocks is the number of data blocks the tree covers (at least 1).
	DataBlocks uint64
	// Salt is prepended to every hashed block (at most MaxSaltSize bytes, may be empty).
	Salt []byte
	// UUID is the hash device's UUID, recorded in the superblock only.
	UUID [16]byte
	// Superblock says whether the hash device has a superblock at HashOffset; the tree then starts at
	// the first hash block boundary at or after HashOffset+SuperblockSize. Without a superblock the tree
	// starts at HashOffset.
	Superblock bool
	// HashOffset is the byte offset in the hash device of the superblock, or of the tree when there is
	// no superblock. It is 0 for systemd-repart's and veritysetup's default layouts. With a superblock it
	// must be a multiple of 512, without one a multiple of HashBlockSize.
	HashOffset int64
}

// InvalidParamsError reports a parameter (from a superblock or given explicitly) that this package
// refuses.
type InvalidParamsError struct {
	Field  string
	Reason string
}

func (e *InvalidParamsError) Error() string {
	return fmt.Sprintf("verity: invalid %s: %s", e.Field, e.Reason)
}

func invalid(field, format string, args ...any) error {
	return &InvalidParamsError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

func validBlockSize(field string, v uint32) error {
	if v < MinBlockSize || v > MaxBlockSize || v&(v-1) != 0 {
		return invalid(field, "%d is not a power of two between %d and %d", v, MinBlockSize, MaxBlockSize)
	}
	return nil
}

// Validate checks every parameter and that the tree's size and offsets fit in an int64.
func (p *Params) Validate() error {
	if p.Algorithm != AlgorithmSHA256 {
		return invalid("hash algorithm", "%q is not supported (only %s)", p.Algorithm, AlgorithmSHA256)
	}
	if err := validBlockSize("data block size", p.DataBlockSize); err != nil {
		return err
	}
	if err := validBlockSize("hash block size", p.HashBlockSize); err != nil {
		return err
	}
	if len(p.Salt) > MaxSaltSize {
		return invalid("salt size", "%d bytes exceeds %d", len(p.Salt), MaxSaltSize)
	}
	if p.DataBlocks == 0 {
		return invalid("data blocks", "zero")
	}
	if p.DataBlocks > math.MaxInt64/uint64(p.DataBlockSize) {
		return invalid("data blocks", "%d blocks of %d bytes overflow", p.DataBlocks, p.DataBlockSize)
	}
	if p.HashOffset < 0 {
		return invalid("hash offset", "negative (%d)", p.HashOffset)
	}
	if p.Superblock && p.HashOffset%SuperblockSize != 0 {
		return invalid("hash offset", "%d is not a multiple of %d", p.HashOffset, SuperblockSize)
	}
	if !p.Superblock && p.HashOffset%int64(p.HashBlockSize) != 0 {
		return invalid("hash offset", "%d is not a multiple of the hash block size %d", p.HashOffset, p.HashBlockSize)
	}
	if p.HashOffset > math.MaxInt64/2 {
		return invalid("hash offset", "%d is too large", p.HashOffset)
	}
	if _, err := p.geometry(); err != nil {
		return err
	}
	return nil
}

// DataSize is the number of bytes of the data device the tree covers (DataBlocks * DataBlockSize). Any
// data after it is not protected: expose only this many bytes (e.g. a loop device's size limit).
func (p *Params) DataSize() int64 {
	return int64(p.DataBlocks) * int64(p.DataBlockSize)
}

// TreeOffset is the byte offset of the first hash block in the hash device.
func (p *Params) TreeOffset() int64 {
	hbs := int64(p.HashBlockSize)
	if !p.Superblock {
		return p.HashOffset
	}
	return (p.HashOffset + SuperblockSize + hbs - 1) / hbs * hbs
}

// HashDeviceSize is the smallest hash device that holds the superblock (if any) and the whole tree.
func (p *Params) HashDeviceSize() (int64, error) {
	g, err := p.geometry()
	if err != nil {
		return 0, err
	}
	return p.TreeOffset() + int64(g.totalBlocks)*int64(p.HashBlockSize), nil
}

// geometry is the shape of the tree: per level (0 = digests of data blocks), the number of hash blocks
// and the index, counted in hash blocks from TreeOffset, of the level's first block.
type geometry struct {
	levels       int
	perBlock     int // digests per hash block
	digestStride int // bytes per digest slot (digest size rounded up to a power of two)
	blocks       []uint64
	start        []uint64
	totalBlocks  uint64
}

func (p *Params) geometry() (geometry, error) {
	var g geometry
	if p.DataBlocks == 0 || p.HashBlockSize < MinBlockSize || p.HashBlockSize&(p.HashBlockSize-1) != 0 {
		return g, invalid("parameters", "geometry needs data blocks and a valid hash block size")
	}
	g.digestStride = 1 << bits.Len(uint(DigestSize-1)) // 32 for SHA-256
	perBlockBits := bits.Len32(p.HashBlockSize/uint32(g.digestStride)) - 1
	g.perBlock = 1 << perBlockBits
	// libcryptsetup's hash_levels(): the number of levels is the number of shifts by perBlockBits
	// needed to reduce (data blocks - 1) to zero.
	for perBlockBits*g.levels < 64 && (p.DataBlocks-1)>>(perBlockBits*g.levels) != 0 {
		g.levels++
	}
	if g.levels > maxLevels {
		return g, invalid("data blocks", "%d blocks need %d levels (max %d)", p.DataBlocks, g.levels, maxLevels)
	}
	g.blocks = make([]uint64, g.levels)
	g.start = make([]uint64, g.levels)
	var pos uint64
	for i := g.levels - 1; i >= 0; i-- {
		g.start[i] = pos
		shift := uint(perBlockBits * (i + 1))
		n := uint64(1)
		if shift < 64 {
			n = ((p.DataBlocks - 1) >> shift) + 1 // ceil(data blocks / perBlock^(i+1))
		}
		g.blocks[i] = n
		pos += n
	}
	g.totalBlocks = pos
	// The tree's end in bytes must fit in an int64.
	hi, lo := bits.Mul64(pos, uint64(p.HashBlockSize))
	if hi != 0 || lo > math.MaxInt64/2 {
		return g, invalid("data blocks", "hash tree of %d blocks is too large", pos)
	}
	return g, nil
}

// ParseSuperblock decodes and validates a superblock (at least SuperblockSize bytes; more are ignored).
// A block without the "verity" signature gives ErrNoSuperblock. The result has Superblock set and
// HashOffset 0.
func ParseSuperblock(b []byte) (*Params, error) {
	if len(b) < SuperblockSize {
		return nil, fmt.Errorf("verity: superblock is %d bytes, want %d: %w", len(b), SuperblockSize, ErrNoSuperblock)
	}
	if !bytes.Equal(b[0:8], superblockMagic[:]) {
		return nil, ErrNoSuperblock
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != 1 {
		return nil, invalid("superblock version", "%d (want 1)", v)
	}
	if t := le.Uint32(b[12:]); t != hashTypeNormal {
		return nil, invalid("hash type", "%d (only format %d is supported)", t, hashTypeNormal)
	}
	alg := b[32:64]
	n := bytes.IndexByte(alg, 0)
	if n < 0 {
		return nil, invalid("hash algorithm", "name is not NUL-terminated")
	}
	p := &Params{
		Algorithm:     string(alg[:n]),
		DataBlockSize: le.Uint32(b[64:]),
		HashBlockSize: le.Uint32(b[68:]),
		DataBlocks:    le.Uint64(b[72:]),
		Superblock:    true,
	}
	copy(p.UUID[:], b[16:32])
	saltSize := int(le.Uint16(b[80:]))
	if saltSize > MaxSaltSize {
		return nil, invalid("salt size", "%d bytes exceeds %d", saltSize, MaxSaltSize)
	}
	p.Salt = bytes.Clone(b[88 : 88+saltSize])
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// MarshalSuperblock encodes p's superblock as libcryptsetup writes it (SuperblockSize bytes).
func (p *Params) MarshalSuperblock() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, SuperblockSize)
	le := binary.LittleEndian
	copy(b[0:8], superblockMagic[:])
	le.PutUint32(b[8:], 1)
	le.PutUint32(b[12:], hashTypeNormal)
	copy(b[16:32], p.UUID[:])
	copy(b[32:63], p.Algorithm)
	le.PutUint32(b[64:], p.DataBlockSize)
	le.PutUint32(b[68:], p.HashBlockSize)
	le.PutUint64(b[72:], p.DataBlocks)
	le.PutUint16(b[80:], uint16(len(p.Salt)))
	copy(b[88:], p.Salt)
	return b, nil
}

// ReadSuperblock reads and validates the superblock at offset 0 of the hash device.
func ReadSuperblock(hash io.ReaderAt) (*Params, error) {
	b := make([]byte, SuperblockSize)
	if n, err := hash.ReadAt(b, 0); n < len(b) {
		if err == nil || err == io.EOF {
			return nil, fmt.Errorf("verity: hash device is %d bytes, too short for a superblock: %w", n, ErrNoSuperblock)
		}
		return nil, fmt.Errorf("verity: reading superblock: %w", err)
	}
	return ParseSuperblock(b)
}
