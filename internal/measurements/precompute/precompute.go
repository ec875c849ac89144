package precompute

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"unicode/utf16"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/measurements"
)

// PCRs this package predicts.
const (
	PCRBootChain  = measurements.PCRBootChain  // 4: EFI applications the firmware loads
	PCRKernel     = measurements.PCRKernel     // 9: Linux's EFI stub: command line and initrd
	PCRUKI        = measurements.PCRUKI        // 11: systemd-stub's UKI sections, then systemd-pcrphase
	PCRBootLoader = measurements.PCRBootLoader // 12: command lines passed in by a boot loader
	PCRSystemd    = measurements.PCRSystemd    // 13: system extension images (none: zero)
)

// Firmware event strings and data from the TCG PC Client Platform Firmware Profile.
const (
	// CallingEFIApplication is the EV_EFI_ACTION string firmware measures into PCR 4 when it starts a boot
	// option. Its digest is SHA-256 of these ASCII bytes, without a terminator.
	CallingEFIApplication = "Calling EFI Application from Boot Option"
)

// separatorData is the EV_SEPARATOR event data (and hashed bytes) for a successful transition: a
// little-endian 32-bit zero.
var separatorData = []byte{0, 0, 0, 0}

// systemd-pcrphase words, extended into PCR 11 by the units of systemd 252. The words come from the unit
// files (/lib/systemd/system/systemd-pcrphase{-initrd,-sysinit,}.service: ExecStart/ExecStop arguments);
// systemd-pcrphase extends SHA-256 of the word without a terminating NUL, which systemd-measure's --phase
// reproduces.
const (
	PhaseEnterInitrd = "enter-initrd"
	PhaseLeaveInitrd = "leave-initrd"
	PhaseSysinit     = "sysinit"
	PhaseReady       = "ready"
)

// BootedPhases are the phases a node has passed once it is fully booted: initrd entered and left, sysinit
// reached, and the system ready. ("shutdown" and "final" follow only when it powers off.)
var BootedPhases = []string{PhaseEnterInitrd, PhaseLeaveInitrd, PhaseSysinit, PhaseReady}

// BootPath is the chain of EFI applications from firmware to kernel.
type BootPath int

const (
	// BootDirect is firmware → UKI (systemd-stub) → kernel: the firmware's boot option names the UKI.
	BootDirect BootPath = iota + 1
	// BootSystemdBoot is firmware → systemd-boot → UKI → kernel, with the UKI found by systemd-boot as a
	// type #2 entry, so that systemd-boot passes the UKI's own .cmdline as LoadOptions.
	BootSystemdBoot
)

func (p BootPath) String() string {
	switch p {
	case BootDirect:
		return "firmware→UKI"
	case BootSystemdBoot:
		return "firmware→systemd-boot→UKI"
	}
	return fmt.Sprintf("BootPath(%d)", int(p))
}

// Event is one extend, with the event log record that describes it.
type Event struct {
	PCR    uint32
	Type   eventlog.EventType
	Digest [32]byte
	// Data is the event data a log records. It is modelled on what the real component logs but does not
	// affect the PCR value.
	Data []byte
}

// Platform names the parts of PCR 4 that depend on the firmware rather than on the boot files, so that a
// profile verified against a real boot (e.g. QEMU with OVMF) can be plugged in.
type Platform struct {
	// Name identifies the profile in messages.
	Name string
	// Verified reports whether the profile has been compared with a real boot's event log.
	Verified bool
	// Before are events the firmware extends into PCR 4 before the boot-attempt events, e.g. option ROMs or
	// applications launched from other boot options tried first.
	Before []Event
	// CallingEFIApplication reports whether the firmware extends EV_EFI_ACTION CallingEFIApplication into
	// PCR 4 when it starts the boot option.
	CallingEFIApplication bool
	// Separator reports whether the firmware extends EV_SEPARATOR into PCR 4 before the first boot
	// application (the PC Client profile puts it at ReadyToBoot, i.e. there).
	Separator bool
	// After are events the firmware extends into PCR 4 after the separator but before the first
	// application of the boot path, e.g. drivers it loads at that point.
	After []Event
}

