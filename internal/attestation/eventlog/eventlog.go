// Package eventlog parses and replays TCG2 "crypto agile" PC Client event logs, the binary measurement log
// that UEFI firmware (and, after it, boot loaders) write next to every TPM extend.
//
// A verifier cannot trust the log: it trusts the PCR values a TPM quoted and uses the log only to explain
// them. The parser is therefore strict about structure (lengths, algorithms, counts), so that a log has
// exactly one reading, and lenient about what events contain, because firmware in the wild logs data that
// violates the specification (for example empty UEFI variables) while the digests still replay correctly.
// Every length is checked against the remaining input before anything is allocated or sliced; the input
// may be adversarial.
//
// Reference: TCG PC Client Platform Firmware Profile Specification, sections on TCG_PCR_EVENT,
// TCG_PCR_EVENT2, TCG_EfiSpecIDEvent and the StartupLocality event.
package eventlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrMalformed is wrapped by every error Parse returns, so that callers can tell a broken log from other
// failures with errors.Is.
var ErrMalformed = errors.New("malformed event log")

// Limits that keep a hostile log from exhausting memory. Real logs are tens of kilobytes with a few
// hundred events; these leave room for large servers and long-running measured boot chains.
const (
	// MaxLogSize is the largest input Parse accepts.
	MaxLogSize = 16 << 20
	// MaxEvents is the largest number of events, header included, Parse accepts.
	MaxEvents = 100_000
)

// Alg is a TPM 2.0 hash algorithm identifier (TPM_ALG_ID).
type Alg uint16

// Hash algorithms that can appear in an event log.
const (
	AlgSHA1   Alg = 0x0004
	AlgSHA256 Alg = 0x000B
	AlgSHA384 Alg = 0x000C
	AlgSHA512 Alg = 0x000D
	// SM3 is recognised so that its announced size is checked, but it cannot be replayed (no SM3 in the
	// standard library), hence unexported.
	algSM3 Alg = 0x0012
)

// String returns the algorithm's TCG name, or its hexadecimal ID if unknown.
func (a Alg) String() string {
	switch a {
	case AlgSHA1:
		return "SHA1"
	case AlgSHA256:
		return "SHA256"
	case AlgSHA384:
		return "SHA384"
	case AlgSHA512:
		return "SHA512"
	case algSM3:
		return "SM3_256"
	}
	return fmt.Sprintf("Alg(0x%04x)", uint16(a))
}

// knownSize returns the digest size of algorithms whose size is fixed by their definition, so that a Spec ID
// event cannot announce, say, a 20-byte SHA-256 and shift every following field.
func (a Alg) knownSize() (int, bool) {
	switch a {
	case AlgSHA1:
		return 20, true
	case AlgSHA256, algSM3:
		return 32, true
	case AlgSHA384:
		return 48, true
	case AlgSHA512:
		return 64, true
	}
	return 0, false
}

// EventType is the TCG event type of an event (eventType field).
type EventType uint32

// Event types from the TCG PC Client Platform Firmware Profile.
const (
	EvPrebootCert              EventType = 0x00000000
	EvPostCode                 EventType = 0x00000001
	EvNoAction                 EventType = 0x00000003
	EvSeparator                EventType = 0x00000004
	EvAction                   EventType = 0x00000005
	EvEventTag                 EventType = 0x00000006
	EvSCRTMContents            EventType = 0x00000007
	EvSCRTMVersion             EventType = 0x00000008
	EvCPUMicrocode             EventType = 0x00000009
	EvPlatformConfigFlags      EventType = 0x0000000A
	EvTableOfDevices           EventType = 0x0000000B
	EvCompactHash              EventType = 0x0000000C
	EvIPL                      EventType = 0x0000000D
	EvIPLPartitionData         EventType = 0x0000000E
	EvNonhostCode              EventType = 0x0000000F
	EvNonhostConfig            EventType = 0x00000010
	EvNonhostInfo              EventType = 0x00000011
	EvOmitBootDeviceEvents     EventType = 0x00000012
	EvEFIEventBase             EventType = 0x80000000
	EvEFIVariableDriverConfig  EventType = 0x80000001
	EvEFIVariableBoot          EventType = 0x80000002
	EvEFIBootServicesApp       EventType = 0x80000003
	EvEFIBootServicesDriver    EventType = 0x80000004
	EvEFIRuntimeServicesDriver EventType = 0x80000005
	EvEFIGPTEvent              EventType = 0x80000006
	EvEFIAction                EventType = 0x80000007
	EvEFIPlatformFirmwareBlob  EventType = 0x80000008
	EvEFIHandoffTables         EventType = 0x80000009
	EvEFIPlatformFirmwareBlob2 EventType = 0x8000000A
	EvEFIHandoffTables2        EventType = 0x8000000B
	EvEFIVariableBoot2         EventType = 0x8000000C
	EvEFIHCRTMEvent            EventType = 0x80000010
	EvEFIVariableAuthority     EventType = 0x800000E0
	EvEFISPDMFirmwareBlob      EventType = 0x800000E1
	EvEFISPDMFirmwareConfig    EventType = 0x800000E2
)

