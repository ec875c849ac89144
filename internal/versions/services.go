package versions

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// ServicesVersion tags the services' images; the bootstrapper's defaults name the same tags.
const ServicesVersion = "v0.1.0-dev"

// Services are the services the init node deploys, by the name of their image archive (<name>.tar).
var Services = []string{"joinservice", "keyservice", "verificationservice", "operator"}

// ExtraSet is a component set served from Dir, beside a Kubernetes version's set.
type ExtraSet struct {
	Set ComponentSet
	Dir string
}

// ServiceSet serves the services' image archives in dir (<name>.tar each, as `make build` installs the
// Bazel-built images) as a component set, pinned to the hashes they have now.
func ServiceSet(dir string) (ExtraSet, error) {
	set := ComponentSet{Kubernetes: "services"}
	for _, name := range Services {
		archive := name + ".tar"
		path := filepath.Join(dir, archive)
		fi, err := os.Stat(path)
		if err != nil {
			return ExtraSet{}, fmt.Errorf("the %s image: %w (build it with 'make build')", name, err)
		}
		sum, err := file.SHA256(path)
		if err != nil {
			return ExtraSet{}, fmt.Errorf("the %s image: %w (build it with 'make build')", name, err)
		}
		set.Components = append(set.Components, Component{
			Name: archive, Kind: Image, Version: ServicesVersion, File: archive, SHA256: sum, Size: fi.Size(),
			Image:       "docker.io/constellation/" + name + ":" + ServicesVersion,
			InstallPath: NodeImageDir + "/" + archive, Mode: 0o644,
		})
	}
	return ExtraSet{Set: set, Dir: dir}, nil
}

// ComponentsAt returns the components of the Kubernetes version's pinned set (as this machine built it,
// see LocalComponents, whose notices it returns) and of the extra sets, with URLs on the component server
// at base (http://<bridge address>:<port>).
func ComponentsAt(base, kubernetesVersion string, extra []ExtraSet) ([]*components.Component, []string, error) {
	set, notices, err := LocalComponents(kubernetesVersion)
	if err != nil {
		return nil, nil, err
	}
	out := set.Proto(base, set.NodeComponents(true))
	for _, e := range extra {
		out = append(out, e.Set.Proto(base, e.Set.NodeComponents(true))...)
	}
	return out, notices, nil
}

// ClusterComponents are what a local cluster's first control plane installs and hands on to joining nodes:
// the Kubernetes version's pinned set and the services' images in servicesDir, with URLs on the component
// server at base. The notices say where this machine's build of the set differs from its pins.
func ClusterComponents(base, kubernetesVersion, servicesDir string) ([]*components.Component, []string, error) {
	services, err := ServiceSet(servicesDir)
	if err != nil {
		return nil, nil, err
	}
	version, err := ResolveKubernetes(kubernetesVersion)
	if err != nil {
		return nil, nil, err
	}
	return ComponentsAt(base, version, []ExtraSet{services})
}
