// Package upgrade decides what a running cluster may move to: Kubernetes versions this release pins (a
// newer patch, or the next minor; never backwards and never past the next minor, as kubeadm supports) and
// node images (by the PCRs a new image changes). The CLI's `upgrade check` prints it; `apply` enforces
// CheckKubernetes before it rolls anything out, and so does every node's agent before it runs kubeadm.
package upgrade

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/mod/semver"

	"github.com/constellation-go/constellation/internal/measurements"
)

var (
	// ErrDowngrade refuses a move to an older Kubernetes version: kubeadm cannot downgrade a control plane.
	ErrDowngrade = errors.New("kubernetes downgrades are not supported")
	// ErrSkipsMinor refuses a move past the next minor version: kubeadm upgrades one minor at a time.
	ErrSkipsMinor = errors.New("kubernetes upgrades go one minor version at a time")
)

// Kinds of a Kubernetes move.
const (
	KindPatch = "patch"
	KindMinor = "minor"
)

// KubernetesTarget is a Kubernetes version a cluster may move to.
type KubernetesTarget struct {
	Version string `json:"version"`
	// Kind is KindPatch (the same minor) or KindMinor (the next one).
	Kind string `json:"kind"`
}

// CheckKubernetes tells whether a cluster at from may move to to; nil for the same version.
func CheckKubernetes(from, to string) error {
	for _, v := range []string{from, to} {
		if !semver.IsValid(v) {
			return fmt.Errorf("%q is not a Kubernetes version like v1.33.13", v)
		}
	}
	if semver.Compare(to, from) < 0 {
		return fmt.Errorf("%w: the cluster runs %s, the target is %s", ErrDowngrade, from, to)
	}
	if next := nextMinor(from); semver.Compare(semver.MajorMinor(to), next) > 0 {
		return fmt.Errorf("%w: the cluster runs %s, so it can move to %s.x at most, not %s; upgrade to %s first",
			ErrSkipsMinor, from, next, to, next)
	}
	return nil
}

// KubernetesTargets lists the versions of supported a cluster at current may move to, oldest first.
func KubernetesTargets(current string, supported []string) ([]KubernetesTarget, error) {
	if !semver.IsValid(current) {
		return nil, fmt.Errorf("%q is not a Kubernetes version like v1.33.13", current)
	}
	var out []KubernetesTarget
	for _, v := range supported {
		if semver.Compare(v, current) <= 0 || CheckKubernetes(current, v) != nil {
			continue
		}
		kind := KindMinor
		if semver.MajorMinor(v) == semver.MajorMinor(current) {
			kind = KindPatch
		}
		out = append(out, KubernetesTarget{Version: v, Kind: kind})
	}
	slices.SortFunc(out, func(a, b KubernetesTarget) int { return semver.Compare(a.Version, b.Version) })
	return out, nil
}

// nextMinor returns the minor version after v's, e.g. v1.34 for v1.33.13.
func nextMinor(v string) string {
	var major, minor int
	_, _ = fmt.Sscanf(semver.MajorMinor(v), "v%d.%d", &major, &minor)
	return fmt.Sprintf("v%d.%d", major, minor+1)
}

// ChangedPCRs lists the PCRs whose expected values differ between the measurements a cluster trusts and
// those of a candidate image, or that only one of them has, sorted. None: the candidate is the same image.
func ChangedPCRs(trusted, candidate measurements.M) []uint32 {
	var out []uint32
	for idx, m := range candidate {
		if t, ok := trusted[idx]; !ok || !bytes.Equal(t.Expected, m.Expected) {
			out = append(out, idx)
		}
	}
	for idx := range trusted {
		if _, ok := candidate[idx]; !ok {
			out = append(out, idx)
		}
	}
	slices.Sort(out)
	return out
}