var eventTypeNames = map[EventType]string{
	EvPrebootCert:              "EV_PREBOOT_CERT",
	EvPostCode:                 "EV_POST_CODE",
	EvNoAction:                 "EV_NO_ACTION",
	EvSeparator:                "EV_SEPARATOR",
	EvAction:                   "EV_ACTION",
	EvEventTag:                 "EV_EVENT_TAG",
	EvSCRTMContents:            "EV_S_CRTM_CONTENTS",
	EvSCRTMVersion:             "EV_S_CRTM_VERSION",
	EvCPUMicrocode:             "EV_CPU_MICROCODE",
	EvPlatformConfigFlags:      "EV_PLATFORM_CONFIG_FLAGS",
	EvTableOfDevices:           "EV_TABLE_OF_DEVICES",
	EvCompactHash:              "EV_COMPACT_HASH",
	EvIPL:                      "EV_IPL",
	EvIPLPartitionData:         "EV_IPL_PARTITION_DATA",
	EvNonhostCode:              "EV_NONHOST_CODE",
	EvNonhostConfig:            "EV_NONHOST_CONFIG",
	EvNonhostInfo:              "EV_NONHOST_INFO",
	EvOmitBootDeviceEvents:     "EV_OMIT_BOOT_DEVICE_EVENTS",
	EvEFIEventBase:             "EV_EFI_EVENT_BASE",
	EvEFIVariableDriverConfig:  "EV_EFI_VARIABLE_DRIVER_CONFIG",
	EvEFIVariableBoot:          "EV_EFI_VARIABLE_BOOT",
	EvEFIBootServicesApp:       "EV_EFI_BOOT_SERVICES_APPLICATION",
	EvEFIBootServicesDriver:    "EV_EFI_BOOT_SERVICES_DRIVER",
	EvEFIRuntimeServicesDriver: "EV_EFI_RUNTIME_SERVICES_DRIVER",
	EvEFIGPTEvent:              "EV_EFI_GPT_EVENT",
	EvEFIAction:                "EV_EFI_ACTION",
	EvEFIPlatformFirmwareBlob:  "EV_EFI_PLATFORM_FIRMWARE_BLOB",
	EvEFIHandoffTables:         "EV_EFI_HANDOFF_TABLES",
	EvEFIPlatformFirmwareBlob2: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	EvEFIHandoffTables2:        "EV_EFI_HANDOFF_TABLES2",
	EvEFIVariableBoot2:         "EV_EFI_VARIABLE_BOOT2",
	EvEFIHCRTMEvent:            "EV_EFI_HCRTM_EVENT",
	EvEFIVariableAuthority:     "EV_EFI_VARIABLE_AUTHORITY",
	EvEFISPDMFirmwareBlob:      "EV_EFI_SPDM_FIRMWARE_BLOB",
	EvEFISPDMFirmwareConfig:    "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

// String returns the TCG name of the event type, or its hexadecimal value if unknown (vendors and newer
// specifications define types this package does not list).
func (t EventType) String() string {
	if name, ok := eventTypeNames[t]; ok {
		return name
	}
	return fmt.Sprintf("EventType(0x%08x)", uint32(t))
}

// Event is one entry of the log.
type Event struct {
	// Index is the event's position in the log; 0 is the Spec ID header event.
	Index int
	// PCR is the PCR the event was extended into (or, for EV_NO_ACTION, logged against).
	PCR  uint32
	Type EventType
	// Digests holds one digest per algorithm the event carries. The header event carries only its
	// (all-zero, by specification) SHA-1 digest.
	Digests map[Alg][]byte
	// Data is the event data. It is what firmware says it measured, not necessarily what the digest was
	// computed over, so it must not be trusted without checking it against the digest where possible.
	Data []byte
}

// Log is a parsed event log.
type Log struct {
	// Events holds every event in log order, Events[0] being the Spec ID header.
	Events []Event
	// Algorithms maps each algorithm announced in the Spec ID event to its digest size in bytes.
	Algorithms map[Alg]int
}

const (
	specIDSignature = "Spec ID Event03\x00"
	sha1DigestSize  = 20
	// maxAlgorithms bounds the algorithms a Spec ID event may announce. TPM 2.0 defines about ten hash
	// algorithms; without a cap a 16 MiB log could announce millions and make every event's digest loop and
	// map that large.
	maxAlgorithms = 32
)

// Parse parses a crypto-agile event log. The returned Log does not share memory with raw.
func Parse(raw []byte) (*Log, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: empty input", ErrMalformed)
	}
	if len(raw) > MaxLogSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the limit of %d bytes", ErrMalformed, len(raw), MaxLogSize)
	}
	// One copy up front lets events slice into it instead of allocating per field, while callers stay free
	// to reuse raw.
	r := &reader{buf: slices.Clone(raw)}

	header, algs, err := parseHeader(r)
	if err != nil {
		return nil, fmt.Errorf("parsing event 0 (Spec ID header) at offset 0: %w", err)
	}
	log := &Log{Events: []Event{header}, Algorithms: algs}

	for r.remaining() > 0 {
		index := len(log.Events)
		start := r.off
		if index >= MaxEvents {
			return nil, fmt.Errorf("%w: more than %d events (%d bytes left at offset %d)",
				ErrMalformed, MaxEvents, r.remaining(), start)
		}
		ev, err := parseEvent2(r, algs)
		if err != nil {
			return nil, fmt.Errorf("parsing event %d at offset %d: %w", index, start, err)
		}
		ev.Index = index
		log.Events = append(log.Events, ev)
	}
	return log, nil
}

