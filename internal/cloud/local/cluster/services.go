package cluster

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/versions"
)

// ServicesVersion tags the services' images; the bootstrapper's defaults name the same tags.
const ServicesVersion = "v0.1.0-dev"

// Services are the services the init node deploys, by the name of their image archive (<name>.tar).
var Services = []string{"joinservice", "keyservice", "verificationservice"}

// ServiceSet serves the services' image archives in dir (<name>.tar each, as `make build` installs the
// Bazel-built images) as a component set, pinned to the hashes they have now.
func ServiceSet(dir string) (ExtraSet, error) {
	set := versions.ComponentSet{Kubernetes: "services"}
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
		set.Components = append(set.Components, versions.Component{
			Name: archive, Kind: versions.Image, Version: ServicesVersion, File: archive, SHA256: sum, Size: fi.Size(),
			Image:       "docker.io/constellation/" + name + ":" + ServicesVersion,
			InstallPath: versions.NodeImageDir + "/" + archive, Mode: 0o644,
		})
	}
	return ExtraSet{Set: set, Dir: dir}, nil
}
