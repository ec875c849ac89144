// Package statedisk is a local node's state disk and its encryption.
//
// This kernel has no device-mapper, so the state disk is not LUKS: it is an ext4 file system with the
// `encrypt` feature in a sparse file on the host (Create), attached to a loop device and mounted inside the
// node (Mount; the node runtime mounts it at node.StateDiskPath). Encryption is ext4's native encryption,
// fscrypt policy v2 with AES-256-XTS for contents and AES-256-CTS for names (docs/architecture.md §8):
// the bootstrapper, once it has the disk key from the init or join flow, calls EncryptDir on an empty
// directory of the disk (a fresh node) or Unlock on one encrypted before (a restarted node), and keeps
// everything secret below it.
//
// A key lives in the file system's keyring in the kernel, not on disk: it is gone when the file system is
// unmounted (the node stops) or RemoveKey removes it. Without it, names below the directory read as
// ciphertext (base64-like) and opening a file fails with ENOKEY ("Required key not available").
//
// What fscrypt does not hide: file sizes (rounded), the directory tree's shape, timestamps, ownership and
// modes, and anything outside encrypted directories. And the host (root) that runs the node can read the
// node's memory, so the local provider's encryption protects data at rest, not from the host.
package statedisk

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha512"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KeySize is the size of an fscrypt v2 master key: 64 bytes (AES-256-XTS takes the whole key).
const KeySize = 64

// IdentifierSize is the size of a key identifier.
const IdentifierSize = unix.FSCRYPT_KEY_IDENTIFIER_SIZE

// Identifier names an fscrypt v2 key: the kernel derives it from the key (HKDF-SHA512), and a policy
// refers to its key by it.
type Identifier [IdentifierSize]byte

// ErrWrongKey means a directory is encrypted with another key than the one given.
var ErrWrongKey = errors.New("the directory is encrypted with another key")

// Create makes an ext4 file system with the encrypt feature in a new sparse file of size bytes at path,
// with the machine's mkfs.ext4 (e2fsprogs). An existing file is an error.
func Create(ctx context.Context, path string, size int64) (err error) {
	mkfs, lookErr := exec.LookPath("mkfs.ext4")
	if lookErr != nil {
		return fmt.Errorf("creating the state disk: mkfs.ext4 not found (apt-get install e2fsprogs): %w", lookErr)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the state disk: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	err = f.Truncate(size)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return fmt.Errorf("creating the state disk: %w", err)
	}
	// No reserved blocks; lazy initialisation keeps a sparse file sparse.
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-O", "encrypt", "-L", "state", "-m", "0",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("creating the state disk: mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Mount attaches the file at path to a free loop device, read-write and auto-clearing (it detaches once
// the file system is unmounted), and mounts its ext4 at target (nodev, nosuid) in the calling thread's
// mount namespace. It returns the loop device.
func Mount(path, target string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("mounting the state disk: %w", err)
	}
	defer f.Close()
	loop, dev, err := attachLoop(f)
	if err != nil {
		return "", fmt.Errorf("mounting the state disk %s: %w", path, err)
	}
	// Closing the loop device's descriptor detaches it unless the mount below holds it.
	defer loop.Close()
	if err := unix.Mount(dev, target, "ext4", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return "", fmt.Errorf("mounting the state disk %s (%s) at %s: %w", path, dev, target, err)
	}
	return dev, nil
}

// attachLoop binds a free loop device to f.
func attachLoop(f *os.File) (*os.File, string, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, "", err
	}
	defer ctl.Close()
	var lastErr error
	for range 10 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, "", fmt.Errorf("finding a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		loop, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, "", err
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd()), Info: unix.LoopInfo64{Flags: unix.LO_FLAGS_AUTOCLEAR}}
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], f.Name())
		err = unix.IoctlLoopConfigure(int(loop.Fd()), &cfg)
		if err == nil {
			return loop, dev, nil
		}
		loop.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, "", fmt.Errorf("configuring %s: %w", dev, err)
		}
		lastErr = err // another process took it first
	}
	return nil, "", fmt.Errorf("configuring a loop device: %w", lastErr)
}

// EncryptDir protects dir, on an fscrypt-capable file system, with key: it adds key to the file system and,
// if dir is not encrypted yet, sets a v2 policy (AES-256-XTS, AES-256-CTS, 32-byte name padding) on it,
// which the kernel allows only on an empty directory. If dir is already encrypted, the key must be the one
// it was encrypted with (ErrWrongKey otherwise), and EncryptDir unlocks it. Everything created below dir
// afterwards inherits the policy.
func EncryptDir(dir string, key []byte) (Identifier, error) {
	id, err := AddKey(dir, key)
	if err != nil {
		return Identifier{}, err
	}
	cur, encrypted, err := PolicyOf(dir)
	if err != nil {
		return Identifier{}, err
	}
	if encrypted {
		if cur != id {
			// The key just added protects nothing: take it out again.
			_ = RemoveKey(dir, id)
			return Identifier{}, fmt.Errorf("%w: %s needs key %x, the given key is %x", ErrWrongKey, dir, cur, id)
		}
		return id, nil
	}
	if err := SetPolicy(dir, id); err != nil {
		return Identifier{}, err
	}
	return id, nil
}

