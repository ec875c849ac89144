package node

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/constellation-go/constellation/internal/statedisk"
)

// The node's file system is a table: nodeRoot lists, in order, every directory, file, link and mount the
// init makes below the image's root while the host's paths are still visible; apply carries them out. The
// table is a pure function of the configuration, so what a node can see and write is reviewable (and
// tested) without mounting anything.

// stepKind is what a step does.
type stepKind int

const (
	// stepMkdir creates target (and its parents) with mode.
	stepMkdir stepKind = iota
	// stepWrite replaces target with a file holding data, with mode (a file of the image may be read-only or a
	// link, so it is removed first).
	stepWrite
	// stepTouch creates target as an empty file: the mount point of a bind-mounted file.
	stepTouch
	// stepSymlink creates target as a link to source.
	stepSymlink
	// stepMount mounts source (of fstype, with flags and data) on target.
	stepMount
	// stepStateDisk attaches the state disk image source to a loop device and mounts it on target.
	stepStateDisk
)

// step is one entry of the mount table.
type step struct {
	kind                 stepKind
	source, target, data string
	fstype               string
	flags                uintptr
	mode                 os.FileMode
}

const msNoSuidDevExec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// nodeRoot is the node's mount table for configuration c; devices are the host's device nodes (names
// below /dev) that the node gets.
func nodeRoot(c *initConfig, devices []string) []step {
	R := func(p string) string { return filepath.Join(c.Rootfs, p) }
	S := func(p string) string { return filepath.Join(c.Scratch, p) }
	dir := func(p string, mode os.FileMode) step { return step{kind: stepMkdir, target: p, mode: mode} }
	mnt := func(source, target, fstype string, flags uintptr, data string) step {
		return step{kind: stepMount, source: source, target: target, fstype: fstype, flags: flags, data: data}
	}
	bind := func(source, target string) step { return mnt(source, target, "", unix.MS_BIND, "") }
	// A bind mount ignores MS_RDONLY; a second, remounting step makes it read-only.
	readOnly := func(target string) step {
		return mnt("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|msNoSuidDevExec, "")
	}

	steps := []step{
		// Nothing below propagates to the host, and nothing of the host's propagates here.
		mnt("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""),
		mnt("scratch", c.Scratch, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=700"),
	}

	// /etc and /var: the image's, writable, on overlays whose upper layers are in the scratch tmpfs.
	for _, d := range []string{"etc", "var"} {
		steps = append(steps, dir(S(d+"/upper"), 0o755), dir(S(d+"/work"), 0o755),
			mnt("overlay", R(d), "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", R(d), S(d+"/upper"), S(d+"/work"))))
	}

	// /proc: the sysctls read-only, except the network namespace's (the node's own) and the kubelet's
	// tunables, which are per-node files in the scratch space.
	steps = append(steps,
		mnt("proc", R("proc"), "proc", msNoSuidDevExec, ""),
		bind(R("proc/sys/net"), R("proc/sys/net")),
		dir(S("sysctl"), 0o755))
	for _, key := range slices.Sorted(maps.Keys(kubeletTunables)) {
		src := S("sysctl/" + strings.ReplaceAll(key, "/", "."))
		steps = append(steps, step{kind: stepWrite, target: src, data: kubeletTunables[key] + "\n", mode: 0o644}, bind(src, R("proc/sys/"+key)))
	}
	steps = append(steps,
		mnt(R("proc/sys"), R("proc/sys"), "", unix.MS_BIND|unix.MS_REC, ""),
		readOnly(R("proc/sys")))

	// /sys, read-only, with every cgroup v1 hierarchy mounted in the node's cgroup namespace.
	steps = append(steps,
		mnt("sysfs", R("sys"), "sysfs", unix.MS_RDONLY|msNoSuidDevExec, ""),
		mnt("cgroup", R("sys/fs/cgroup"), "tmpfs", msNoSuidDevExec, "mode=755"))
	for _, h := range c.Cgroups {
		steps = append(steps, dir(R("sys/fs/cgroup/"+h.Name), 0o755), mnt("cgroup", R("sys/fs/cgroup/"+h.Name), "cgroup", msNoSuidDevExec, h.Options))
	}
	for _, name := range slices.Sorted(maps.Keys(c.CgroupLinks)) {
		steps = append(steps, step{kind: stepSymlink, source: c.CgroupLinks[name], target: R("sys/fs/cgroup/" + name)})
	}

	steps = append(steps, devSteps(R("dev"), devices)...)

	// Scratch space, and containerd's root (overlayfs cannot use an overlayfs as its upper layer).
	steps = append(steps,
		mnt("run", R("run"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"),
		mnt("tmp", R("tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"),
		dir(R(ContainerdRoot), 0o711),
		mnt("containerd", R(ContainerdRoot), "tmpfs", 0, "mode=711"),
		// The state disk.
		dir(R(StateDiskPath), 0o700),
		step{kind: stepStateDisk, source: c.StateDisk, target: R(StateDiskPath)},
		// The vTPM's command socket only: its control socket stays outside, so the node cannot reset its PCRs.
		dir(R(filepath.Dir(VTPMSocket)), 0o755),
		step{kind: stepTouch, target: R(VTPMSocket)},
		bind(c.VTPMSocket, R(VTPMSocket)),
		// The event log, read-only.
		dir(R(EventLogDir), 0o755),
		bind(c.EventLogDir, R(EventLogDir)),
		readOnly(R(EventLogDir)))

	// The node's identity and configuration, in its /etc.
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", c.NodeIP, c.Hostname)
	for _, f := range []struct{ path, data string }{
		{"etc/hostname", c.Hostname + "\n"},
		{"etc/hosts", hosts},
		{"etc/machine-id", c.MachineID + "\n"},
		{"etc/resolv.conf", "# The local provider's nodes have no route off this machine and no upstream DNS server.\n"},
		{ContainerdConfigPath[1:], c.ContainerdConfig},
		{"etc/constellation/.local", "This node is a local provider node (localprovider/node).\n"},
	} {
		steps = append(steps, dir(filepath.Dir(R(f.path)), 0o755), step{kind: stepWrite, target: R(f.path), data: f.data, mode: 0o644})
	}
	return append(steps, dir(R(CNIConfDir), 0o755))
}

// devSteps is the node's /dev at dev: a tmpfs with the host's device nodes bind-mounted, a private devpts,
// shm and mqueue, and the usual links.
func devSteps(dev string, devices []string) []step {
	steps := []step{{kind: stepMount, source: "dev", target: dev, fstype: "tmpfs", flags: unix.MS_NOSUID | unix.MS_STRICTATIME, data: "mode=755,size=65536k"}}
	for _, name := range devices {
		steps = append(steps, step{kind: stepTouch, target: filepath.Join(dev, name)},
			step{kind: stepMount, source: "/dev/" + name, target: filepath.Join(dev, name), flags: unix.MS_BIND})
	}
	for _, d := range []string{"pts", "shm", "mqueue"} {
		steps = append(steps, step{kind: stepMkdir, target: filepath.Join(dev, d), mode: 0o755})
	}
	steps = append(steps,
		step{kind: stepMount, source: "devpts", target: filepath.Join(dev, "pts"), fstype: "devpts", flags: unix.MS_NOSUID | unix.MS_NOEXEC, data: "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		step{kind: stepMount, source: "shm", target: filepath.Join(dev, "shm"), fstype: "tmpfs", flags: unix.MS_NOSUID | unix.MS_NODEV, data: "mode=1777"},
		step{kind: stepMount, source: "mqueue", target: filepath.Join(dev, "mqueue"), fstype: "mqueue", flags: msNoSuidDevExec})
	for _, name := range []string{"core", "fd", "ptmx", "stderr", "stdin", "stdout"} {
		target := map[string]string{
			"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
			"stderr": "/proc/self/fd/2", "core": "/proc/kcore",
		}[name]
		steps = append(steps, step{kind: stepSymlink, source: target, target: filepath.Join(dev, name)})
	}
	return steps
}

// hostDeviceNames returns the names of the host's device nodes a node gets: hostDevices and every loop
// device. A missing one is reported through missing and left out.
func hostDeviceNames(missing func(name string)) []string {
	names := slices.Clone(hostDevices)
	loops, _ := filepath.Glob("/dev/loop[0-9]*")
	for _, l := range loops {
		names = append(names, filepath.Base(l))
	}
	var present []string
	for _, name := range names {
		if _, err := os.Stat("/dev/" + name); err != nil {
			missing(name)
			continue
		}
		present = append(present, name)
	}
	return present
}

// apply carries out the steps in order and stops at the first failure.
func apply(steps []step) error {
	for _, s := range steps {
		if err := s.apply(); err != nil {
			return err
		}
	}
	return nil
}

func (s step) apply() error {
	switch s.kind {
	case stepMkdir:
		return os.MkdirAll(s.target, s.mode)
	case stepWrite:
		_ = os.Remove(s.target)
		return os.WriteFile(s.target, []byte(s.data), s.mode)
	case stepTouch:
		f, err := os.OpenFile(s.target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return err
		}
		return f.Close()
	case stepSymlink:
		return os.Symlink(s.source, s.target)
	case stepMount:
		if err := unix.Mount(s.source, s.target, s.fstype, s.flags, s.data); err != nil {
			return fmt.Errorf("mount %s on %s (type %q, data %q): %w", s.source, s.target, s.fstype, s.data, err)
		}
		return nil
	case stepStateDisk:
		_, err := statedisk.Mount(s.source, s.target)
		return err
	}
	return fmt.Errorf("unknown mount table step %d", s.kind)
}
