// Package remains finds what a stopped node, network or disk left on this machine: mount points, loop
// devices and processes that still refer to it. The local provider reports them (node.Remains), and tests
// assert there are none, with the same code. Each function reads /proc or /sys in full: for checks, not
// hot paths. A file it cannot read counts as nothing found.
package remains

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Mounts returns the mount points of this process's mount namespace, in mount order.
func Mounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, f[4])
		}
	}
	return out
}

// MountsUnder returns the mount points at or below dir, deepest (last mounted) first, the order in which
// to unmount them.
func MountsUnder(dir string) []string {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	var out []string
	for _, m := range Mounts() {
		if m == dir || strings.HasPrefix(m, prefix) {
			out = append(out, m)
		}
	}
	slices.Reverse(out)
	return out
}

// LoopsBackedBy lists the loop devices whose backing file lies below dir.
func LoopsBackedBy(dir string) []string {
	devs, _ := filepath.Glob("/sys/block/loop*")
	var out []string
	for _, d := range devs {
		b, err := os.ReadFile(filepath.Join(d, "loop", "backing_file"))
		if err == nil && strings.HasPrefix(string(b), dir+"/") {
			out = append(out, "loop device /dev/"+filepath.Base(d)+" ("+strings.TrimSpace(string(b))+")")
		}
	}
	return out
}

// ProcessesWith lists the processes other than this one whose root, working directory, executable, open
// files or namespaces (links in /proc/<pid>/{root,cwd,exe,fd/*,ns/*}) contain any of needles: a state
// directory's path, say, or a namespace's "net:[<inode>]".
func ProcessesWith(needles ...string) []string {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := fmt.Sprint(os.Getpid())
	var out []string
	for _, p := range procs {
		if filepath.Base(p) == self {
			continue
		}
		links := []string{filepath.Join(p, "root"), filepath.Join(p, "cwd"), filepath.Join(p, "exe")}
		fds, _ := filepath.Glob(filepath.Join(p, "fd", "*"))
		nss, _ := filepath.Glob(filepath.Join(p, "ns", "*"))
		for _, l := range append(append(links, fds...), nss...) {
			target, err := os.Readlink(l)
			if err == nil && slices.ContainsFunc(needles, func(n string) bool { return strings.Contains(target, n) }) {
				comm, _ := os.ReadFile(filepath.Join(p, "comm"))
				out = append(out, fmt.Sprintf("process %s (%s): %s -> %s", filepath.Base(p), strings.TrimSpace(string(comm)), l, target))
				break
			}
		}
	}
	return out
}
