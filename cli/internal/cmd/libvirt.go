package cmd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// libvirtSocket is where a system libvirtd listens.
const libvirtSocket = "/run/libvirt/libvirt-sock"

// ensureLibvirtd starts virtlogd and libvirtd for a local qemu:///system URI when none runs (machines
// without systemd have nobody else to start them).
func ensureLibvirtd(ctx context.Context, uri string) error {
	if !strings.HasPrefix(uri, "qemu:///system") {
		return nil
	}
	if _, err := os.Stat(libvirtSocket); err == nil {
		return nil
	}
	for _, daemon := range []string{"virtlogd", "libvirtd"} {
		bin, err := exec.LookPath(daemon)
		if err != nil {
			return fmt.Errorf("the qemu provider needs libvirt, and %s is not installed: apt-get install libvirt-daemon-system", daemon)
		}
		if out, err := exec.CommandContext(ctx, bin, "-d").CombinedOutput(); err != nil {
			return fmt.Errorf("starting %s: %w: %s", daemon, err, out)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(libvirtSocket); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("libvirtd started but %s did not appear within 30 s", libvirtSocket)
}
