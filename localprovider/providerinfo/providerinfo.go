// Package providerinfo names the local provider's Terraform plugin: what the CLI needs to install and
// require it. It has no dependencies, so that the admin CLI can refer to the provider without linking the
// provider itself (the plugin SDK, the node runtime, netlink, ...).
package providerinfo

// Address is the provider's source address.
const Address = "registry.terraform.io/constellation-go/constellation"

// Version is the provider's version in the filesystem mirror; the modules pin it.
const Version = "0.1.0"
