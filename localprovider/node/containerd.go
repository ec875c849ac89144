package node

import (
	"fmt"
	"strconv"
)

// containerdConfig returns the node's containerd configuration (containerd 1.6, version 2 format).
//
//   - restrict_oom_score_adj: this machine lacks CAP_SYS_RESOURCE, so lowering a process's OOM score
//     fails; without it every pod fails ("can't get final child's PID from pipe", docs/architecture.md §8).
//   - runc with cgroupfs (SystemdCgroup = false): there is no systemd, and the kubelet uses cgroupfs.
//   - the overlayfs snapshotter on the /var/lib/containerd tmpfs (overlayfs needs an upper layer that is not
//     itself overlayfs, which /var is); the snapshotters that cannot work here are disabled.
//   - CNI plugins from Debian's containernetworking-plugins, configurations from /etc/cni/net.d.
func containerdConfig(sandboxImage string) string {
	return fmt.Sprintf(`# Written by the local provider's node runtime (localprovider/node).
version = 2
root = %[1]s
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = %[2]s

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %[3]s
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %[4]s
      conf_dir = %[5]s
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`, strconv.Quote(ContainerdRoot), strconv.Quote(ContainerdSocket), strconv.Quote(sandboxImage),
		strconv.Quote(CNIBinDir), strconv.Quote(CNIConfDir))
}