// parseHeader parses the SHA-1 format TCG_PCR_EVENT that opens every crypto-agile log and whose data is the
// TCG_EfiSpecIDEvent announcing the digest algorithms and sizes of all later events.
func parseHeader(r *reader) (Event, map[Alg]int, error) {
	pcr, err := r.u32("PCR index")
	if err != nil {
		return Event{}, nil, err
	}
	typ, err := r.u32("event type")
	if err != nil {
		return Event{}, nil, err
	}
	if EventType(typ) != EvNoAction {
		return Event{}, nil, fmt.Errorf("%w: header event has type %s, want EV_NO_ACTION (not a crypto-agile log?)",
			ErrMalformed, EventType(typ))
	}
	digest, err := r.bytes(sha1DigestSize, "SHA-1 digest")
	if err != nil {
		return Event{}, nil, err
	}
	size, err := r.u32("event size")
	if err != nil {
		return Event{}, nil, err
	}
	dataOff := r.off
	data, err := r.bytes(uint64(size), "Spec ID event data")
	if err != nil {
		return Event{}, nil, err
	}
	algs, err := parseSpecID(&reader{buf: data, base: dataOff})
	if err != nil {
		return Event{}, nil, err
	}
	return Event{
		Index:   0,
		PCR:     pcr,
		Type:    EvNoAction,
		Digests: map[Alg][]byte{AlgSHA1: digest},
		Data:    data,
	}, algs, nil
}

// parseSpecID parses TCG_EfiSpecIDEvent. r is bounded by the header's event size, so a count that would
// run past the event errors instead of reading into the next record.
func parseSpecID(r *reader) (map[Alg]int, error) {
	sig, err := r.bytes(uint64(len(specIDSignature)), "Spec ID signature")
	if err != nil {
		return nil, err
	}
	if string(sig) != specIDSignature {
		return nil, fmt.Errorf("%w: Spec ID signature is %q, want %q (not a crypto-agile TCG2 log)",
			ErrMalformed, sig, specIDSignature)
	}
	// platformClass (4), specVersionMinor, specVersionMajor, specErrata, uintnSize (1 each) carry nothing
	// the parser needs; the signature already pins the format.
	if _, err := r.bytes(8, "Spec ID platform class and version"); err != nil {
		return nil, err
	}
	n, err := r.u32("number of algorithms")
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: Spec ID event announces zero digest algorithms", ErrMalformed)
	}
	if n > maxAlgorithms {
		return nil, fmt.Errorf("%w: Spec ID event announces %d algorithms, more than the limit of %d",
			ErrMalformed, n, maxAlgorithms)
	}
	const algEntrySize = 4
	if uint64(n)*algEntrySize > uint64(r.remaining()) {
		return nil, fmt.Errorf("%w: Spec ID event announces %d algorithms at offset %d, but only %d bytes are left for them",
			ErrMalformed, n, r.pos(), r.remaining())
	}
	algs := make(map[Alg]int, n)
	for i := range n {
		off := r.pos()
		id, err := r.u16("algorithm ID")
		if err != nil {
			return nil, err
		}
		size, err := r.u16("digest size")
		if err != nil {
			return nil, err
		}
		alg := Alg(id)
		if _, dup := algs[alg]; dup {
			return nil, fmt.Errorf("%w: Spec ID event announces %s twice (entry %d at offset %d)", ErrMalformed, alg, i, off)
		}
		if want, ok := alg.knownSize(); ok && int(size) != want {
			return nil, fmt.Errorf("%w: Spec ID event announces %s with digest size %d, want %d (entry %d at offset %d)",
				ErrMalformed, alg, size, want, i, off)
		}
		if size == 0 {
			return nil, fmt.Errorf("%w: Spec ID event announces %s with digest size 0 (entry %d at offset %d)",
				ErrMalformed, alg, i, off)
		}
		algs[alg] = int(size)
	}
	vendorSize, err := r.u8("vendor info size")
	if err != nil {
		return nil, err
	}
	if _, err := r.bytes(uint64(vendorSize), "vendor info"); err != nil {
		return nil, err
	}
	if r.remaining() != 0 {
		return nil, fmt.Errorf("%w: %d unexpected bytes after the Spec ID event's vendor info at offset %d",
			ErrMalformed, r.remaining(), r.pos())
	}
	return algs, nil
}

