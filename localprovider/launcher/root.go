package launcher

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/constellation-go/constellation/localprovider/verity"
)

// Root is a verified root file system: the first DataSize bytes of the file at Path, as opened by Launch.
// Only those bytes are covered by the root hash; Mount exposes nothing else.
type Root struct {
	// Path is where the file was opened, for messages. The file is used only through the descriptor Launch
	// opened: replacing the path afterwards has no effect.
	Path string
	// RootHash is the verified root hash, from the UKI's roothash=.
	RootHash []byte
	// DataSize is the number of verified bytes from the start of the file: the size to give a loop
	// device's size limit. The file may be larger (slack after the file system).
	DataSize int64
	// FSSize is the size of the erofs file system inside, at most DataSize.
	FSSize int64
	// Params are the hash tree's parameters from root.verity's superblock.
	Params verity.Params

	f      *os.File
	st     unix.Stat_t
	leased bool

	mu     sync.Mutex
	closed bool
}

// openRoot opens root.erofs inside dir, checks that only a trusted user can write it, takes a read lease on
// it and records its identity and times.
func openRoot(dir *os.Root, dirPath string) (*Root, error) {
	f, err := openRegular(dir, RootFile)
	if err != nil {
		return nil, err
	}
	r := &Root{Path: filepath.Join(dirPath, RootFile), f: f}
	if err := r.fstat(&r.st); err != nil {
		f.Close()
		return nil, err
	}
	if mode := r.st.Mode & 0o777; mode&0o022 != 0 {
		f.Close()
		return nil, fmt.Errorf("%w: %s is writable by its group or others (mode %04o), who could change it after it is "+
			"verified: chmod go-w it", ErrUnsafeRoot, r.Path, mode)
	}
	if uid := int(r.st.Uid); uid != 0 && uid != os.Geteuid() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is owned by uid %d, neither root nor the launcher's user (uid %d), and its owner could "+
			"change it after it is verified: chown it", ErrUnsafeRoot, r.Path, uid, os.Geteuid())
	}
	switch err := r.fcntl(unix.F_SETLEASE, unix.F_RDLCK); {
	case err == nil:
		r.leased = true
	case errors.Is(err, unix.EAGAIN):
		f.Close()
		return nil, fmt.Errorf("%w: %s is open for writing (or mapped writable) by some process, which could change it "+
			"after it is verified: stop that process and launch again", ErrUnsafeRoot, r.Path)
	default:
		// No lease support on this file system, or neither ownership nor CAP_LEASE: the stat checks remain.
	}
	return r, nil
}

func (r *Root) fcntl(cmd, arg int) error {
	_, err := r.fcntlGet(cmd, arg)
	return err
}

func (r *Root) fcntlGet(cmd, arg int) (ret int, err error) {
	err = control(r.f, func(fd int) error { ret, err = unix.FcntlInt(uintptr(fd), cmd, arg); return err })
	return ret, err
}

func (r *Root) fstat(st *unix.Stat_t) error {
	if err := control(r.f, func(fd int) error { return unix.Fstat(fd, st) }); err != nil {
		return fmt.Errorf("checking %s: %w", r.Path, err)
	}
	return nil
}

// Leased reports whether the kernel granted the read lease that detects writers (see the package
// documentation); without it only the stat comparison of Check remains.
func (r *Root) Leased() bool {
	return r.leased
}

// Check reports ErrRootChanged if the file may have been modified since Launch opened it: its read lease was
// broken (someone opened it for writing or truncated it), or its size or modification time differ, or,
// without a lease, its change time.
func (r *Root) Check() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("checking %s: closed", r.Path)
	}
	if r.leased {
		lease, err := r.fcntlGet(unix.F_GETLEASE, 0)
		if err != nil {
			return fmt.Errorf("checking the lease on %s: %w", r.Path, err)
		}
		if lease != unix.F_RDLCK {
			return fmt.Errorf("%w: %s was opened for writing or truncated after it was opened for verification; "+
				"find out who did, then launch again", ErrRootChanged, r.Path)
		}
	}
	var st unix.Stat_t
	if err := r.fstat(&st); err != nil {
		return err
	}
	changed := st.Dev != r.st.Dev || st.Ino != r.st.Ino || st.Size != r.st.Size || st.Mtim != r.st.Mtim
	// Without the lease, the change time is what reveals a write whose modification time was reset. With it,
	// the lease catches writers, and the change time is left out because harmless metadata changes update it
	// too: renaming another file over the path (the link count) or chmod.
	if !r.leased && st.Ctim != r.st.Ctim {
		changed = true
	}
	if changed {
		return fmt.Errorf("%w: %s's size or modification time (or, without a lease, change time) differ from when it was "+
			"opened for verification (size %d → %d); find out who changed it, then launch again", ErrRootChanged, r.Path, r.st.Size, st.Size)
	}
	return nil
}

