package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn on a thread in the node's network namespace: sockets fn opens belong to the node's network
// (e.g. to connect to another node, or to the metadata API, as the node would).
func (node *Node) Do(fn func() error) error {
	ns, err := netns.GetFromPath(node.Netns)
	if err != nil {
		return fmt.Errorf("opening the network namespace of node %s: %w", node.Name, err)
	}
	defer ns.Close()
	return inNetns(ns, fn)
}

// DialContext connects to addr (an IP address and port: resolving a name could happen on another thread)
// from inside the node's network namespace, as the node would; the connection may then be used from any
// goroutine. It lets the host reach nodes only through the routes the nodes have.
func (node *Node) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := node.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// OnThreadIn runs fn on a locked OS thread that enter moved into another network namespace (netns.Set into
// an existing one, or unix.Unshare(CLONE_NEWNET) into a new one). fn may change more of the thread (its
// cgroups, say) and return how to undo that. Afterwards the thread goes back to its own namespace; if undo
// or that fails, it stays locked and ends with the goroutine (the main thread is parked instead), so no
// other goroutine ever runs on a thread left in another namespace.
func OnThreadIn(enter func() error, fn func() (undo func() error, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("opening the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			errc <- err
			return
		}
		undo, err := fn()
		errc <- err
		if (undo == nil || undo() == nil) && netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// inNetns runs fn on a locked OS thread that has joined ns (OnThreadIn).
func inNetns(ns netns.NsHandle, fn func() error) error {
	return OnThreadIn(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("entering the network namespace: %w", err)
		}
		return nil
	}, func() (func() error, error) { return nil, fn() })
}

// ensureNetns opens the namespace bind-mounted at path, creating it if missing.
func ensureNetns(path string) (netns.NsHandle, error) {
	if ns, err := netns.GetFromPath(path); err == nil {
		var st unix.Statfs_t
		if unix.Fstatfs(int(ns), &st) == nil && st.Type == unix.NSFS_MAGIC {
			return ns, nil
		}
		ns.Close() // a file that is not a namespace: a stale mount point
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return 0, fmt.Errorf("creating %s: %w", NetnsDir, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return 0, fmt.Errorf("creating %s: %w", path, err)
	}
	f.Close()
	err = OnThreadIn(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("creating a network namespace: %w", err)
		}
		return nil
	}, func() (func() error, error) {
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			return nil, fmt.Errorf("bind-mounting the network namespace at %s: %w", path, err)
		}
		return nil, nil
	})
	if err != nil {
		_ = os.Remove(path)
		return 0, err
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return 0, fmt.Errorf("opening the network namespace at %s: %w", path, err)
	}
	return ns, nil
}

// removeNetns unmounts and removes a namespace's bind mount.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// writeSysctl writes a sysctl of the calling thread's network namespace (key relative to /proc/sys).
func writeSysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// retryDump retries a netlink dump that the kernel interrupted because the list changed meanwhile.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		if out, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}