// GenericUEFI is the PCR 4 sequence the TCG PC Client Platform Firmware Profile prescribes for the first
// boot attempt: EV_EFI_ACTION "Calling EFI Application from Boot Option", EV_SEPARATOR, then the boot
// applications. It is NOT verified against a real boot yet: the QEMU/OVMF ground-truth test must confirm it
// (or replace it with an OVMF profile carrying whatever extra events OVMF adds).
var GenericUEFI = Platform{Name: "generic UEFI (unverified)", CallingEFIApplication: true, Separator: true}

// OVMF is Debian bookworm's OVMF (edk2 2022.11, OVMF_CODE_4M.fd, Secure Boot off) on QEMU's q35 machine
// started with -nodefaults, so that the disk holding the image is the only boot option. Its PCR 4 sequence
// is the generic one: image/groundtruth boots the node image that way and compares every PCR 4 event of
// the firmware's log, and PCRs 4, 9, 11 and 12, with the prediction. Extra devices (a NIC's PXE option, a
// CD-ROM) add boot attempts and change PCR 4.
var OVMF = Platform{Name: "OVMF 2022.11 (QEMU q35, -nodefaults)", Verified: true, CallingEFIApplication: true,
	Separator: true}

// Options selects how the UKI is booted.
type Options struct {
	// Platform is the firmware profile; the zero value means GenericUEFI.
	Platform *Platform
	// Path is the boot path; the zero value means BootDirect.
	Path BootPath
	// BootLoader is the systemd-boot EFI binary, required for BootSystemdBoot.
	BootLoader []byte
	// SecureBoot reports whether UEFI Secure Boot is on. systemd-stub 252 then ignores a command line passed
	// in LoadOptions when the UKI has a .cmdline, which changes PCRs 9 and 12 on the systemd-boot path.
	SecureBoot bool
}

// Result holds the predicted extends and PCR values.
type Result struct {
	// Events are the extends up to the kernel's start, in order: firmware, boot loader, stub, Linux.
	Events []Event
	// PhaseEvents are the extends systemd-pcrphase makes into PCR 11 on the way to a booted system
	// (BootedPhases), after Events.
	PhaseEvents []Event
}

// ErrNoCmdline is returned for a UKI without .cmdline. The stub then passes no LoadOptions at all, and
// whether Linux 6.1 measures anything into PCR 9 for that case is not modelled.
var ErrNoCmdline = errors.New("UKI has no .cmdline section")

// ErrNonASCIICmdline is returned for a .cmdline with bytes >= 0x80: how systemd-stub 252 widens them to
// UTF-16 (as Latin-1 or as UTF-8) decides the PCR 9 and 12 values and is not verified.
var ErrNonASCIICmdline = errors.New(".cmdline is not ASCII")

// ErrNoBootLoader is returned when the systemd-boot path is requested without the boot loader's binary.
var ErrNoBootLoader = errors.New("systemd-boot path requires the boot loader binary")

