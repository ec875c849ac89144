package cmd

import (
	"context"

	"github.com/constellation-go/constellation/cli/internal/terraform"
	"github.com/constellation-go/constellation/internal/config"
)

// infrastructure creates and destroys a cluster's machines. Terraform does it (cloudcmd.Terraform); tests use
// a fake.
type infrastructure interface {
	// Apply creates or completes the infrastructure of cfg and returns the module's outputs. It is
	// idempotent: after an interruption, calling it again continues.
	Apply(ctx context.Context, cfg *config.Config) (terraform.Outputs, error)
	// Outputs returns the outputs of the created infrastructure.
	Outputs(ctx context.Context) (terraform.Outputs, error)
	// Identity returns the resources' UID and the init secret the first control plane expects from
	// `apply`, as the last Apply used them.
	Identity() (uid string, initSecret []byte, err error)
	// Destroy removes everything Apply created.
	Destroy(ctx context.Context) error
	// NodeImages returns the image each node runs, as the last Apply rendered it (local provider).
	NodeImages() (map[string]string, error)
	// MoveNode reboots one node into another image, its state disk kept (local provider): one step of a
	// roll-out. Every other node keeps its image.
	MoveNode(ctx context.Context, cfg *config.Config, node, image string) (terraform.Outputs, error)
	// LoadImage imports a container image archive into a running node's containerd (local provider) and
	// returns the image references it carried.
	LoadImage(ctx context.Context, cfg *config.Config, node, archive string) ([]string, error)
}
