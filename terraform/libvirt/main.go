//go:build ignore

// The libvirt Terraform provider (github.com/dmacvicar/terraform-provider-libvirt, pinned in go.mod.pin),
// built from the Go module proxy by build.sh: its repository's own main package cannot be imported, so this
// file serves the provider the same way.
package main

import (
	"github.com/dmacvicar/terraform-provider-libvirt/libvirt"
	"github.com/hashicorp/terraform-plugin-sdk/v2/plugin"
)

func main() {
	defer libvirt.CleanupLibvirtConnections()
	plugin.Serve(&plugin.ServeOpts{ProviderFunc: libvirt.Provider})
}