// Precompute predicts the extends a boot of u produces, with systemd-stub 252 and Linux 6.1 semantics. The
// package documentation lists what is and is not modelled.
func Precompute(u *UKI, opts Options) (*Result, error) {
	plat := GenericUEFI
	if opts.Platform != nil {
		plat = *opts.Platform
	}
	path := opts.Path
	if path == 0 {
		path = BootDirect
	}
	if u.Cmdline == nil {
		return nil, ErrNoCmdline
	}
	for _, c := range u.Cmdline {
		if c >= 0x80 {
			return nil, ErrNonASCIICmdline
		}
	}
	var r Result

	// PCR 4: firmware's boot-attempt events, then each EFI application loaded through LoadImage.
	r.Events = append(r.Events, plat.Before...)
	if plat.CallingEFIApplication {
		r.Events = append(r.Events, Event{PCR: PCRBootChain, Type: eventlog.EvEFIAction,
			Digest: sha256.Sum256([]byte(CallingEFIApplication)), Data: []byte(CallingEFIApplication)})
	}
	if plat.Separator {
		r.Events = append(r.Events, Event{PCR: PCRBootChain, Type: eventlog.EvSeparator,
			Digest: sha256.Sum256(separatorData), Data: slices.Clone(separatorData)})
	}
	r.Events = append(r.Events, plat.After...)

	images := [][]byte{u.Raw, u.Linux}
	switch path {
	case BootDirect:
	case BootSystemdBoot:
		if len(opts.BootLoader) == 0 {
			return nil, ErrNoBootLoader
		}
		images = append([][]byte{opts.BootLoader}, images...)
	default:
		return nil, fmt.Errorf("unknown boot path %v", path)
	}
	names := []string{"UKI", "kernel"}
	if path == BootSystemdBoot {
		names = append([]string{"boot loader"}, names...)
	}
	d := hashAll(images, u)
	for i := range images {
		if d.imageErrs[i] != nil {
			return nil, fmt.Errorf("measuring %s: %w", names[i], d.imageErrs[i])
		}
	}
	loaded := func(i int) { r.Events = append(r.Events, imageEvent(d.images[i], len(images[i]))) }

	// The command line the kernel gets. systemd-stub 252 uses its own .cmdline unless it was started with
	// LoadOptions and is allowed to take them, which it is without Secure Boot. systemd-boot passes a type
	// #2 entry's own .cmdline, cleaned up like the stub does (assumed: see StubCmdline), so the text is the
	// same on both paths; what differs is who measures it into PCR 12.
	cmdline := StubCmdline(u.Cmdline)
	options := loadOptionsEvent(cmdline)

	// The events are listed in the order they happen, although only the order within a PCR matters for
	// the values: that way the event log reads like a real one.
	if path == BootSystemdBoot {
		loaded(0)
		// systemd-boot measures the options it passes before it loads the UKI.
		r.Events = append(r.Events, options)
		images, d.images = images[1:], d.images[1:]
	}
	loaded(0) // the UKI

	// PCR 11: systemd-stub 252 measures each present section: its name, then its content.
	for _, name := range stub252Measured {
		if _, ok := u.Content(name); !ok {
			continue
		}
		desc := utf16z(name)
		r.Events = append(r.Events,
			Event{PCR: PCRUKI, Type: eventlog.EvIPL, Digest: sha256.Sum256(append([]byte(name), 0)), Data: desc},
			Event{PCR: PCRUKI, Type: eventlog.EvIPL, Digest: d.sections[name], Data: desc})
	}
	// The stub measures the LoadOptions it accepts into PCR 12, i.e. a second time on the systemd-boot path.
	if path == BootSystemdBoot && !opts.SecureBoot {
		r.Events = append(r.Events, options)
	}
	loaded(1) // the kernel, which the stub starts with LoadImage/StartImage

	// PCR 9: Linux 6.1's EFI stub measures LoadOptions (what systemd-stub set: the command line as
	// NUL-terminated UTF-16LE), then the initrd it loads through LINUX_EFI_INITRD_MEDIA_GUID. Without a
	// .initrd the stub registers no initrd (assuming no credentials or system extensions on the ESP, which
	// it would pack into one), and Linux measures none.
	r.Events = append(r.Events, taggedEvent(loadOptionsTagID, "LOADED_IMAGE::LoadOptions", options.Digest))
	if u.Initrd != nil {
		r.Events = append(r.Events, taggedEvent(initrdTagID, "Linux initrd", d.sections[SectionInitrd]))
	}

	for _, phase := range BootedPhases {
		r.PhaseEvents = append(r.PhaseEvents, Event{PCR: PCRUKI, Type: eventlog.EvIPL,
			Digest: sha256.Sum256([]byte(phase)), Data: []byte(phase)})
	}
	return &r, nil
}

