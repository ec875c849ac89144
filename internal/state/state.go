// Package state defines constellation-state.yaml: what the CLI learned about a cluster's infrastructure and
// its cluster-wide values. Commands read it to find the cluster and write it back atomically, so an
// interrupted command never leaves a half-written state behind.
package state

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"

	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
)

const (
	// FileName is the state file's name in the workspace.
	FileName = "constellation-state.yaml"
	// AdminConfFileName is the admin kubeconfig's name in the workspace, which init writes.
	AdminConfFileName = "constellation-admin.conf"
	// Version1 is the current schema version.
	Version1 = "v1"
)

// ErrInvalid marks a state file that was read but does not validate.
var ErrInvalid = errors.New("invalid state")

// State is the content of constellation-state.yaml.
type State struct {
	Version        string         `yaml:"version"`
	Infrastructure Infrastructure `yaml:"infrastructure"`
	ClusterValues  ClusterValues  `yaml:"clusterValues"`
	// Rollout is set while `constellation apply` moves the nodes to another image.
	Rollout *Rollout `yaml:"rollout,omitempty"`
	// LoadedImages are the container image archives `constellation mini image load` put into the nodes
	// (local nodes reach no registry and forget their images when they restart): a roll-out loads them
	// into each node it moved again.
	LoadedImages []LoadedImage `yaml:"loadedImages,omitempty"`
	// AuditAnchors are, per control plane, the last audit log entry `constellation audit verify` saw: the
	// log must still contain it (a log cut short or replaced is detected).
	AuditAnchors map[string]AuditAnchor `yaml:"auditAnchors,omitempty"`
}

// AuditAnchor is an entry of a control plane's audit log: its sequence number and hash.
type AuditAnchor struct {
	Seq  uint64 `yaml:"seq"`
	Hash string `yaml:"hash"`
}

// LoadedImage is a container image archive loaded into the nodes.
type LoadedImage struct {
	// Path is the archive's absolute path.
	Path string `yaml:"path"`
	// SHA256 is the archive's hex digest when it was loaded: a changed file is not loaded again unasked.
	SHA256 string `yaml:"sha256"`
	// Refs are the image references it carried.
	Refs []string `yaml:"refs"`
}

// Rollout records what the admin trusted before a roll-out to another node image, so that `verify` accepts
// a node still on that image until the roll-out finished. It comes from the admin's own configuration,
// never from the cluster.
type Rollout struct {
	// PreviousMeasurements are the measurements of the image the nodes move away from.
	PreviousMeasurements measurements.M `yaml:"previousMeasurements"`
	// Image is the image directory the nodes move to.
	Image string `yaml:"image"`
}

// Infrastructure is what `create` learned from the provider.
type Infrastructure struct {
	UID               string   `yaml:"uid"`
	Provider          string   `yaml:"provider"`
	Name              string   `yaml:"name"`
	ClusterEndpoint   string   `yaml:"clusterEndpoint"`
	InClusterEndpoint string   `yaml:"inClusterEndpoint"`
	InitSecretHash    HexBytes `yaml:"initSecretHash"`
	APIServerCertSANs []string `yaml:"apiServerCertSANs"`
	IPCidrNode        string   `yaml:"ipCidrNode"`
	// Nodes are the nodes the infrastructure created, by name.
	Nodes map[string]Node `yaml:"nodes,omitempty"`
}

// Node is a node of the infrastructure.
type Node struct {
	IP   string `yaml:"ip"`
	Role string `yaml:"role"`
}

// ClusterValues is what `apply` learned from initialising the cluster.
type ClusterValues struct {
	ClusterID       HexBytes `yaml:"clusterID"`
	OwnerID         HexBytes `yaml:"ownerID"`
	MeasurementSalt HexBytes `yaml:"measurementSalt"`
}

// New returns an empty state of the current version.
func New() *State {
	return &State{Version: Version1}
}

// HasInfrastructure reports whether `create` has completed.
func (s *State) HasInfrastructure() bool {
	return s.Infrastructure.UID != ""
}

