package verity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
)

// maxReadChunk bounds one read of the data device by a worker.
const maxReadChunk = 1 << 20

// Verify checks the data device against the hash device, whose superblock (at offset 0) gives the
// parameters, and against the trusted root hash. It recomputes the whole tree and returns the parameters
// when everything matches. Only the first DataSize() bytes of data are protected (dataSize may be
// larger, e.g. a partition with slack after the file system).
//
// The root hash binds the data only together with the tree's geometry, which comes from the (untrusted)
// superblock: the hash blocks of a genuine tree can pose as the data of a shallower tree with the same
// root hash (a superblock with fewer data blocks). Such "data" is digests, not chosen content, so this
// can only deny service, but a caller that knows what to expect (block sizes, data size) should compare
// it with the returned parameters.
//
// Errors: ErrNoSuperblock or *InvalidParamsError for a missing or refused superblock,
// ErrDataTooShort / ErrHashTooShort for truncated devices, *BlockMismatchError for a stored hash block
// that differs from the recomputed one, ErrRootHashMismatch for a consistent tree with another root hash,
// and ctx's error when it is cancelled.
func Verify(ctx context.Context, data io.ReaderAt, dataSize int64, hash io.ReaderAt, rootHash []byte) (*Params, error) {
	p, err := ReadSuperblock(hash)
	if err != nil {
		return nil, err
	}
	if err := VerifyParams(ctx, data, dataSize, hash, p, rootHash); err != nil {
		return nil, err
	}
	return p, nil
}

// VerifyParams is Verify with explicit parameters, for hash devices without a superblock (veritysetup
// --no-superblock; the salt, block sizes and number of data blocks must then come from elsewhere). Zero
// fields take defaults: sha256, 4096-byte blocks, and as many data blocks as fit whole in dataSize. p is
// not modified.
func VerifyParams(ctx context.Context, data io.ReaderAt, dataSize int64, hash io.ReaderAt, p *Params, rootHash []byte) error {
	q, err := p.withDefaults(dataSize)
	if err != nil {
		return err
	}
	if len(rootHash) != DigestSize {
		return fmt.Errorf("verity: root hash is %d bytes, want %d", len(rootHash), DigestSize)
	}
	if dataSize < q.DataSize() {
		return fmt.Errorf("%w: %d bytes, the tree covers %d", ErrDataTooShort, dataSize, q.DataSize())
	}
	w, err := newWalker(q)
	if err != nil {
		return err
	}
	scratch := make([]byte, q.HashBlockSize)
	w.handle = func(level int, index uint64, block []byte, entries int) error {
		off := w.offset(level, index)
		if err := readFull(hash, scratch, off); err != nil {
			return hashReadError(err, off)
		}
		if bytes.Equal(scratch, block) {
			return nil
		}
		i := firstDiff(scratch, block)
		if i < entries*w.g.digestStride {
			return &BlockMismatchError{Level: level, Index: index*uint64(w.g.perBlock) + uint64(i/w.g.digestStride), Offset: off + int64(i)}
		}
		return &BlockMismatchError{Level: level, Index: index, Padding: true, Offset: off + int64(i)}
	}
	root, err := w.run(ctx, data)
	if err != nil {
		return err
	}
	if !bytes.Equal(root, rootHash) {
		return fmt.Errorf("%w: computed %x, want %x", ErrRootHashMismatch, root, rootHash)
	}
	return nil
}