// PCRs replays the events into zeroed PCRs and returns the values of PCRs 4, 9, 11, 12 and 13 (the ones
// the boot files determine; PCRs nothing extended, such as PCR 12 on the direct path, are zero). PCR 13 is
// where systemd 252 measures system extension images; the image ships none, so it stays zero. withPhases
// includes the systemd-pcrphase extends of a fully booted system.
func (r *Result) PCRs(withPhases bool) map[uint32][]byte {
	pcrs := map[uint32][]byte{}
	for _, i := range []uint32{PCRBootChain, PCRKernel, PCRUKI, PCRBootLoader, PCRSystemd} {
		pcrs[i] = make([]byte, sha256.Size)
	}
	for _, e := range r.events(withPhases) {
		if _, ok := pcrs[e.PCR]; !ok {
			pcrs[e.PCR] = make([]byte, sha256.Size)
		}
		pcrs[e.PCR] = eventlog.ExtendSHA256(pcrs[e.PCR], e.Digest[:])
	}
	return pcrs
}

// Measurements returns the predicted PCR values as reference values, all enforced.
func (r *Result) Measurements(withPhases bool) measurements.M {
	m := measurements.M{}
	for i, v := range r.PCRs(withPhases) {
		m[i] = measurements.Measurement{Expected: v}
	}
	return m
}

// EventLog returns a TCG2 (crypto-agile, SHA-256) event log of exactly the predicted extends, for a
// launcher that performs them to hand to the verifier. It has no firmware header events (e.g. no
// StartupLocality), so replaying it starts from zeroed PCRs like the prediction.
func (r *Result) EventLog(withPhases bool) []byte {
	b := eventlog.NewBuilder()
	for _, e := range r.events(withPhases) {
		b.Add(e.PCR, e.Type, e.Digest, e.Data)
	}
	return b.Bytes()
}

func (r *Result) events(withPhases bool) []Event {
	if !withPhases {
		return r.Events
	}
	return append(slices.Clip(r.Events), r.PhaseEvents...)
}

// imageEvent is firmware's EV_EFI_BOOT_SERVICES_APPLICATION for a loaded image. Its data is a
// UEFI_IMAGE_LOAD_EVENT; the load address and device path are unknown before boot, so they are zero/empty.
func imageEvent(digest []byte, size int) Event {
	data := make([]byte, 32)
	binary.LittleEndian.PutUint64(data[8:], uint64(size)) // ImageLengthInMemory
	return Event{PCR: PCRBootChain, Type: eventlog.EvEFIBootServicesApp, Digest: [32]byte(digest), Data: data}
}

// digests holds every hash over file contents that Precompute needs.
type digests struct {
	images    [][]byte
	imageErrs []error
	sections  map[string][32]byte
}

// hashAll computes the Authenticode hashes of images and the SHA-256 of each section stub252Measured
// names, concurrently. The kernel's bytes are hashed three times (inside the UKI's Authenticode hash, in
// its own, and as .linux for PCR 11) and SHA-256 cannot share work between different streams, so running
// the streams in parallel is what keeps precomputation close to the speed of a single pass.
func hashAll(images [][]byte, u *UKI) digests {
	d := digests{
		images:    make([][]byte, len(images)),
		imageErrs: make([]error, len(images)),
		sections:  make(map[string][32]byte),
	}
	var wg sync.WaitGroup
	for i, img := range images {
		wg.Go(func() { d.images[i], d.imageErrs[i] = AuthenticodeSHA256(img) })
	}
	sums := make([][32]byte, len(stub252Measured))
	for i, name := range stub252Measured {
		if c, ok := u.Content(name); ok {
			wg.Go(func() { sums[i] = sha256.Sum256(c) })
		}
	}
	wg.Wait()
	for i, name := range stub252Measured {
		if _, ok := u.Content(name); ok {
			d.sections[name] = sums[i]
		}
	}
	return d
}

