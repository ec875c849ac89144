package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// Loop device interface (linux/loop.h). The standard library's syscall package is used rather than
// golang.org/x/sys/unix, which the module does not require directly.
const (
	loopCtlGetFree  = 0x4C82
	loopConfigure   = 0x4C0A
	loopGetStatus64 = 0x4C05
	blkGetSize64    = 0x80081272

	loFlagsReadOnly  = 1
	loFlagsAutoclear = 4

	loopControl = "/dev/loop-control"
	// loopAttempts bounds retries when another process takes the free loop device first.
	loopAttempts = 10
)

// loopInfo64 is struct loop_info64.
type loopInfo64 struct {
	Device         uint64
	Inode          uint64
	Rdevice        uint64
	Offset         uint64
	Sizelimit      uint64
	Number         uint32
	EncryptType    uint32
	EncryptKeySize uint32
	Flags          uint32
	FileName       [64]byte
	CryptName      [64]byte
	EncryptKey     [32]byte
	Init           [2]uint64
}

// loopConfig is struct loop_config.
type loopConfig struct {
	Fd        uint32
	BlockSize uint32
	Info      loopInfo64
	_         [8]uint64
}

// Mounted is a root file system mounted from a read-only loop device.
type Mounted struct {
	// Target is the mount point.
	Target string
	// Device is the loop device, e.g. /dev/loop0. It detaches itself when the file system is unmounted.
	Device string
}

// Mount mounts root read-only at target, in the calling thread's mount namespace, through a read-only loop
// device over the descriptor Launch verified, limited to the verified bytes (Root.DataSize). It runs
// Root.Check first and refuses a root that may have changed since verification. It needs CAP_SYS_ADMIN,
// /dev/loop-control and erofs support in the kernel.
func Mount(ctx context.Context, root *Root, target string) (*Mounted, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := root.Check(); err != nil {
		return nil, err
	}
	root.mu.Lock()
	defer root.mu.Unlock()
	if root.closed {
		return nil, fmt.Errorf("mounting %s: closed", root.Path)
	}
	loop, dev, err := attachLoop(root)
	if err != nil {
		return nil, fmt.Errorf("mounting %s: %w", root.Path, err)
	}
	// With LO_FLAGS_AUTOCLEAR the device detaches once this descriptor is closed and the mount, if any, is
	// gone: on every error path below, closing it is the clean-up.
	defer loop.Close()
	if err := checkLoop(loop, root); err != nil {
		return nil, fmt.Errorf("mounting %s: %s: %w", root.Path, dev, err)
	}
	if err := syscall.Mount(dev, target, "erofs", syscall.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("mounting %s (%s) at %s: %w", root.Path, dev, target, err)
	}
	return &Mounted{Target: target, Device: dev}, nil
}

// Unmount unmounts the root; the loop device then detaches itself.
func (m *Mounted) Unmount() error {
	if err := syscall.Unmount(m.Target, 0); err != nil {
		return fmt.Errorf("unmounting %s: %w", m.Target, err)
	}
	return nil
}

// attachLoop binds a free loop device to root's descriptor, read-only, auto-clearing and limited to the
// verified size, and returns it opened.
func attachLoop(root *Root) (*os.File, string, error) {
	ctl, err := os.OpenFile(loopControl, os.O_RDWR, 0)
	if err != nil {
		return nil, "", fmt.Errorf("opening %s: %w", loopControl, err)
	}
	defer ctl.Close()
	rc, err := root.f.SyscallConn()
	if err != nil {
		return nil, "", err
	}
	var lastErr error
	for range loopAttempts {
		n, err := ioctl(ctl, loopCtlGetFree, 0)
		if err != nil {
			return nil, "", fmt.Errorf("finding a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		// Opened read-only, the device cannot be made writable whatever the flags say.
		loop, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			return nil, "", fmt.Errorf("opening %s: %w", dev, err)
		}
		cfg := loopConfig{Info: loopInfo64{
			Sizelimit: uint64(root.DataSize),
			Flags:     loFlagsReadOnly | loFlagsAutoclear,
		}}
		copy(cfg.Info.FileName[:len(cfg.Info.FileName)-1], root.Path)
		var cfgErr error
		if err := rc.Control(func(fd uintptr) {
			cfg.Fd = uint32(fd)
			cfgErr = ioctlPtr(loop, loopConfigure, unsafe.Pointer(&cfg))
		}); err != nil {
			loop.Close()
			return nil, "", err
		}
		if cfgErr == nil {
			return loop, dev, nil
		}
		loop.Close()
		if !errors.Is(cfgErr, syscall.EBUSY) {
			return nil, "", fmt.Errorf("configuring %s: %w", dev, cfgErr)
		}
		lastErr = cfgErr // another process took it first
	}
	return nil, "", fmt.Errorf("configuring a loop device: %w (%d attempts)", lastErr, loopAttempts)
}

// checkLoop confirms that the loop device serves root's file, read-only, with exactly the verified size.
func checkLoop(loop *os.File, root *Root) error {
	var info loopInfo64
	if err := ioctlPtr(loop, loopGetStatus64, unsafe.Pointer(&info)); err != nil {
		return fmt.Errorf("reading the loop device's status: %w", err)
	}
	var size uint64
	if err := ioctlPtr(loop, blkGetSize64, unsafe.Pointer(&size)); err != nil {
		return fmt.Errorf("reading the loop device's size: %w", err)
	}
	switch {
	case info.Device != root.st.Dev || info.Inode != root.st.Ino:
		return errors.New("the loop device is not backed by the verified file")
	case info.Flags&loFlagsReadOnly == 0:
		return errors.New("the loop device is not read-only")
	case info.Offset != 0 || info.Sizelimit != uint64(root.DataSize) || size != uint64(root.DataSize):
		return fmt.Errorf("the loop device exposes %d bytes from offset %d, want the %d verified bytes", size, info.Offset, root.DataSize)
	}
	return nil
}

// ioctl runs an ioctl with an integer argument and returns its result.
func ioctl(f *os.File, req, arg uintptr) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ret uintptr
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		ret, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, arg)
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return int(ret), nil
}

// ioctlPtr runs an ioctl whose argument points to a structure. The pointer stays an unsafe.Pointer until
// the system call itself, so that the structure stays alive and is not moved.
func ioctlPtr(f *os.File, req uintptr, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}
