// Package node runs a `local` provider node (docs/architecture.md §5 and §6): the node image's verified
// root, its own vTPM, containerd and bootstrapper, in namespaces of this machine.
//
// # A node
//
// A node is a process tree whose root, the node's init, runs in new mount, PID, UTS, IPC and cgroup
// namespaces and in the node's network namespace (package network). Its file system is the image's erofs
// root, verified and mounted by localprovider/launcher, made the root with pivot_root. The host keeps, per node,
// a state directory (Config.StateDir, by default /var/lib/constellation/local/<cluster>/<node>):
//
//	node.json            the running node: PIDs (with start times), cgroups, timings
//	vtpm/                the swtpm vTPM: state/, tpm.sock (TPM commands), ctrl.sock (control)
//	eventlog/            the TCG2 event log the launcher writes
//	state.img            the state disk: a sparse ext4 file with the encrypt feature (package statedisk)
//	logs/                init.log, containerd.log, bootstrapper.log, swtpm.log (appended)
//	rootfs/, scratch/    mount points used only while the node starts
//	init.sock            the init's control socket (Exec)
//
// # Start
//
// Start, in the calling (host) process: creates or completes the node's network (network.AddNode); creates
// the state disk if missing; starts swtpm (power-on: PCRs reset, persistent keys kept); launcher.Launch
// measures the image into the vTPM up to leave-initrd and verifies the root; launcher.Mount mounts it
// read-only at rootfs/ (mount propagation private); creates the node's cgroups; starts the init on a locked
// thread that has joined the node's network namespace and cgroups, with CLONE_NEWNS|NEWPID|NEWUTS|NEWIPC|
// NEWCGROUP; then follows the init's start-up over a socket pair and enters the launcher's phases:
//
//	parent → init   config (JSON)
//	init            mounts, pivot_root (below)
//	init → parent   phase sysinit     parent: unmounts its rootfs/ copy, Boot.EnterPhase(sysinit), ack
//	init            starts containerd, waits for its socket
//	init → parent   phase ready       parent: Boot.EnterPhase(ready), Boot.CompleteBoot (PCRs checked), ack
//	init            starts the bootstrapper
//	init → parent   running           parent: writes node.json, closes the socket pair
//
// A failure on either side ends the start (an "error" message, or the socket pair closing) and Start
// removes what it created, so a failed Start leaves the node stopped. After Start the node needs nothing
// from the calling process: swtpm and the init write to log files, not pipes, and run in their own sessions,
// so a short-lived caller (the CLI, a Terraform provider) may exit. Stop, Restart, Destroy and Exec work
// from any process through node.json and init.sock.
//
// # Inside the node
//
// Before pivot_root, the init (PID 1 of its PID namespace, hostname = node name) mounts, privately:
//
//	/            the verified erofs root, read-only
//	/etc, /var   overlayfs: the image's directory under a tmpfs upper layer (writable, seeded from the
//	             image, gone at stop); /etc gets hostname, hosts, machine-id, resolv.conf, containerd's
//	             config and an empty /etc/cni/net.d
//	/proc        the node's PID namespace; /proc/sys read-only except /proc/sys/net (the node's network
//	             namespace) and the kubelet's kernel tunables (below)
//	/sys         read-only; /sys/fs/cgroup a tmpfs with every cgroup v1 hierarchy of the host mounted in
//	             the node's cgroup namespace (see Cgroups)
//	/dev         tmpfs with bind mounts of the host's null zero full random urandom tty kmsg loop-control
//	             loop*, a private devpts, shm and mqueue
//	/run, /tmp   tmpfs
//	/var/lib/containerd            tmpfs (overlayfs cannot use an overlayfs as its upper layer)
//	/var/lib/constellation/state   the state disk (StateDiskPath), read-write ext4
//	/run/constellation/vtpm/sock   the vTPM's command socket (VTPMSocket), bind-mounted; the control
//	                               socket stays outside, so the node cannot reset its own PCRs
//	/run/constellation/eventlog/   the launcher's event log directory, read-only (EventLogPath); a
//	                               directory because the launcher replaces the log file at each phase
//
// After pivot_root the old root is detached, so nothing of the host's file system is visible, and / is
// made recursively shared within the node (the kubelet's mount propagation needs it).
//
// Kernel tunables: the kubelet sets vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
// kernel.panic_on_oops, kernel.keys.root_maxkeys and kernel.keys.root_maxbytes unless they already have its
// values. They are global to the machine (kernel.panic_on_oops=1 would panic the shared host on an oops),
// so the node's /proc/sys is read-only and these six are per-node files holding the kubelet's values, which
// the kubelet reads and leaves alone. Network sysctls are per network namespace and writable.
//
// # Cgroups
//
// The host has cgroup v1 (hybrid), so nodes use cgroupfs and kubelet's cgroupDriver: cgroupfs. Each node
// gets its own cgroup in every v1 hierarchy, below the cgroup of the process that started it:
// <caller's cgroup>/constellation/<cluster>/<node>, so the node is accounted with its caller. The init is
// started in that cgroup (its starting thread is moved there first) and with a new cgroup namespace rooted
// there, and mounts the hierarchies inside: the node sees its cgroup as "/", /proc/self/cgroup shows "/",
// and the kubelet's default cgroupRoot "/" puts kubepods below the node's cgroup. Two nodes cannot collide,
// and every cgroup the node's kubelet and runc create is removed by Stop. The v2 hierarchy of the hybrid
// set-up (/sys/fs/cgroup/unified) is not mounted in the node, so runc and the kubelet see pure v1.
//
// # Services
//
// The init supervises two services and restarts either when it exits (1 s backoff, doubling to 30 s; back
// to 1 s after a minute of running), with their output appended to the host's logs/<service>.log:
//
//   - containerd (/usr/bin/containerd --config /etc/containerd/config.toml): CRI with
//     restrict_oom_score_adj = true (this machine lacks CAP_SYS_RESOURCE), runc with cgroupfs
//     (SystemdCgroup = false), the overlayfs snapshotter on the /var/lib/containerd tmpfs, CNI plugins from
//     /usr/lib/cni, configurations in /etc/cni/net.d, the sandbox image Config.SandboxImage
//     (registry.k8s.io/pause:3.10 by default). Socket: ContainerdSocket.
//   - the bootstrapper (/usr/bin/bootstrapper, Config.BootstrapperArgs as arguments), configured by
//     BOOTSTRAPPER_* environment variables that internal/service.ParseFlags maps onto flags of the same
//     name (so a bootstrapper that lacks one of these flags still starts); see BootstrapperEnv.
//
// The init is also PID 1: it reaps orphans, and on SIGTERM stops the bootstrapper, then containerd (SIGTERM,
// then SIGKILL after 10 s), kills whatever else runs in the node, syncs and unmounts the state disk, and
// exits; the kernel then kills nothing more (the PID namespace is empty) and the node's mount namespace,
// with its mounts and the loop devices behind them, goes away.
//
// # Stop, Restart, Destroy
//
// Stop sends the init SIGTERM, waits (Config.StopTimeout), then SIGKILLs it, which kills the whole PID
// namespace; stops swtpm; removes the node's cgroups (children first) and unmounts anything the host
// still has. Restart is Stop then Start: a new vTPM power cycle, a new launch and verification, the state
// disk kept. Destroy also removes the node's network and its state directory. Remains lists what is left.
//
// # Exec
//
// Exec runs a command in a running node through the init's control socket: the init starts it as its own
// child (so it is in every namespace, the cgroup and the root of the node) with the caller's file
// descriptors as its standard input, output and error (passed with SCM_RIGHTS), and reports its exit
// status. Closing the connection kills the command.
//
// # Not a security boundary
//
// The node runs as root without a user namespace, with CAP_SYS_ADMIN, the host's loop devices and
// /dev/kmsg: it is isolated for correctness (its own network, mounts, cgroups, keys) but a malicious node
// can reach the host. The local provider is for development and testing on a trusted machine; the host can
// read everything the node holds in memory.
package node
