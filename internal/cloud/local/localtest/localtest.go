// Package localtest holds what the local provider's tests share: the checks that decide whether a test can
// run here (root, the node image), unique names and free prefixes, and leak checks.
//
// Tests that need root or the real node image skip with the reason when it is missing, except under CI
// (CI set) outside Bazel, where root is required and a missing image directory named by
// CONSTELLATION_IMAGE_DIR is a failure. Under `bazel test` (TEST_SRCDIR set) they always skip: its sandbox
// is no place to create bridges, namespaces and loop devices.
package localtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// ImageDirEnv names the node image directory (make image's out/image) for tests that boot real nodes.
const ImageDirEnv = "CONSTELLATION_IMAGE_DIR"

// UnderBazel tells whether the test runs under `bazel test`.
func UnderBazel() bool {
	return os.Getenv("TEST_SRCDIR") != "" || os.Getenv("BAZEL_TEST") != ""
}

// InCI tells whether the test runs in CI outside Bazel, where nothing may be skipped for lack of set-up.
func InCI() bool {
	return os.Getenv("CI") != "" && !UnderBazel()
}

// skipOrFail skips the test, or fails it in CI.
func skipOrFail(tb testing.TB, msg string) {
	tb.Helper()
	if InCI() {
		tb.Fatal(msg + " (CI is set: this test must run)")
	}
	tb.Skip(msg)
}

// NeedRoot skips a test that changes the machine (links, namespaces, mounts) unless it runs as root outside
// Bazel's sandbox.
func NeedRoot(tb testing.TB) {
	tb.Helper()
	if UnderBazel() {
		tb.Skip("skipped under bazel test: creating bridges, namespaces and mounts needs root outside the sandbox (run go test)")
	}
	if os.Geteuid() != 0 {
		skipOrFail(tb, "needs root: it creates bridges, namespaces, mounts and loop devices")
	}
}

// ImageDir returns the node image directory from CONSTELLATION_IMAGE_DIR, or skips the test without it.
func ImageDir(tb testing.TB) string {
	tb.Helper()
	NeedRoot(tb)
	dir := os.Getenv(ImageDirEnv)
	if dir == "" {
		tb.Skipf("needs the node image: build it with `make image` and set %s=out/image", ImageDirEnv)
	}
	if _, err := os.Stat(filepath.Join(dir, "root.erofs")); err != nil {
		tb.Fatalf("%s=%s is not a node image directory: %v", ImageDirEnv, dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		tb.Fatal(err)
	}
	return abs
}

// ClusterName returns a unique cluster name for a test: short, so that paths of Unix sockets stay short.
func ClusterName(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return "t" + hex.EncodeToString(b)
}

// BridgeCIDR returns a /26 from 10.211.0.0/16 chosen at random, so that concurrent tests (and clusters
// with the default 10.42.0.0/24) do not collide; callers retry on a conflict.
func BridgeCIDR(tb testing.TB) netip.Prefix {
	tb.Helper()
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 211, b[0], b[1] & 0xc0}), 26)
}

// TempDir returns a new directory under /tmp removed when the test ends. Unlike t.TempDir its path is short
// (Unix socket paths have at most 108 bytes).
func TempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "cl-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// Mounts returns the mount points of this process's mount namespace.
func Mounts(tb testing.TB) []string {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, f[4])
		}
	}
	return out
}

// MountsUnder returns the mount points at or below dir.
func MountsUnder(tb testing.TB, dir string) []string {
	tb.Helper()
	var out []string
	for _, m := range Mounts(tb) {
		if m == dir || strings.HasPrefix(m, dir+"/") {
			out = append(out, m)
		}
	}
	return out
}

// LoopsBackedBy lists the loop devices whose backing file lies below dir.
func LoopsBackedBy(tb testing.TB, dir string) []string {
	tb.Helper()
	devs, err := filepath.Glob("/sys/block/loop*")
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, d := range devs {
		b, err := os.ReadFile(filepath.Join(d, "loop", "backing_file"))
		if err == nil && strings.HasPrefix(string(b), dir+"/") {
			out = append(out, "/dev/"+filepath.Base(d)+" ("+strings.TrimSpace(string(b))+")")
		}
	}
	return out
}

// ProcessesWith lists the processes (pid and command) whose root, working directory, executable, open
// files or namespaces refer to something whose link text contains any of needles (e.g. a state directory,
// or "net:[4026532]").
func ProcessesWith(tb testing.TB, needles ...string) []string {
	tb.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := fmt.Sprint(os.Getpid())
	var out []string
	for _, p := range procs {
		if filepath.Base(p) == self {
			continue
		}
		var links []string
		for _, l := range []string{"root", "cwd", "exe"} {
			links = append(links, filepath.Join(p, l))
		}
		fds, _ := filepath.Glob(filepath.Join(p, "fd", "*"))
		nss, _ := filepath.Glob(filepath.Join(p, "ns", "*"))
		links = append(append(links, fds...), nss...)
		for _, l := range links {
			target, err := os.Readlink(l)
			if err != nil {
				continue
			}
			if slices.ContainsFunc(needles, func(n string) bool { return strings.Contains(target, n) }) {
				comm, _ := os.ReadFile(filepath.Join(p, "comm"))
				out = append(out, fmt.Sprintf("pid %s (%s): %s -> %s", filepath.Base(p), strings.TrimSpace(string(comm)), l, target))
				break
			}
		}
	}
	return out
}

// Eventually polls cond until it returns nothing (then it returns nil) or timeout passes (then it returns
// the last findings).
func Eventually(timeout time.Duration, cond func() []string) []string {
	deadline := time.Now().Add(timeout)
	for {
		left := cond()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}
