// Package metadata holds what the bootstrapper learns about its node and its peers from the provider's
// metadata API. The bootstrapper's packages declare small interfaces over these types; cmd/bootstrapper
// adapts the provider's client to them.
package metadata

import (
	"context"
	"fmt"
	"net/netip"

	localmetadata "github.com/constellation-go/constellation/internal/cloud/local/metadata"
	"github.com/constellation-go/constellation/internal/role"
)

// Instance is one node as the provider describes it.
type Instance struct {
	// Name is the node's name; it becomes the Kubernetes node name.
	Name string
	Role role.Role
	// IP is the node's address on the cluster network. Nodes have no default route, so every component is
	// told this address explicitly.
	IP netip.Addr
	// PodCIDR is the node's pod address range.
	PodCIDR netip.Prefix
}

// Validate checks the fields the bootstrapper relies on.
func (i Instance) Validate() error {
	if i.Name == "" {
		return fmt.Errorf("instance has no name")
	}
	if _, err := role.Parse(string(i.Role)); err != nil {
		return fmt.Errorf("instance %s: %w", i.Name, err)
	}
	if !i.IP.IsValid() {
		return fmt.Errorf("instance %s has no IP address", i.Name)
	}
	return nil
}

// Local adapts the local provider's metadata API client (internal/cloud/local/metadata) to the
// bootstrapper's types. Non-zero Name, IP and PodCIDR override what the API says about this node (the node
// runtime also passes them as flags).
type Local struct {
	Client  *localmetadata.Client
	Name    string
	IP      netip.Addr
	PodCIDR netip.Prefix
}

// Self returns this node.
func (l Local) Self(ctx context.Context) (Instance, error) {
	in, err := l.Client.Self(ctx)
	if err != nil {
		return Instance{}, err
	}
	self := fromLocal(in)
	if l.Name != "" {
		self.Name = l.Name
	}
	if l.IP.IsValid() {
		self.IP = l.IP
	}
	if l.PodCIDR.IsValid() {
		self.PodCIDR = l.PodCIDR
	}
	return self, nil
}

// List returns every node of the cluster.
func (l Local) List(ctx context.Context) ([]Instance, error) {
	ins, err := l.Client.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Instance, 0, len(ins))
	for _, in := range ins {
		out = append(out, fromLocal(in))
	}
	return out, nil
}

// InitSecretHash returns the SHA-256 of the init secret.
func (l Local) InitSecretHash(ctx context.Context) ([]byte, error) {
	return l.Client.InitSecretHash(ctx)
}

func fromLocal(in localmetadata.Instance) Instance {
	return Instance{Name: in.Name, Role: in.Role, IP: in.IP, PodCIDR: in.PodCIDR}
}