// Unlock adds key to the file system of dir, which must be encrypted with it (ErrWrongKey otherwise): the
// directory's names and contents become readable.
func Unlock(dir string, key []byte) (Identifier, error) {
	cur, encrypted, err := PolicyOf(dir)
	if err != nil {
		return Identifier{}, err
	}
	if !encrypted {
		return Identifier{}, fmt.Errorf("unlocking %s: not encrypted", dir)
	}
	if want := KeyIdentifier(key); want != cur {
		return Identifier{}, fmt.Errorf("%w: %s needs key %x, the given key is %x", ErrWrongKey, dir, cur, want)
	}
	return AddKey(dir, key)
}

// AddKey adds a v2 master key to the file system that path is on (FS_IOC_ADD_ENCRYPTION_KEY) and returns
// its identifier. Adding a key that is present again is fine.
func AddKey(path string, key []byte) (Identifier, error) {
	if len(key) != KeySize {
		return Identifier{}, fmt.Errorf("adding an encryption key: it must be %d bytes, got %d", KeySize, len(key))
	}
	f, err := os.Open(path)
	if err != nil {
		return Identifier{}, fmt.Errorf("adding an encryption key: %w", err)
	}
	defer f.Close()
	// struct fscrypt_add_key_arg is followed by the raw key.
	const argSize = unsafe.Sizeof(unix.FscryptAddKeyArg{})
	buf := make([]byte, int(argSize)+KeySize)
	defer clear(buf)
	arg := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&buf[0]))
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = KeySize
	copy(buf[argSize:], key)
	if err := ioctl(f, unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&buf[0])); err != nil {
		return Identifier{}, fmt.Errorf("adding an encryption key to the file system of %s: %w", path, explain(err))
	}
	var id Identifier
	copy(id[:], arg.Key_spec.U[:IdentifierSize])
	return id, nil
}

// RemoveKey removes a key from the file system that path is on (FS_IOC_REMOVE_ENCRYPTION_KEY). Files in use
// stay readable until closed; the others lock at once.
func RemoveKey(path string, id Identifier) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("removing an encryption key: %w", err)
	}
	defer f.Close()
	arg := unix.FscryptRemoveKeyArg{Key_spec: unix.FscryptKeySpecifier{Type: unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER}}
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(f, unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("removing encryption key %x from the file system of %s: %w", id, path, explain(err))
	}
	return nil
}

// KeyPresent tells whether the file system that path is on holds the key id.
func KeyPresent(path string, id Identifier) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	arg := unix.FscryptGetKeyStatusArg{Key_spec: unix.FscryptKeySpecifier{Type: unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER}}
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(f, unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, unsafe.Pointer(&arg)); err != nil {
		return false, fmt.Errorf("reading the status of key %x: %w", id, explain(err))
	}
	return arg.Status == unix.FSCRYPT_KEY_STATUS_PRESENT, nil
}

// SetPolicy encrypts the empty directory dir with the key id, which must have been added to dir's file
// system: fscrypt policy v2, AES-256-XTS contents, AES-256-CTS names, names padded to 32 bytes.
func SetPolicy(dir string, id Identifier) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("encrypting %s: %w", dir, err)
	}
	defer f.Close()
	p := unix.FscryptPolicyV2{
		Version:                   unix.FSCRYPT_POLICY_V2,
		Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
		Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
		Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
		Master_key_identifier:     id,
	}
	if err := ioctl(f, unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&p)); err != nil {
		if errors.Is(err, unix.ENOTEMPTY) {
			return fmt.Errorf("encrypting %s: the directory is not empty (only an empty directory can be encrypted)", dir)
		}
		return fmt.Errorf("encrypting %s: %w", dir, explain(err))
	}
	return nil
}

// PolicyOf returns the key identifier of dir's v2 policy, or encrypted false if dir is not encrypted. A v1
// policy is an error.
func PolicyOf(dir string) (id Identifier, encrypted bool, err error) {
	f, err := os.Open(dir)
	if err != nil {
		return Identifier{}, false, err
	}
	defer f.Close()
	arg := unix.FscryptGetPolicyExArg{Size: uint64(len(unix.FscryptGetPolicyExArg{}.Policy))}
	switch err := ioctl(f, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg)); {
	case errors.Is(err, unix.ENODATA):
		return Identifier{}, false, nil
	case err != nil:
		return Identifier{}, false, fmt.Errorf("reading the encryption policy of %s: %w", dir, explain(err))
	}
	p := (*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
	if p.Version != unix.FSCRYPT_POLICY_V2 {
		return Identifier{}, true, fmt.Errorf("%s has an fscrypt policy of version %d; only v2 is supported", dir, p.Version)
	}
	return p.Master_key_identifier, true, nil
}

// KeyIdentifier computes a key's identifier as the kernel does: HKDF-SHA512 with no salt, info
// "fscrypt\x00" followed by the context byte HKDF_CONTEXT_KEY_IDENTIFIER (1), 16 bytes.
func KeyIdentifier(key []byte) Identifier {
	var id Identifier
	out, err := hkdf.Key(sha512.New, key, nil, "fscrypt\x00\x01", IdentifierSize)
	if err != nil {
		panic(err) // unreachable: 16 bytes is far below HKDF-SHA512's limit
	}
	copy(id[:], out)
	return id
}

func ioctl(f *os.File, req uint, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// explain adds what an fscrypt errno means here.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY):
		return fmt.Errorf("%w (the file system has no encryption support: ext4 needs the encrypt feature, mkfs.ext4 -O encrypt)", err)
	case errors.Is(err, unix.ENOKEY):
		return fmt.Errorf("%w (the key has not been added to the file system)", err)
	}
	return err
}
