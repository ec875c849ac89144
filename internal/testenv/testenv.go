// Package testenv is the one gate for tests that need something outside Go: a tool (swtpm, containerd,
// terraform, veritysetup, ...), root, built artifacts (the node image, Kubernetes binaries and images).
//
// Without it such a test skips and says how to get it, so `go test ./...` works on any machine. In strict
// mode it fails instead: CI (CI set) and `make go-test` (StrictEnv set) must not pass by skipping. Under
// `bazel test` (TEST_SRCDIR set) nothing is strict: its sandbox has few of the tools and no root outside it,
// and the host's `make go-test` runs the same tests strictly.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	// StrictEnv makes every missing prerequisite a failure (`make go-test` sets it).
	StrictEnv = "CONSTELLATION_TEST_STRICT"
	// ImageDirEnv names a node image directory (make image's out/image) for tests that boot the image.
	ImageDirEnv = "CONSTELLATION_IMAGE_DIR"
)

// Debian's systemd-boot-efi files (systemd 252 on the host, as in the node image): the UKI stub, and
// systemd-boot's EFI binary, which tests use as a boot loader and as a stand-in PE for a kernel.
const (
	SystemdEFIDir = "/usr/lib/systemd/boot/efi"
	SystemdStub   = SystemdEFIDir + "/linuxx64.efi.stub"
	SystemdBoot   = SystemdEFIDir + "/systemd-bootx64.efi"
)

// UnderBazel tells whether the test runs under `bazel test`.
func UnderBazel() bool {
	return os.Getenv("TEST_SRCDIR") != "" || os.Getenv("BAZEL_TEST") != ""
}

// Strict tells whether a missing prerequisite fails the test: outside Bazel, with CI or StrictEnv set.
func Strict() bool {
	return !UnderBazel() && (os.Getenv("CI") != "" || os.Getenv(StrictEnv) != "")
}

// SkipOrFail skips the test with msg, or fails it in strict mode.
func SkipOrFail(tb testing.TB, msg string) {
	tb.Helper()
	if Strict() {
		tb.Fatalf("%s (strict: CI or %s is set, so this test must run)", msg, StrictEnv)
		return
	}
	tb.Skip(msg)
}

// Need returns the first of paths that exists (a name without a slash is looked up in PATH); if none does,
// it skips or fails the test with installHint as the way to get them.
func Need(tb testing.TB, installHint string, paths ...string) string {
	tb.Helper()
	for _, p := range paths {
		if !strings.Contains(p, "/") {
			if found, err := exec.LookPath(p); err == nil {
				return found
			}
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	SkipOrFail(tb, fmt.Sprintf("none of %v found; get it with: %s", paths, installHint))
	return ""
}

// NeedRoot skips a test that changes the machine (links, namespaces, mounts, loop devices) unless it runs
// as root outside Bazel's sandbox; in strict mode, not being root is a failure.
func NeedRoot(tb testing.TB) {
	tb.Helper()
	if UnderBazel() {
		tb.Skip("skipped under bazel test: bridges, namespaces, mounts and loop devices need root outside the sandbox (run go test)")
		return
	}
	if os.Geteuid() != 0 {
		SkipOrFail(tb, "needs root: it creates bridges, namespaces, mounts or loop devices")
	}
}

// ImageDir returns the node image directory ImageDirEnv names. Without the variable the test skips (also
// in strict mode: only the targets that build the image set it); a variable naming no image fails it.
func ImageDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv(ImageDirEnv)
	if dir == "" {
		tb.Skipf("needs the node image: build it with `make image` and set %s=out/image", ImageDirEnv)
		return ""
	}
	if _, err := os.Stat(filepath.Join(dir, "root.erofs")); err != nil {
		tb.Fatalf("%s=%s is not a node image directory: %v", ImageDirEnv, dir, err)
		return ""
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		tb.Fatal(err)
	}
	return abs
}

// TempDir returns a new directory under /tmp removed when the test ends. Unlike t.TempDir its path is short
// (Unix socket paths have at most 108 bytes; Bazel's test directories are longer).
func TempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "cl-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// Run runs a tool and returns its standard output; if it fails, the test fails with its output and
// standard error.
func Run(tb testing.TB, name string, args ...string) []byte {
	tb.Helper()
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("%s %v: %v\n%s%s", name, args, err, out, stderr.String())
	}
	return out
}
