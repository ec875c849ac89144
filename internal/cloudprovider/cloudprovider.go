// Package cloudprovider names the infrastructure providers a cluster can run on.
package cloudprovider

import (
	"fmt"
	"strings"
)

// Provider is an infrastructure provider. The zero value is Unknown.
type Provider string

const (
	// Unknown is no provider; it never validates.
	Unknown Provider = ""
	// Local runs each node in network and mount namespaces on this machine.
	Local Provider = "local"
	// QEMU runs each node as a libvirt/QEMU VM with OVMF and swtpm.
	QEMU Provider = "qemu"
	// AWS runs nodes as confidential EC2 instances.
	AWS Provider = "aws"
	// GCP runs nodes as confidential Compute Engine instances.
	GCP Provider = "gcp"
	// Azure runs nodes as confidential Azure VMs.
	Azure Provider = "azure"
)

// All lists every provider in the order the CLI presents them.
func All() []Provider {
	return []Provider{Local, QEMU, AWS, GCP, Azure}
}

// Names returns the names of All, for help texts and shell completion.
func Names() []string {
	all := All()
	names := make([]string, len(all))
	for i, p := range all {
		names[i] = string(p)
	}
	return names
}

// Parse returns the provider with the given name (case-insensitive).
func Parse(name string) (Provider, error) {
	lower := strings.ToLower(strings.TrimSpace(name))
	for _, p := range All() {
		if string(p) == lower {
			return p, nil
		}
	}
	return Unknown, fmt.Errorf("unknown provider %q: choose one of %s", name, strings.Join(Names(), ", "))
}

// IsCloud reports whether the provider is a public cloud, where zones and instance types are required.
func (p Provider) IsCloud() bool {
	return p == AWS || p == GCP || p == Azure
}

func (p Provider) String() string {
	return string(p)
}