// IsInitialized reports whether the cluster has been initialised.
func (s *State) IsInitialized() bool {
	return len(s.ClusterValues.ClusterID) > 0
}

var uidRe = regexp.MustCompile(`^[a-z0-9]{1,16}$`)

const (
	idSize   = 32
	saltSize = 32
	hashSize = 32
)

// Validate checks the state and returns every problem found.
func (s *State) Validate() error {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("field %q: %s", field, fmt.Sprintf(format, args...)))
	}
	if s.Version != Version1 {
		fail("version", "unsupported state version %q: this CLI reads %s", s.Version, Version1)
	}
	inf := s.Infrastructure
	if s.HasInfrastructure() {
		if !uidRe.MatchString(inf.UID) {
			fail("infrastructure.uid", "%q must be 1 to 16 lower-case letters and digits", inf.UID)
		}
		if _, err := cloudprovider.Parse(inf.Provider); err != nil {
			fail("infrastructure.provider", "%v", err)
		}
		if inf.ClusterEndpoint == "" {
			fail("infrastructure.clusterEndpoint", "must be set")
		}
		if len(inf.InitSecretHash) != hashSize {
			fail("infrastructure.initSecretHash", "must be %d bytes, got %d", hashSize, len(inf.InitSecretHash))
		}
		for name, n := range inf.Nodes {
			if _, err := netip.ParseAddr(n.IP); err != nil {
				fail("infrastructure.nodes."+name+".ip", "%q is not an IP address", n.IP)
			}
			if n.Role != config.RoleControlPlane && n.Role != config.RoleWorker {
				fail("infrastructure.nodes."+name+".role", "%q is not %s or %s", n.Role, config.RoleControlPlane, config.RoleWorker)
			}
		}
		if inf.IPCidrNode != "" {
			if _, err := netip.ParsePrefix(inf.IPCidrNode); err != nil {
				fail("infrastructure.ipCidrNode", "%q is not a prefix like 10.42.0.0/24", inf.IPCidrNode)
			}
		}
	}
	cv := s.ClusterValues
	if s.IsInitialized() {
		if !s.HasInfrastructure() {
			fail("clusterValues", "set although no infrastructure is recorded")
		}
		if len(cv.ClusterID) != idSize {
			fail("clusterValues.clusterID", "must be %d bytes, got %d", idSize, len(cv.ClusterID))
		}
		if len(cv.OwnerID) != idSize {
			fail("clusterValues.ownerID", "must be %d bytes, got %d", idSize, len(cv.OwnerID))
		}
		if len(cv.MeasurementSalt) != saltSize {
			fail("clusterValues.measurementSalt", "must be %d bytes, got %d", saltSize, len(cv.MeasurementSalt))
		}
	}
	return errors.Join(errs...)
}

// Read loads and validates the state file at name.
func Read(fh file.Handler, name string) (*State, error) {
	var s State
	if err := fh.ReadYAML(name, &s); err != nil {
		return nil, fmt.Errorf("reading the state: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w:\n%w", name, ErrInvalid, err)
	}
	return &s, nil
}

// Write validates the state and replaces the file at name atomically.
func (s *State) Write(fh file.Handler, name string) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("refusing to write %s: %w:\n%w", name, ErrInvalid, err)
	}
	if err := fh.WriteYAML(name, s, file.OptOverwrite); err != nil {
		return fmt.Errorf("writing the state: %w", err)
	}
	return nil
}

// HexBytes is a byte string encoded as hex in YAML.
type HexBytes []byte

// MarshalYAML encodes the bytes as hex.
func (h HexBytes) MarshalYAML() (any, error) {
	return hex.EncodeToString(h), nil
}

// UnmarshalYAML decodes hex.
func (h *HexBytes) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a hex string", node.Line)
	}
	b, err := hex.DecodeString(node.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not hex: %w", node.Line, node.Value, err)
	}
	*h = b
	return nil
}

func (h HexBytes) String() string {
	return hex.EncodeToString(h)
}