// parseEvent2 parses one TCG_PCR_EVENT2.
func parseEvent2(r *reader, algs map[Alg]int) (Event, error) {
	pcr, err := r.u32("PCR index")
	if err != nil {
		return Event{}, err
	}
	typ, err := r.u32("event type")
	if err != nil {
		return Event{}, err
	}
	count, err := r.u32("digest count")
	if err != nil {
		return Event{}, err
	}
	// Each algorithm may appear once, so more digests than announced algorithms is malformed; checking here
	// bounds the loop and the map before either is touched.
	if uint64(count) > uint64(len(algs)) {
		return Event{}, fmt.Errorf("%w: digest count %d exceeds the %d algorithms announced in the Spec ID event",
			ErrMalformed, count, len(algs))
	}
	digests := make(map[Alg][]byte, count)
	for range count {
		off := r.pos()
		id, err := r.u16("digest algorithm ID")
		if err != nil {
			return Event{}, err
		}
		alg := Alg(id)
		size, ok := algs[alg]
		if !ok {
			return Event{}, fmt.Errorf("%w: digest algorithm %s at offset %d was not announced in the Spec ID event (announced: %s)",
				ErrMalformed, alg, off, algList(algs))
		}
		if _, dup := digests[alg]; dup {
			return Event{}, fmt.Errorf("%w: second %s digest at offset %d", ErrMalformed, alg, off)
		}
		d, err := r.bytes(uint64(size), alg.String()+" digest")
		if err != nil {
			return Event{}, err
		}
		digests[alg] = d
	}
	size, err := r.u32("event size")
	if err != nil {
		return Event{}, err
	}
	data, err := r.bytes(uint64(size), "event data")
	if err != nil {
		return Event{}, err
	}
	return Event{PCR: pcr, Type: EventType(typ), Digests: digests, Data: data}, nil
}

// algList renders algorithms in a stable order for error messages.
func algList(algs map[Alg]int) string {
	ids := make([]Alg, 0, len(algs))
	for a := range algs {
		ids = append(ids, a)
	}
	slices.Sort(ids)
	names := make([]string, len(ids))
	for i, a := range ids {
		names[i] = a.String()
	}
	return strings.Join(names, ", ")
}

// reader is a bounds-checked cursor. Every read checks the length against what is left before slicing, and
// errors name the field and the absolute offset so that a failure can be located in a hex dump.
type reader struct {
	buf []byte
	off int
	// base is the absolute offset of buf[0] in the log, for readers over a sub-slice.
	base int
}

func (r *reader) remaining() int { return len(r.buf) - r.off }

func (r *reader) pos() int { return r.base + r.off }

// bytes returns the next n bytes with capacity clipped, so that appending to one event's field can never
// overwrite the next one. n is uint64 so that no conversion from a wire value can wrap.
func (r *reader) bytes(n uint64, what string) ([]byte, error) {
	if n > uint64(r.remaining()) {
		return nil, fmt.Errorf("%w: %s at offset %d needs %d bytes, only %d left", ErrMalformed, what, r.pos(), n, r.remaining())
	}
	end := r.off + int(n)
	b := r.buf[r.off:end:end]
	r.off = end
	return b, nil
}

func (r *reader) u8(what string) (uint8, error) {
	b, err := r.bytes(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (r *reader) u16(what string) (uint16, error) {
	b, err := r.bytes(2, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

func (r *reader) u32(what string) (uint32, error) {
	b, err := r.bytes(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}
