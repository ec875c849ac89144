package precompute

import (
	"errors"
	"fmt"
	"slices"
)

// Section names of a Unified Kernel Image.
const (
	SectionLinux   = ".linux"
	SectionOSRel   = ".osrel"
	SectionCmdline = ".cmdline"
	SectionInitrd  = ".initrd"
	SectionSplash  = ".splash"
	SectionDTB     = ".dtb"
	SectionPCRPKey = ".pcrpkey"
	SectionPCRSig  = ".pcrsig"
	SectionUname   = ".uname"
	SectionSBAT    = ".sbat"
)

// stub252Measured lists the sections systemd-stub 252 measures into PCR 11, in the order it measures them
// (the order of its unified_sections[] table, not the order in the file). 252 has no notion of .uname, and
// .sbat belongs to the stub itself; .pcrsig is excluded because it holds signatures of the PCR 11 value and
// cannot be part of it. Later systemd versions measure more sections (.uname, .sbat, .profile, ...), which
// is why the set is tied to a version.
var stub252Measured = []string{SectionLinux, SectionOSRel, SectionCmdline, SectionInitrd, SectionSplash, SectionDTB, SectionPCRPKey}

// ukiSections are the sections whose content ParseUKI exposes and therefore validates.
var ukiSections = append(append([]string(nil), stub252Measured...), SectionPCRSig, SectionUname, SectionSBAT)

// ErrNoKernel is returned by ParseUKI for a PE file without a .linux section: a plain EFI binary, not a UKI.
var ErrNoKernel = errors.New("no .linux section")

// UKI is a parsed Unified Kernel Image. It refers to, and does not copy, the data it was parsed from.
type UKI struct {
	// Raw is the whole file, the bytes firmware or a boot loader loads and measures.
	Raw []byte
	// Sections lists every section in section-table order.
	Sections []Section
	// Linux, OSRel, Cmdline and Initrd are the contents of the corresponding sections (VirtualSize bytes),
	// nil when the section is absent. Linux is itself a PE image: the kernel's EFI stub.
	Linux, OSRel, Cmdline, Initrd []byte

	contents map[string][]byte
}

// ParseUKI parses a UKI. It validates every header field it uses against the length of data, so malformed
// input yields an error wrapping ErrMalformedPE, never a panic. The embedded kernel must be a PE image too,
// since the stub hands it to the firmware's LoadImage, which measures it.
func ParseUKI(data []byte) (*UKI, error) {
	p, err := parsePE(data)
	if err != nil {
		return nil, fmt.Errorf("parsing UKI: %w", err)
	}
	u := &UKI{Raw: data, Sections: p.sections, contents: make(map[string][]byte)}
	for _, s := range p.sections {
		if !slices.Contains(ukiSections, s.Name) {
			continue
		}
		// Two sections of the same name would leave it to the stub's lookup which one is measured and
		// booted; a builder never produces that, so it is rejected rather than guessed.
		if _, dup := u.contents[s.Name]; dup {
			return nil, fmt.Errorf("parsing UKI: %w: duplicate section %q", ErrMalformedPE, s.Name)
		}
		c, err := s.Content()
		if err != nil {
			return nil, fmt.Errorf("parsing UKI: %w", err)
		}
		u.contents[s.Name] = c
	}
	u.Linux = u.contents[SectionLinux]
	u.OSRel = u.contents[SectionOSRel]
	u.Cmdline = u.contents[SectionCmdline]
	u.Initrd = u.contents[SectionInitrd]
	if _, ok := u.contents[SectionLinux]; !ok {
		return nil, fmt.Errorf("parsing UKI: %w", ErrNoKernel)
	}
	if _, err := parsePE(u.Linux); err != nil {
		return nil, fmt.Errorf("parsing UKI: embedded kernel: %w", err)
	}
	return u, nil
}

// Content returns the content of a UKI section (one of the Section* names) and whether it is present.
func (u *UKI) Content(name string) ([]byte, bool) {
	c, ok := u.contents[name]
	return c, ok
}
