// Package role names a node's role in a cluster. The provider's metadata, the bootstrapper and the
// configuration's node groups all speak of roles with these values.
package role

import "fmt"

// Role is a node's role: ControlPlane or Worker.
type Role string

// The roles.
const (
	ControlPlane Role = "control-plane"
	Worker       Role = "worker"
)

// Parse accepts "control-plane" and "worker".
func Parse(s string) (Role, error) {
	switch r := Role(s); r {
	case ControlPlane, Worker:
		return r, nil
	}
	return "", fmt.Errorf("role %q: expected %q or %q", s, ControlPlane, Worker)
}
