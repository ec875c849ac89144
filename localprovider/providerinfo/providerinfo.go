// Package providerinfo is what the CLI needs to know of the local provider: its Terraform plugin's name (to
// install and require it) and the address of a cluster's bridge. It depends on the standard library only,
// so that the admin CLI can refer to the provider without linking the provider itself (the plugin SDK, the
// node runtime, netlink, ...).
package providerinfo

import "net/netip"

// Address is the provider's source address.
const Address = "registry.terraform.io/constellation-go/constellation"

// Version is the provider's version in the filesystem mirror; the modules pin it.
const Version = "0.1.0"

// LoadImageCommand is the provider binary's subcommand that imports a container image archive into a local
// node's containerd (`constellation mini image load`): provider-binary LoadImageCommand <cluster> <node>
// <archive>. It prints the image references the archive carried, one per line.
const LoadImageCommand = "load-image"

// BridgeAddr is the address the local provider gives a cluster's bridge in prefix: its first host address,
// where nodes reach the metadata API, the component server and the local KMS.
func BridgeAddr(prefix netip.Prefix) netip.Addr { return prefix.Masked().Addr().Next() }
