// Command imagepackages is the Go half of image/mkosi/build.sh and setup.sh: it records which Debian
// packages a build installed, compares them with the committed lock, and saves, verifies and serves package
// bundles (see package image/packages).
//
//	imagepackages record --out FILE [--manifest SCOPE=FILE]... [--dpkg-status SCOPE=FILE] [--include FILE]... --debs DIR...
//	imagepackages check --lock FILE --got FILE [--recorded PATH] [--locked]
//	imagepackages update-lock --got FILE --out FILE
//	imagepackages bundle-save --lock FILE --debs DIR... --out DIR|FILE.tar
//	imagepackages bundle-repo --bundle DIR|FILE.tar --work DIR --suite SCOPES=SUITE...
//	imagepackages serve --dir DIR --port-file FILE
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/constellation-go/constellation/image/packages"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: imagepackages record|check|update-lock|bundle-save|bundle-repo|serve [flags] (see the source's header)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"record": record, "check": check, "update-lock": updateLock,
		"bundle-save": bundleSave, "bundle-repo": bundleRepo, "serve": serve,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "imagepackages: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := run(ctx, os.Args[2:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "imagepackages:", err)
		os.Exit(1)
	}
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func scopeFile(v string) (string, string, error) {
	scope, file, ok := strings.Cut(v, "=")
	if !ok || scope == "" || file == "" {
		return "", "", fmt.Errorf("want SCOPE=FILE, got %q", v)
	}
	return scope, file, nil
}

func record(_ context.Context, args []string, _, _ io.Writer) error {
	fs := flag.NewFlagSet("record", flag.ContinueOnError)
	var manifests, statuses, includes, debs listFlag
	fs.Var(&manifests, "manifest", "SCOPE=mkosi JSON manifest (repeatable)")
	fs.Var(&statuses, "dpkg-status", "SCOPE=dpkg status file (repeatable)")
	fs.Var(&includes, "include", "a lock whose entries are added as they are (repeatable)")
	fs.Var(&debs, "debs", "directory holding the installed .deb files (repeatable, searched in order)")
	out := fs.String("out", "", "the lock to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("--out is required")
	}
	var all packages.Lock
	add := func(v string, read func([]byte) ([]packages.Installed, error)) error {
		scope, file, err := scopeFile(v)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		inst, err := read(data)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		l, _, err := packages.Record(scope, inst, debs)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		all = append(all, l...)
		return nil
	}
	for _, m := range manifests {
		if err := add(m, packages.FromManifest); err != nil {
			return err
		}
	}
	for _, s := range statuses {
		if err := add(s, packages.FromDpkgStatus); err != nil {
			return err
		}
	}
	for _, inc := range includes {
		l, err := packages.ReadLock(inc)
		if err != nil {
			return err
		}
		all = append(all, l...)
	}
	return writeLock(all, *out, "What one build installed: <scope> <name> <version> <arch> <sha256 of the .deb>.")
}

// writeLock writes a lock atomically, re-parsing it so that duplicates and bad entries are refused.
func writeLock(l packages.Lock, out string, header ...string) error {
	var b strings.Builder
	if err := l.Write(&b, header...); err != nil {
		return err
	}
	if _, err := packages.ParseLock(strings.NewReader(b.String())); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func check(_ context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	lockPath := fs.String("lock", "", "the committed lock")
	lockName := fs.String("lock-name", "", "how messages name the committed lock (default: --lock)")
	got := fs.String("got", "", "what the build installed")
	recorded := fs.String("recorded", "", "where the build's lock is kept, for the notice")
	locked := fs.Bool("locked", false, "fail on any difference instead of printing a notice")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *lockPath == "" || *got == "" {
		return errors.New("--lock and --got are required")
	}
	if *lockName == "" {
		*lockName = *lockPath
	}
	pinned, err := packages.ReadLock(*lockPath)
	if err != nil {
		return err
	}
	installed, err := packages.ReadLock(*got)
	if err != nil {
		return err
	}
	notice, err := packages.Check(pinned, installed, packages.CheckOptions{LockName: *lockName, Recorded: *recorded, Locked: *locked})
	if notice != "" {
		fmt.Fprintln(stderr, notice)
	}
	return err
}

func updateLock(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("update-lock", flag.ContinueOnError)
	got := fs.String("got", "", "what the build installed")
	out := fs.String("out", "", "the committed lock to rewrite")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *got == "" || *out == "" {
		return errors.New("--got and --out are required")
	}
	l, err := packages.ReadLock(*got)
	if err != nil {
		return err
	}
	if err := writeLock(l, *out,
		"Every package of the node image, its initrd and the tools tree that built them:",
		"<scope> <name> <version> <arch> <sha256 of the .deb>. A build that installs anything else prints a notice",
		"(image/mkosi/build.sh --locked fails instead); after a deliberate update (Debian point release, security",
		"fix) run image/mkosi/build.sh --update-lock and commit this file."); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%d packages)\n", *out, len(l))
	return nil
}

func bundleSave(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("bundle-save", flag.ContinueOnError)
	var debs listFlag
	lockPath := fs.String("lock", "", "the build's lock (what went in)")
	fs.Var(&debs, "debs", "directory holding the .deb files (repeatable, searched in order)")
	out := fs.String("out", "", "the bundle: a directory, or a file ending in .tar")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *lockPath == "" || *out == "" || len(debs) == 0 {
		return errors.New("--lock, --debs and --out are required")
	}
	l, err := packages.ReadLock(*lockPath)
	if err != nil {
		return err
	}
	if err := packages.SaveBundle(l, debs, *out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "saved %d packages to %s\n", len(l), *out)
	return nil
}

func bundleRepo(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("bundle-repo", flag.ContinueOnError)
	var suites listFlag
	bundle := fs.String("bundle", "", "the package bundle (directory or .tar)")
	work := fs.String("work", "", "where to unpack it and write the repositories")
	fs.Var(&suites, "suite", "SCOPE[,SCOPE...]=SUITE: a repository <work>/repo/<SUITE> of those scopes' packages (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bundle == "" || *work == "" || len(suites) == 0 {
		return errors.New("--bundle, --work and --suite are required")
	}
	l, debs, err := packages.OpenBundle(*bundle, *work)
	if err != nil {
		return err
	}
	for _, s := range suites {
		scopeList, suite, ok := strings.Cut(s, "=")
		if !ok || suite == "" || strings.ContainsAny(suite, "/.") {
			return fmt.Errorf("--suite: want SCOPE[,SCOPE...]=SUITE, got %q", s)
		}
		sub := l.Scope(strings.Split(scopeList, ",")...)
		if len(sub) == 0 {
			return fmt.Errorf("the bundle has no packages of %s", scopeList)
		}
		if err := packages.WriteRepo(sub, debs, filepath.Join(*work, "repo", suite), suite, packages.DpkgDebControl); err != nil {
			return err
		}
	}
	if err := writeLock(l, filepath.Join(*work, "bundle.lock"), "The lock of the package bundle "+*bundle+"."); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", filepath.Join(*work, "repo"))
	return nil
}

func serve(ctx context.Context, args []string, _, _ io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "the directory to serve")
	portFile := fs.String("port-file", "", "where to write the port once listening")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *portFile == "" {
		return errors.New("--dir and --port-file are required")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	if err := os.WriteFile(*portFile+".tmp", []byte(port+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(*portFile+".tmp", *portFile); err != nil {
		return err
	}
	return packages.ServeRepo(ctx, *dir, ln)
}