// Close releases the descriptor (and its lease). A mount made from it stays valid.
func (r *Root) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return r.f.Close()
}

// erofs superblock (Linux fs/erofs/erofs_fs.h, struct erofs_super_block): at byte 1024, little-endian.
const (
	erofsSuperOffset    = 1024
	erofsSuperSize      = 128
	erofsMagic          = 0xE0F5E1E2
	erofsBlkszbitsField = 12
	erofsBlocksField    = 36
	// erofs block sizes are powers of two from 512 bytes to the page size; 64 KiB bounds the page size.
	erofsMinBlkszbits = 9
	erofsMaxBlkszbits = 16
)

// verify checks the root against the hash tree in hash and rootHash, then that the verified bytes hold an
// erofs file system that lies entirely within them (the geometry check in the package documentation).
func (r *Root) verify(ctx context.Context, hash *os.File, rootHash []byte) error {
	p, err := verity.Verify(ctx, r.f, r.st.Size, hash, rootHash)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("verifying %s: %w", r.Path, ctxErr)
		}
		return r.explain(err, hash)
	}
	r.RootHash = append([]byte(nil), rootHash...)
	r.Params = *p
	r.DataSize = p.DataSize()

	if r.DataSize < erofsSuperOffset+erofsSuperSize {
		return r.mismatch(fmt.Sprintf("root.verity covers only %d bytes, too few for an erofs superblock", r.DataSize), nil)
	}
	sb := make([]byte, erofsSuperSize)
	if _, err := r.f.ReadAt(sb, erofsSuperOffset); err != nil {
		return fmt.Errorf("reading the erofs superblock of %s: %w", r.Path, err)
	}
	if magic := binary.LittleEndian.Uint32(sb); magic != erofsMagic {
		return r.mismatch(fmt.Sprintf("the verified data has no erofs superblock (magic %#x at byte %d): root.verity's "+
			"superblock does not describe this root's geometry", magic, erofsSuperOffset), nil)
	}
	bits := sb[erofsBlkszbitsField]
	if bits < erofsMinBlkszbits || bits > erofsMaxBlkszbits {
		return r.mismatch(fmt.Sprintf("the erofs superblock's block size 2^%d is invalid", bits), nil)
	}
	blocks := binary.LittleEndian.Uint32(sb[erofsBlocksField:])
	fsSize := int64(blocks) << bits
	if blocks == 0 || fsSize > r.DataSize {
		return r.mismatch(fmt.Sprintf("the erofs file system is %d bytes (%d blocks of %d) but root.verity covers only "+
			"the first %d bytes: the hash tree does not cover the whole root", fsSize, blocks, 1<<bits, r.DataSize), nil)
	}
	r.FSSize = fsSize
	return nil
}

func (r *Root) mismatch(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%w: %s: %w; %s", ErrRootMismatch, what, err, rebuildHint)
	}
	return fmt.Errorf("%w: %s; %s", ErrRootMismatch, what, rebuildHint)
}

// explain turns a verification error into one that says which file differs, where possible.
func (r *Root) explain(err error, hash *os.File) error {
	var block *verity.BlockMismatchError
	var invalid *verity.InvalidParamsError
	switch {
	case errors.Is(err, verity.ErrNoSuperblock), errors.As(err, &invalid):
		return r.mismatch("root.verity is not a usable dm-verity hash partition", err)
	case errors.Is(err, verity.ErrDataTooShort):
		return r.mismatch("root.erofs is shorter than root.verity's hash tree covers (truncated?)", err)
	case errors.Is(err, verity.ErrHashTooShort):
		return r.mismatch("root.verity is shorter than its hash tree (truncated?)", err)
	case errors.Is(err, verity.ErrRootHashMismatch):
		return r.mismatch("root.verity's hash tree does not lead to the roothash= on constellation.efi's command line "+
			"(root.erofs and root.verity from another build than the UKI, or both modified)", err)
	case errors.As(err, &block) && block.Level == 0 && !block.Padding:
		what := fmt.Sprintf("data block %d of root.erofs does not match its digest in root.verity", block.Index)
		if p, sbErr := verity.ReadSuperblock(hash); sbErr == nil {
			start := int64(block.Index) * int64(p.DataBlockSize)
			what = fmt.Sprintf("root.erofs bytes %d to %d (data block %d) do not match their digest in root.verity",
				start, start+int64(p.DataBlockSize)-1, block.Index)
		}
		return r.mismatch(what, err)
	case errors.As(err, &block):
		return r.mismatch("root.verity's hash tree is inconsistent", err)
	}
	return fmt.Errorf("verifying %s: %w", r.Path, err)
}
