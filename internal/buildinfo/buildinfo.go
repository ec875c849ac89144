// Package buildinfo reports what a binary was built from. It reads nothing that changes between two builds
// of the same source (no build time), so builds stay reproducible.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Set with -ldflags "-X github.com/constellation-go/constellation/internal/buildinfo.Version=..." (and
// .Commit) by release builds; Bazel sets them from the workspace status when stamping.
var (
	Version = "v0.1.0-dev"
	Commit  = ""
	// TreeState is "dirty" when the build had uncommitted changes.
	TreeState = ""
)

// Info describes a build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the build's information. Without a linker-set commit it falls back to the VCS data that
// `go build` embeds.
func Get() Info {
	info := Info{
		Version:   Version,
		Commit:    Commit,
		Modified:  TreeState == "dirty",
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
	if info.Commit != "" {
		return info
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}
