// Package versions pins the Kubernetes versions this release can install and, for each, every component
// (binaries and container images) with its sha256, as bazel/kubernetes/build.sh builds them reproducibly
// from source; bazel/kubernetes/pin.sh generates the pins (pinned_components.go) from a real build.
package versions

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/mod/semver"
)

// DefaultKubernetes is the Kubernetes version a new configuration uses.
const DefaultKubernetes = "v1.33.13"

// supportedKubernetes lists the full versions this release can install, oldest first: those whose
// components are built and pinned.
var supportedKubernetes = pinnedVersions()

// SupportedKubernetes returns the Kubernetes versions this release can install, oldest first.
func SupportedKubernetes() []string {
	return slices.Clone(supportedKubernetes)
}

// ResolveKubernetes accepts a full version ("v1.33.13") or a minor version ("1.33", "v1.33") and returns the
// supported full version it names.
func ResolveKubernetes(version string) (string, error) {
	v := strings.TrimSpace(version)
	if v != "" && !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	if !semver.IsValid(v) {
		return "", fmt.Errorf("kubernetes version %q is not a version like v1.33 or v1.33.13; supported: %s",
			version, strings.Join(supportedKubernetes, ", "))
	}
	// A minor version picks the newest supported patch of it.
	for i := len(supportedKubernetes) - 1; i >= 0; i-- {
		s := supportedKubernetes[i]
		if v == s || (semver.Canonical(v) != v && semver.MajorMinor(s) == v) {
			return s, nil
		}
	}
	return "", fmt.Errorf("kubernetes version %q is not supported by this release; supported: %s",
		version, strings.Join(supportedKubernetes, ", "))
}
