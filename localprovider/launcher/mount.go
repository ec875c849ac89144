package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	loopControl = "/dev/loop-control"
	// loopAttempts bounds retries when another process takes the free loop device first.
	loopAttempts = 10
)

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
	if err := unix.Mount(dev, target, "erofs", unix.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("mounting %s (%s) at %s: %w", root.Path, dev, target, err)
	}
	return &Mounted{Target: target, Device: dev}, nil
}

// Unmount unmounts the root; the loop device then detaches itself.
func (m *Mounted) Unmount() error {
	if err := unix.Unmount(m.Target, 0); err != nil {
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
		var n int
		if err := control(ctl, func(fd int) (err error) { n, err = unix.IoctlRetInt(fd, unix.LOOP_CTL_GET_FREE); return err }); err != nil {
			return nil, "", fmt.Errorf("finding a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		// Opened read-only, the device cannot be made writable whatever the flags say.
		loop, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			return nil, "", fmt.Errorf("opening %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Info: unix.LoopInfo64{
			Sizelimit: uint64(root.DataSize),
			Flags:     unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR,
		}}
		for i := 0; i < len(root.Path) && i < len(cfg.Info.File_name)-1; i++ {
			cfg.Info.File_name[i] = root.Path[i]
		}
		var cfgErr error
		if err := rc.Control(func(fd uintptr) {
			cfg.Fd = uint32(fd)
			cfgErr = control(loop, func(loopFd int) error { return unix.IoctlLoopConfigure(loopFd, &cfg) })
		}); err != nil {
			loop.Close()
			return nil, "", err
		}
		if cfgErr == nil {
			return loop, dev, nil
		}
		loop.Close()
		if !errors.Is(cfgErr, unix.EBUSY) {
			return nil, "", fmt.Errorf("configuring %s: %w", dev, cfgErr)
		}
		lastErr = cfgErr // another process took it first
	}
	return nil, "", fmt.Errorf("configuring a loop device: %w (%d attempts)", lastErr, loopAttempts)
}

// checkLoop confirms that the loop device serves root's file, read-only, with exactly the verified size.
func checkLoop(loop *os.File, root *Root) error {
	var info *unix.LoopInfo64
	var size uint64
	if err := control(loop, func(fd int) (err error) { info, err = unix.IoctlLoopGetStatus64(fd); return err }); err != nil {
		return fmt.Errorf("reading the loop device's status: %w", err)
	}
	if err := control(loop, func(fd int) error { return blockDeviceSize(fd, &size) }); err != nil {
		return fmt.Errorf("reading the loop device's size: %w", err)
	}
	switch {
	case info.Device != root.st.Dev || info.Inode != root.st.Ino:
		return errors.New("the loop device is not backed by the verified file")
	case info.Flags&unix.LO_FLAGS_READ_ONLY == 0:
		return errors.New("the loop device is not read-only")
	case info.Offset != 0 || info.Sizelimit != uint64(root.DataSize) || size != uint64(root.DataSize):
		return fmt.Errorf("the loop device exposes %d bytes from offset %d, want the %d verified bytes", size, info.Offset, root.DataSize)
	}
	return nil
}

// blockDeviceSize is BLKGETSIZE64, which x/sys/unix has no typed wrapper for.
func blockDeviceSize(fd int, size *uint64) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(size))); errno != 0 {
		return errno
	}
	return nil
}

// control runs fn with f's descriptor, keeping f alive for the call.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var fnErr error
	if err := rc.Control(func(fd uintptr) { fnErr = fn(int(fd)) }); err != nil {
		return err
	}
	return fnErr
}
