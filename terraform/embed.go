// Package terraform holds the infrastructure modules, one directory per provider, which the CLI embeds
// and renders into a workspace, and (in provider/) the project's own Terraform provider.
package terraform

import "embed"

// Modules are the modules by provider name: local, qemu, aws, gcp, azure.
//
//go:embed all:local all:qemu all:aws all:gcp all:azure
var Modules embed.FS
