// Package metadata holds what the bootstrapper learns about its node and its peers from the provider's
// metadata API, and picks the client of the provider the node runs on (New). The bootstrapper's packages
// declare small interfaces over these types.
package metadata

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/constellation-go/constellation/internal/cloudprovider"

	"github.com/constellation-go/constellation/internal/role"
	localmetadata "github.com/constellation-go/constellation/localprovider/metadata"
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

// Client is a provider's metadata API as the bootstrapper sees it.
type Client interface {
	Self(ctx context.Context) (Instance, error)
	List(ctx context.Context) ([]Instance, error)
	InitSecretHash(ctx context.Context) ([]byte, error)
}

// Config selects the provider's metadata client and carries what the node runtime already said about the
// node (flags of the bootstrapper); a non-empty Name, IP or PodCIDR overrides the API's answer.
type Config struct {
	Provider          cloudprovider.Provider
	URL               string
	Name, IP, PodCIDR string
}

// New returns the metadata client of cfg.Provider.
func New(cfg Config) (Client, error) {
	switch cfg.Provider {
	case cloudprovider.Local:
	default:
		return nil, fmt.Errorf("no metadata client for provider %q in this bootstrapper (it supports %s)", cfg.Provider, cloudprovider.Local)
	}
	if cfg.URL == "" {
		return nil, errors.New("the metadata API's URL is required for the local provider")
	}
	md := Local{Client: localmetadata.NewClient(cfg.URL, nil), Name: cfg.Name}
	var errs []error
	if cfg.IP != "" {
		ip, err := netip.ParseAddr(cfg.IP)
		if err != nil {
			errs = append(errs, fmt.Errorf("node IP: %w", err))
		}
		md.IP = ip
	}
	if cfg.PodCIDR != "" {
		p, err := netip.ParsePrefix(cfg.PodCIDR)
		if err != nil {
			errs = append(errs, fmt.Errorf("pod CIDR: %w", err))
		}
		md.PodCIDR = p
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return md, nil
}

// WaitForSelf asks the metadata API about this node until it answers with a valid instance or ctx ends:
// the node can do nothing without it.
func WaitForSelf(ctx context.Context, c Client, retry time.Duration, log *slog.Logger) (Instance, error) {
	for {
		self, err := c.Self(ctx)
		if err == nil {
			err = self.Validate()
		}
		if err == nil {
			return self, nil
		}
		log.Warn("asking the metadata API about this node; retrying", "error", err)
		select {
		case <-ctx.Done():
			return Instance{}, ctx.Err()
		case <-time.After(retry):
		}
	}
}

// Local adapts the local provider's metadata API client (localprovider/metadata) to the
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
