package cloudcmd

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEnsureLibvirtd(t *testing.T) {
	dir := t.TempDir()
	oldLibvirt, oldVirtlogd := libvirtSocket, virtlogdSocket
	t.Cleanup(func() { libvirtSocket, virtlogdSocket = oldLibvirt, oldVirtlogd })
	libvirtSocket, virtlogdSocket = filepath.Join(dir, "libvirt-sock"), filepath.Join(dir, "virtlogd-sock")
	t.Setenv("PATH", t.TempDir()) // no libvirt binaries

	// A remote or session URI is not ours to start.
	assert.NoError(t, ensureLibvirtd(context.Background(), "qemu+ssh://host/system"))
	// Not running and not installed: say what to install.
	err := ensureLibvirtd(context.Background(), "qemu:///system")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "apt-get install libvirt-daemon-system")
	// Running: nothing is started.
	for _, s := range []string{libvirtSocket, virtlogdSocket} {
		require.NoError(t, os.WriteFile(s, nil, 0o600))
	}
	assert.NoError(t, ensureLibvirtd(context.Background(), "qemu:///system"))
}

func TestCheckQEMUHostTools(t *testing.T) {
	bin := t.TempDir()
	t.Setenv("PATH", bin)
	err := checkQEMUHostTools()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "needs xsltproc and swtpm and swtpm_setup and swtpm_ioctl on this machine: "+
		"apt-get install xsltproc swtpm swtpm-tools")

	for _, tool := range []string{"xsltproc", "swtpm", "swtpm_setup"} {
		require.NoError(t, os.WriteFile(filepath.Join(bin, tool), []byte("#!/bin/sh\n"), 0o755))
	}
	err = checkQEMUHostTools()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "needs swtpm_ioctl on this machine: apt-get install swtpm-tools", "libvirt needs both swtpm tools")

	require.NoError(t, os.WriteFile(filepath.Join(bin, "swtpm_ioctl"), []byte("#!/bin/sh\n"), 0o755))
	assert.NoError(t, checkQEMUHostTools())
}
