package packages

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
)

// Change is one difference between a committed lock and what a build installed.
type Change struct {
	Scope, Name string
	// Pinned and Got are "<version> <arch>"; empty when the package is on one side only.
	Pinned, Got string
	// SameVersionOtherFile is set when the version is the same but the .deb's sha256 differs: Debian never
	// publishes two files of one version, so this is a different archive (or a tampered mirror).
	SameVersionOtherFile bool
}

// Diff lists the packages whose version or file differ between the pinned and the installed lock.
func Diff(pinned, got Lock) []Change {
	want := map[string]Entry{}
	for _, e := range pinned {
		want[e.key()] = e
	}
	var out []Change
	seen := map[string]bool{}
	for _, g := range got {
		seen[g.key()] = true
		p, ok := want[g.key()]
		switch {
		case !ok:
			out = append(out, Change{Scope: g.Scope, Name: g.Name, Got: g.Version + " " + g.Arch})
		case p.Version != g.Version || p.Arch != g.Arch:
			out = append(out, Change{Scope: g.Scope, Name: g.Name, Pinned: p.Version + " " + p.Arch, Got: g.Version + " " + g.Arch})
		case p.SHA256 != g.SHA256:
			out = append(out, Change{Scope: g.Scope, Name: g.Name, Pinned: p.Version + " " + p.Arch, Got: g.Version + " " + g.Arch, SameVersionOtherFile: true})
		}
	}
	for _, p := range pinned {
		if !seen[p.key()] {
			out = append(out, Change{Scope: p.Scope, Name: p.Name, Pinned: p.Version + " " + p.Arch})
		}
	}
	slices.SortFunc(out, func(a, b Change) int {
		return strings.Compare(a.Scope+" "+a.Name, b.Scope+" "+b.Name)
	})
	return out
}

// Table renders changes as aligned lines: scope, name, pinned -> installed.
func Table(changes []Change) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, c := range changes {
		pinned, got := c.Pinned, c.Got
		if pinned == "" {
			pinned = "(not in the lock)"
		}
		if got == "" {
			got = "(not installed)"
		}
		note := ""
		if c.SameVersionOtherFile {
			note = "\tSAME VERSION, OTHER FILE: not the Debian archive's package"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t->\t%s%s\n", c.Scope, c.Name, pinned, got, note)
	}
	_ = tw.Flush()
	return b.String()
}

// ErrDrift is returned by Check in strict mode when the build installed other packages than the lock pins.
var ErrDrift = errors.New("the build installed other packages than the lock pins")

// CheckOptions says how Check treats a difference.
type CheckOptions struct {
	// LockName names the committed lock in messages ("image/mkosi/packages.lock").
	LockName string
	// Recorded names the file holding what the build installed.
	Recorded string
	// Locked makes any difference an error (ErrDrift) instead of a notice.
	Locked bool
}

// Check compares what a build installed with the committed lock. Without differences it returns "" and
// nil. Otherwise, by default, it returns a notice for the user and nil: Debian's archive serves only the
// newest version of each package, so a build from it may legitimately differ from a lock written earlier.
// With Locked it returns an error that carries the same table and the ways out.
func Check(pinned, got Lock, o CheckOptions) (string, error) {
	changes := Diff(pinned, got)
	if len(changes) == 0 {
		return "", nil
	}
	measured := 0
	tampered := false
	for _, c := range changes {
		if c.Scope != ScopeTools {
			measured++
		}
		tampered = tampered || c.SameVersionOtherFile
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d package(s) differ from %s (pinned -> installed):\n%s", len(changes), o.LockName, Table(changes))
	if tampered {
		b.WriteString("  Some packages have the pinned version but another file: the packages did not come from the same\n" +
			"  archive as the lock's. Check the mirror before you trust this image.\n")
	}
	if o.Locked {
		return "", fmt.Errorf("%w (--locked).\n%s  To build exactly the lock, build from a package bundle saved when it was written\n"+
			"  (image/mkosi/build.sh --bundle <dir|tar>); to adopt these versions, review the change, run\n"+
			"  image/mkosi/build.sh --update-lock and commit %s", ErrDrift, b.String(), o.LockName)
	}
	var n strings.Builder
	n.WriteString("NOTICE: Debian's archive has moved since " + o.LockName + " was written; the build went on with the\n" +
		"versions it serves today. " + b.String())
	if measured > 0 {
		fmt.Fprintf(&n, "%d of them are in the image or its initrd, so this image's measurements (PCRs) differ from those\n"+
			"of a release built from the committed lock. ", measured)
	} else {
		n.WriteString("Only the tools tree differs; the image's measurements are expected to equal a release's. ")
	}
	if o.Recorded != "" {
		fmt.Fprintf(&n, "What went in is recorded in %s.\n", o.Recorded)
	} else {
		n.WriteString("\n")
	}
	n.WriteString("To reproduce a release exactly, build from its package bundle (--bundle); to adopt these versions,\n" +
		"run image/mkosi/build.sh --update-lock and commit; --locked makes this an error.")
	return n.String(), nil
}
