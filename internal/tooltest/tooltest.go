// Package tooltest is for tests that check this project against real outside tools (systemd-measure,
// veritysetup, mkfs.erofs, ...). Such a test skips when a tool is missing, except when RequireEnv is set
// (`make go-test` sets it on the host), where a missing tool fails it. Under `bazel test`, whose chroot
// lacks most of the tools, it always skips and says why.
package tooltest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireEnv turns a missing tool into a test failure.
const RequireEnv = "MEASUREMENTS_REQUIRE_TOOLS"

// UnderBazel tells whether the test runs under `bazel test`, which sets TEST_SRCDIR.
func UnderBazel() bool {
	return os.Getenv("TEST_SRCDIR") != "" || os.Getenv("BAZEL_TEST") != ""
}

// SkipOrFail skips the test, or fails it where the tools are required.
func SkipOrFail(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv(RequireEnv) != "" && !UnderBazel() {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// Need returns the first of paths that exists (a name without a slash is looked up in PATH); if none does,
// it skips or fails the test (SkipOrFail) with installHint as the way to get them.
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
	SkipOrFail(tb, fmt.Sprintf("none of %v found; install with: %s", paths, installHint))
	return ""
}

// Debian's systemd-boot-efi files (systemd 252 on the host, as in the node image): the UKI stub, and
// systemd-boot's EFI binary, which tests use as a boot loader and as a stand-in PE for a kernel.
const (
	SystemdEFIDir = "/usr/lib/systemd/boot/efi"
	SystemdStub   = SystemdEFIDir + "/linuxx64.efi.stub"
	SystemdBoot   = SystemdEFIDir + "/systemd-bootx64.efi"
)