// Build computes the hash tree of data and writes it to hash, as veritysetup format (and so
// systemd-repart) does: the superblock (when p.Superblock) at p.HashOffset, zeros up to the tree, then the
// tree. Zero fields of p take defaults: sha256, 4096-byte blocks, and as many data blocks as fit whole in
// dataSize; a nil salt means no salt (veritysetup's default is 32 random bytes; systemd-repart's is
// RepartSalt(seed)). It returns the completed parameters and the root hash.
func Build(ctx context.Context, data io.ReaderAt, dataSize int64, hash io.WriterAt, p Params) (*Params, []byte, error) {
	q, err := p.withDefaults(dataSize)
	if err != nil {
		return nil, nil, err
	}
	if dataSize < q.DataSize() {
		return nil, nil, fmt.Errorf("%w: %d bytes, the tree covers %d", ErrDataTooShort, dataSize, q.DataSize())
	}
	w, err := newWalker(q)
	if err != nil {
		return nil, nil, err
	}
	if q.Superblock {
		sb, err := q.MarshalSuperblock()
		if err != nil {
			return nil, nil, err
		}
		head := make([]byte, q.TreeOffset()-q.HashOffset)
		copy(head, sb)
		if _, err := hash.WriteAt(head, q.HashOffset); err != nil {
			return nil, nil, fmt.Errorf("verity: writing superblock: %w", err)
		}
	}
	w.handle = func(level int, index uint64, block []byte, _ int) error {
		if _, err := hash.WriteAt(block, w.offset(level, index)); err != nil {
			return fmt.Errorf("verity: writing level %d hash block %d: %w", level, index, err)
		}
		return nil
	}
	root, err := w.run(ctx, data)
	if err != nil {
		return nil, nil, err
	}
	return q, root, nil
}

