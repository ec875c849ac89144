package node

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where the host's cgroup hierarchies are mounted, and where the node mounts its own.
const cgroupRoot = "/sys/fs/cgroup"

// hierarchy is a cgroup v1 hierarchy.
type hierarchy struct {
	// Name is the mount point's name below /sys/fs/cgroup, e.g. "memory" or "systemd".
	Name string `json:"name"`
	// Options are the mount options that select it, e.g. "memory" or "none,name=systemd".
	Options string `json:"options"`
	// controllers identify it in /proc/self/cgroup, sorted: e.g. [memory] or [name=systemd].
	controllers []string
}

// v1Hierarchies lists the cgroup v1 hierarchies mounted below /sys/fs/cgroup in this mount namespace, and
// the symbolic links there (e.g. cpu -> cpu,cpuacct) that name them otherwise.
func v1Hierarchies() ([]hierarchy, map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var out []hierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+3 >= len(fields) || fields[sep+1] != "cgroup" {
			continue
		}
		mnt := fields[4]
		if filepath.Dir(mnt) != cgroupRoot {
			continue
		}
		var opts, ctrls []string
		for _, o := range strings.Split(fields[sep+3], ",") {
			switch {
			case o == "rw" || o == "ro" || strings.HasPrefix(o, "release_agent="):
				// generic, or global to the hierarchy: not the node's to set
			case o == "xattr" || o == "noprefix" || o == "clone_children" || o == "cpuset_v2_mode":
				opts = append(opts, o)
			default:
				opts = append(opts, o)
				ctrls = append(ctrls, o)
			}
		}
		if len(ctrls) == 0 {
			continue
		}
		if !slices.ContainsFunc(ctrls, func(c string) bool { return !strings.HasPrefix(c, "name=") }) {
			opts = append([]string{"none"}, opts...) // a named hierarchy without controllers
		}
		slices.Sort(ctrls)
		out = append(out, hierarchy{Name: filepath.Base(mnt), Options: strings.Join(opts, ","), controllers: ctrls})
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	if len(out) == 0 {
		return nil, nil, errors.New("no cgroup v1 hierarchies are mounted below /sys/fs/cgroup: the local provider needs cgroup v1 (hybrid)")
	}
	links := map[string]string{}
	entries, err := os.ReadDir(cgroupRoot)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink != 0 {
			if target, err := os.Readlink(filepath.Join(cgroupRoot, e.Name())); err == nil && !strings.Contains(target, "/") {
				links[e.Name()] = target
			}
		}
	}
	return out, links, nil
}

// ownCgroups maps the sorted controller lists of /proc/self/cgroup to this process's cgroup paths.
func ownCgroups() (map[string]string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for line := range strings.Lines(string(b)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 || parts[1] == "" {
			continue // cgroup v2's "0::/path"
		}
		ctrls := strings.Split(parts[1], ",")
		slices.Sort(ctrls)
		out[strings.Join(ctrls, ",")] = parts[2]
	}
	return out, nil
}

// nodeCgroups creates the node's cgroup in every v1 hierarchy, below the calling process's:
// <own>/constellation/<cluster>/<node>. It returns the directories, by hierarchy name.
func nodeCgroups(hs []hierarchy, cluster, node string) (map[string]string, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	dirs := map[string]string{}
	for _, h := range hs {
		base, ok := own[strings.Join(h.controllers, ",")]
		if !ok {
			return dirs, fmt.Errorf("cgroup hierarchy %s (%s) is not in /proc/self/cgroup", h.Name, h.Options)
		}
		mnt := filepath.Join(cgroupRoot, h.Name)
		dir := mnt
		for _, part := range append(strings.Split(strings.Trim(base, "/"), "/"), "constellation", cluster, node) {
			if part == "" {
				continue
			}
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil {
				if errors.Is(err, os.ErrExist) {
					continue
				}
				return dirs, fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			if err := inheritCpuset(parent, dir); err != nil {
				return dirs, err
			}
		}
		dirs[h.Name] = dir
	}
	return dirs, nil
}

// inheritCpuset copies a new cpuset cgroup's CPUs and memory nodes from its parent: cgroup v1 starts them
// empty, and a cgroup without CPUs cannot take tasks.
func inheritCpuset(parent, dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		v, err := os.ReadFile(filepath.Join(parent, f))
		if errors.Is(err, os.ErrNotExist) {
			return nil // not the cpuset hierarchy
		}
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
			return fmt.Errorf("setting %s of %s: %w", f, dir, err)
		}
	}
	return nil
}

// enterCgroups moves the calling thread into the cgroups (cgroup v1 moves single threads through "tasks")
// and returns a function that moves it back. The caller must have locked the thread.
func enterCgroups(hs []hierarchy, dirs map[string]string) (restore func() error, err error) {
	tid := strconv.Itoa(unix.Gettid())
	b, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, err
	}
	own := map[string]string{}
	for line := range strings.Lines(string(b)) {
		if parts := strings.SplitN(strings.TrimSpace(line), ":", 3); len(parts) == 3 && parts[1] != "" {
			ctrls := strings.Split(parts[1], ",")
			slices.Sort(ctrls)
			own[strings.Join(ctrls, ",")] = parts[2]
		}
	}
	var back []string
	restore = func() error {
		var errs []error
		for _, dir := range back {
			if err := os.WriteFile(filepath.Join(dir, "tasks"), []byte(tid), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("moving a thread back into cgroup %s: %w", dir, err))
			}
		}
		return errors.Join(errs...)
	}
	for _, h := range hs {
		dir, ok := dirs[h.Name]
		if !ok {
			continue
		}
		path, ok := own[strings.Join(h.controllers, ",")]
		if !ok {
			return restore, fmt.Errorf("cgroup hierarchy %s is not in /proc/thread-self/cgroup", h.Name)
		}
		if err := os.WriteFile(filepath.Join(dir, "tasks"), []byte(tid), 0o644); err != nil {
			return restore, fmt.Errorf("moving a thread into cgroup %s: %w", dir, err)
		}
		back = append(back, filepath.Join(cgroupRoot, h.Name, path))
	}
	return restore, nil
}

// removeCgroups removes the node's cgroups and every cgroup below them, deepest first, then the
// constellation/<cluster> levels above them if empty. Tasks that are still exiting keep a cgroup busy for
// a moment: it retries for a few seconds.
func removeCgroups(dirs map[string]string) error {
	var errs []error
	for _, dir := range dirs {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := removeTree(dir)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					errs = append(errs, err)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		// constellation/<cluster>: only if nobody else uses them.
		for _, up := range []string{filepath.Dir(dir), filepath.Dir(filepath.Dir(dir))} {
			_ = unix.Rmdir(up)
		}
	}
	return errors.Join(errs...)
}

func removeTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		return fmt.Errorf("removing cgroup %s (processes: %q): %w", dir, strings.Fields(string(procs)), err)
	}
	return nil
}

// cgroupProcs lists the processes in the cgroups and below them.
func cgroupProcs(dirs map[string]string) []string {
	var out []string
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if b, err := os.ReadFile(filepath.Join(p, "cgroup.procs")); err == nil {
				for _, pid := range strings.Fields(string(b)) {
					out = append(out, p+": "+pid)
				}
			}
			return nil
		})
	}
	return out
}