// loadOptionsEvent is the PCR 12 extend systemd-boot and systemd-stub 252 make for a command line passed in
// LoadOptions: SHA-256 of the NUL-terminated UTF-16LE string, logged as EV_IPL with the string as data.
func loadOptionsEvent(cmdline string) Event {
	b := utf16z(cmdline)
	return Event{PCR: PCRBootLoader, Type: eventlog.EvIPL, Digest: sha256.Sum256(b), Data: b}
}

// Tagged event IDs of Linux's EFI stub (drivers/firmware/efi/libstub/efistub.h).
const (
	initrdTagID      = 0x8F3B22EC
	loadOptionsTagID = 0x8F3B22ED
)

// taggedEvent is an EV_EVENT_TAG extend into PCR 9 as Linux's EFI stub makes it: the digest is over the
// measured buffer, the data a TCG_PCClientTaggedEvent naming it.
func taggedEvent(id uint32, desc string, digest [32]byte) Event {
	data := binary.LittleEndian.AppendUint32(nil, id)
	data = binary.LittleEndian.AppendUint32(data, uint32(len(desc)+1))
	data = append(append(data, desc...), 0)
	return Event{PCR: PCRKernel, Type: eventlog.EvEventTag, Digest: digest, Data: data}
}

// StubCmdline returns the command line systemd-stub derives from a .cmdline section: the text up to the
// first NUL, with leading and trailing whitespace removed and every other control character or space turned
// into a plain space (systemd's mangle_stub_cmdline, which treats code points <= 0x20 and 0x7F as
// whitespace). A .cmdline written by `echo` thus loses its trailing newline. Bytes are taken as Latin-1, as
// the stub's 8-to-16-bit conversion does for ASCII; Precompute rejects anything else.
//
// That 252 already applies mangle_stub_cmdline to the built-in .cmdline, and that systemd-boot 252 cleans
// a type #2 entry's .cmdline the same way (older code only chopped one trailing newline), is taken from
// systemd's source history, not verified on a boot: for a .cmdline without leading, trailing or control
// whitespace (the safe choice for images) all variants agree.
func StubCmdline(section []byte) string {
	if i := slices.Index(section, 0); i >= 0 {
		section = section[:i]
	}
	ws := func(c byte) bool { return c <= 0x20 || c == 0x7f }
	out := make([]rune, 0, len(section))
	last := 0 // length of out up to the last non-whitespace character
	started := false
	for _, c := range section {
		switch {
		case ws(c) && !started:
		case ws(c):
			out = append(out, ' ')
		default:
			started = true
			out = append(out, rune(c))
			last = len(out)
		}
	}
	return string(out[:last])
}

// utf16z encodes s as UTF-16LE with a terminating NUL, the form of UEFI strings and of LoadOptions.
func utf16z(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 0, 2*len(u)+2)
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return append(b, 0, 0)
}

// ErrNotUKI is FreshNode's error for data that is not a UKI it can measure.
var ErrNotUKI = errors.New("not a usable UKI")

// FreshNode precomputes the measurements a node booted from the UKI uki shows before it initializes or joins
// a cluster: the predicted PCRs of the boot, and PCR 15 zero (verifiers of a running cluster expect the
// cluster's value there instead, measurements.PCR15ForCluster).
func FreshNode(uki []byte, opts Options) (*Result, measurements.M, error) {
	parsed, err := ParseUKI(uki)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNotUKI, err)
	}
	res, err := Precompute(parsed, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("precomputing the measurements: %w", err)
	}
	m := res.Measurements(true)
	m[measurements.PCRClusterID] = measurements.Measurement{Expected: make(measurements.Digest, measurements.DigestSize)}
	return res, m, nil
}

// ImageRef names a local or qemu node image in measurements files: sha256:<hex> of its UKI.
func ImageRef(uki []byte) string {
	sum := sha256.Sum256(uki)
	return "sha256:" + hex.EncodeToString(sum[:])
}
