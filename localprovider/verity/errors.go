package verity

import (
	"errors"
	"fmt"
)

var (
	// ErrRootHashMismatch means the tree is consistent with the data but its top digest is not the
	// expected root hash: the data and hash device were replaced together, or the root hash is wrong.
	ErrRootHashMismatch = errors.New("verity: root hash mismatch")
	// ErrNoSuperblock means the hash device does not start with a verity superblock.
	ErrNoSuperblock = errors.New("verity: no verity superblock")
	// ErrDataTooShort means the data device is smaller than the tree says it covers.
	ErrDataTooShort = errors.New("verity: data device shorter than the hash tree covers")
	// ErrHashTooShort means the hash device ends before the tree does.
	ErrHashTooShort = errors.New("verity: hash device shorter than the hash tree")
)

// BlockMismatchError reports a hash block whose stored content differs from the one recomputed from
// the level below: either a digest (the child block, or the stored digest, was altered) or the zero
// padding after the last digest.
type BlockMismatchError struct {
	// Level is the tree level of the stored hash block: 0 holds the digests of the data blocks, level
	// i+1 the digests of level i's hash blocks.
	Level int
	// Index is, for a digest mismatch, the index of the child whose digest differs: the data block
	// number at level 0, the hash block number within level Level-1 above it. For a padding mismatch
	// it is the number of the hash block within level Level.
	Index uint64
	// Padding is set when the mismatch is in the zero padding of a hash block, not in a digest.
	Padding bool
	// Offset is the byte offset in the hash device of the first differing byte.
	Offset int64
}

func (e *BlockMismatchError) Error() string {
	if e.Padding {
		return fmt.Sprintf("verity: level %d hash block %d has non-zero padding (hash device offset %d)",
			e.Level, e.Index, e.Offset)
	}
	if e.Level == 0 {
		return fmt.Sprintf("verity: level 0 digest of data block %d does not match (hash device offset %d)",
			e.Index, e.Offset)
	}
	return fmt.Sprintf("verity: level %d digest of level %d hash block %d does not match (hash device offset %d)",
		e.Level, e.Level-1, e.Index, e.Offset)
}