// withDefaults returns a validated copy of p with zero fields set to their defaults.
func (p *Params) withDefaults(dataSize int64) (*Params, error) {
	q := *p
	q.Salt = bytes.Clone(p.Salt)
	if q.Algorithm == "" {
		q.Algorithm = AlgorithmSHA256
	}
	if q.DataBlockSize == 0 {
		q.DataBlockSize = DefaultBlockSize
	}
	if q.HashBlockSize == 0 {
		q.HashBlockSize = DefaultBlockSize
	}
	if q.DataBlocks == 0 && dataSize > 0 {
		if err := validBlockSize("data block size", q.DataBlockSize); err != nil {
			return nil, err
		}
		q.DataBlocks = uint64(dataSize) / uint64(q.DataBlockSize)
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return &q, nil
}

// walker computes the tree bottom-up, streaming: level-0 hash blocks are produced in order by parallel
// workers from the data; each finished hash block goes to handle (compare or write), then its digest
// into the level above, which keeps one partial block per level.
type walker struct {
	p      *Params
	g      geometry
	hasher blockHasher
	// handle receives every hash block in order within a level (block is only valid during the call;
	// entries is the number of digests in it).
	handle func(level int, index uint64, block []byte, entries int) error
	levels []partialBlock // levels[i] for i >= 1; levels[0] is unused
	root   []byte
}

type partialBlock struct {
	buf   []byte
	n     int    // digests in buf
	index uint64 // number of the block being filled within its level
}

func newWalker(p *Params) (*walker, error) {
	g, err := p.geometry()
	if err != nil {
		return nil, err
	}
	w := &walker{p: p, g: g, hasher: newBlockHasher(p.Salt), levels: make([]partialBlock, g.levels)}
	for i := 1; i < g.levels; i++ {
		w.levels[i].buf = make([]byte, p.HashBlockSize)
	}
	return w, nil
}

// offset is the byte offset in the hash device of a level's hash block.
func (w *walker) offset(level int, index uint64) int64 {
	return w.p.TreeOffset() + int64(w.g.start[level]+index)*int64(w.p.HashBlockSize)
}

// block takes a finished hash block of a level, hands it over, and adds its digest to the level above
// (or makes it the root hash at the top).
func (w *walker) block(level int, index uint64, block []byte, entries int) error {
	if err := w.handle(level, index, block, entries); err != nil {
		return err
	}
	d := w.hasher.digest(block, make([]byte, 0, DigestSize))
	if level == w.g.levels-1 {
		w.root = d
		return nil
	}
	return w.add(level+1, d)
}

func (w *walker) add(level int, digest []byte) error {
	l := &w.levels[level]
	copy(l.buf[l.n*w.g.digestStride:], digest)
	l.n++
	if l.n == w.g.perBlock {
		return w.flush(level)
	}
	return nil
}

func (w *walker) flush(level int) error {
	l := &w.levels[level]
	clear(l.buf[l.n*w.g.digestStride:])
	n, index := l.n, l.index
	l.n = 0
	l.index++
	return w.block(level, index, l.buf, n)
}

// run hashes the data and every level, and returns the root hash.
func (w *walker) run(ctx context.Context, data io.ReaderAt) ([]byte, error) {
	dbs := int64(w.p.DataBlockSize)
	if w.g.levels == 0 { // one data block: the root hash is its digest
		buf := make([]byte, dbs)
		if err := readFull(data, buf, 0); err != nil {
			return nil, dataReadError(err, 0)
		}
		return w.hasher.digest(buf, nil), nil
	}
	if err := w.level0(ctx, data); err != nil {
		return nil, err
	}
	for level := 1; level < w.g.levels; level++ {
		if w.levels[level].n > 0 {
			if err := w.flush(level); err != nil {
				return nil, err
			}
		}
		if w.levels[level].index != w.g.blocks[level] {
			return nil, fmt.Errorf("verity: internal error: level %d has %d blocks, want %d", level, w.levels[level].index, w.g.blocks[level])
		}
	}
	if w.root == nil {
		return nil, errors.New("verity: internal error: no root hash")
	}
	return w.root, nil
}

// level0 produces the level-0 hash blocks with parallel workers and feeds them to w.block in order.
func (w *walker) level0(ctx context.Context, data io.ReaderAt) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type result struct {
		block   []byte
		entries int
		err     error
	}
	type job struct {
		index uint64
		res   chan result
	}
	n := w.g.blocks[0]
	workers := runtime.GOMAXPROCS(0)
	if uint64(workers) > n {
		workers = int(n)
	}
	hbs := int(w.p.HashBlockSize)
	dbs := int(w.p.DataBlockSize)
	perBlock := uint64(w.g.perBlock)
	chunkBlocks := max(1, min(w.g.perBlock, maxReadChunk/dbs))

	jobs := make(chan job)
	order := make(chan job, 2*workers) // bounds the blocks in flight
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // producer
		defer wg.Done()
		defer close(order)
		defer close(jobs)
		for k := range n {
			j := job{index: k, res: make(chan result, 1)}
			select {
			case order <- j:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := newBlockHasher(w.p.Salt)
			buf := make([]byte, chunkBlocks*dbs)
			for j := range jobs {
				first := j.index * perBlock
				count := int(min(perBlock, w.p.DataBlocks-first))
				block := make([]byte, hbs)
				var err error
				for done := 0; done < count && err == nil; {
					c := min(chunkBlocks, count-done)
					off := int64(first+uint64(done)) * int64(dbs)
					if err = readFull(data, buf[:c*dbs], off); err != nil {
						err = dataReadError(err, off)
						break
					}
					for b := range c {
						h.digest(buf[b*dbs:(b+1)*dbs], block[(done+b)*w.g.digestStride:(done+b)*w.g.digestStride])
					}
					done += c
				}
				clear(block[count*w.g.digestStride:])
				j.res <- result{block: block, entries: count, err: err}
			}
		}()
	}

	err := func() error {
		for j := range order {
			var r result
			select {
			case r = <-j.res:
			case <-ctx.Done():
				return ctx.Err()
			}
			if r.err != nil {
				return r.err
			}
			if err := w.block(0, j.index, r.block, r.entries); err != nil {
				return err
			}
		}
		return ctx.Err()
	}()
	cancel()
	wg.Wait()
	return err
}

// blockHasher computes H(salt || block) (dm-verity format 1).
type blockHasher struct {
	h    hash.Hash
	salt []byte
}

func newBlockHasher(salt []byte) blockHasher {
	return blockHasher{h: sha256.New(), salt: salt}
}

// digest appends the digest of block to out.
func (b blockHasher) digest(block, out []byte) []byte {
	b.h.Reset()
	b.h.Write(b.salt)
	b.h.Write(block)
	return b.h.Sum(out)
}

func readFull(r io.ReaderAt, buf []byte, off int64) error {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func dataReadError(err error, off int64) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: reading at offset %d", ErrDataTooShort, off)
	}
	return fmt.Errorf("verity: reading data at offset %d: %w", off, err)
}

func hashReadError(err error, off int64) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: reading at offset %d", ErrHashTooShort, off)
	}
	return fmt.Errorf("verity: reading hash device at offset %d: %w", off, err)
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
