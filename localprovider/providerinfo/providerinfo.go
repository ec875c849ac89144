// Package providerinfo names the local provider's Terraform plugin: what the CLI needs to install and
// require it. It has no dependencies, so that the admin CLI can refer to the provider without linking the
// provider itself (the plugin SDK, the node runtime, netlink, ...).
package providerinfo

// Address is the provider's source address.
const Address = "registry.terraform.io/constellation-go/constellation"

// Version is the provider's version in the filesystem mirror; the modules pin it.
const Version = "0.1.0"

// LoadImageCommand is the provider binary's subcommand that imports a container image archive into a local
// node's containerd (`constellation mini image load`): provider-binary LoadImageCommand <cluster> <node>
// <archive>. It prints the image references the archive carried, one per line.
const LoadImageCommand = "load-image"
