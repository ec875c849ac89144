package cloudcmd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Where the system libvirtd and virtlogd listen (variables for tests).
var (
	libvirtSocket  = "/run/libvirt/libvirt-sock"
	virtlogdSocket = "/run/libvirt/virtlogd-sock"
)

// qemuHostTools are what the qemu module runs on this machine besides libvirt, with their Debian packages:
// the libvirt provider applies the domains' XML stylesheet (the external vTPM) with xsltproc, and the
// project's provider runs the nodes' certified vTPMs with swtpm. libvirt offers its external TPM backend
// only where swtpm_setup and swtpm_ioctl are in its PATH too (otherwise: "does not support TPM backend
// type external"), although it starts neither for an external vTPM.
var qemuHostTools = []struct{ name, pkg string }{
	{"xsltproc", "xsltproc"}, {"swtpm", "swtpm"}, {"swtpm_setup", "swtpm-tools"}, {"swtpm_ioctl", "swtpm-tools"},
}

// checkQEMUHostTools fails before Terraform runs if a tool of qemuHostTools is missing, naming all of them.
func checkQEMUHostTools() error {
	var missing, pkgs []string
	for _, tool := range qemuHostTools {
		if _, err := exec.LookPath(tool.name); err != nil {
			missing = append(missing, tool.name)
			if !slices.Contains(pkgs, tool.pkg) {
				pkgs = append(pkgs, tool.pkg)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the qemu provider needs %s on this machine: apt-get install %s", strings.Join(missing, " and "), strings.Join(pkgs, " "))
	}
	return nil
}

// ensureLibvirtd starts virtlogd and libvirtd for a local qemu:///system URI when none runs (machines
// without systemd have nobody else to start them).
func ensureLibvirtd(ctx context.Context, uri string) error {
	if !strings.HasPrefix(uri, "qemu:///system") {
		return nil
	}
	if _, err := os.Stat(libvirtSocket); err == nil {
		return nil
	}
	// Each daemon is started only if its socket is missing: a second instance fails on the pid file.
	for _, d := range []struct{ name, socket string }{{"virtlogd", virtlogdSocket}, {"libvirtd", libvirtSocket}} {
		if _, err := os.Stat(d.socket); err == nil {
			continue
		}
		bin, err := exec.LookPath(d.name)
		if err != nil {
			return fmt.Errorf("the qemu provider needs libvirt, and %s is not installed: apt-get install libvirt-daemon-system qemu-utils dnsmasq-base", d.name)
		}
		if out, err := exec.CommandContext(ctx, bin, "-d").CombinedOutput(); err != nil {
			return fmt.Errorf("starting %s: %w: %s", d.name, err, out)
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
