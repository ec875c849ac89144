package eventlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// expectedCorpus mirrors testdata/expected.json.
type expectedCorpus map[string]struct {
	AppDigests []string          `json:"efi_app_digests_sha256"`
	PCRs       map[string]string `json:"sha256_pcrs"`
}

func loadExpected(t testing.TB) expectedCorpus {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "expected.json"))
	require.NoError(t, err)
	var exp expectedCorpus
	require.NoError(t, json.Unmarshal(raw, &exp))
	return exp
}

func readLog(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return raw
}

func TestCorpus(t *testing.T) {
	sha1_256 := map[Alg]int{AlgSHA1: 20, AlgSHA256: 32}
	sha1_256_384 := map[Alg]int{AlgSHA1: 20, AlgSHA256: 32, AlgSHA384: 48}
	// Facts read off the logs once, kept so that a parser change that drops or merges events shows up
	// even where the PCRs would still match.
	testCases := map[string]struct {
		events          int
		algorithms      map[Alg]int
		startupLocality int // -1: no StartupLocality event
	}{
		"arch-linux-workstation.bin":                 {events: 25, algorithms: sha1_256, startupLocality: -1},
		"confidential-gke-debug-251000_eventlog.bin": {events: 55, algorithms: sha1_256_384, startupLocality: -1},
		"cos-101-amd-sev.bin":                        {events: 49, algorithms: sha1_256_384, startupLocality: -1},
		"cos-85-amd-sev.bin":                         {events: 46, algorithms: sha1_256_384, startupLocality: -1},
		"cos-93-amd-sev.bin":                         {events: 46, algorithms: sha1_256_384, startupLocality: -1},
		"eventlogwithsp800155.bin":                   {events: 54, algorithms: sha1_256_384, startupLocality: -1},
		"gdc-host.bin":                               {events: 159, algorithms: map[Alg]int{AlgSHA256: 32}, startupLocality: 3},
		"glinux-alex.bin":                            {events: 29, algorithms: sha1_256, startupLocality: 3},
		"rhel8-uefi.bin":                             {events: 83, algorithms: sha1_256_384, startupLocality: -1},
		"ubuntu-1804-amd-sev.bin":                    {events: 88, algorithms: sha1_256_384, startupLocality: -1},
		"ubuntu-2104-no-dbx.bin":                     {events: 112, algorithms: sha1_256_384, startupLocality: -1},
		"ubuntu-2104-no-secure-boot.bin":             {events: 106, algorithms: sha1_256_384, startupLocality: -1},
		"ubuntu-2404-amd-sevsnp.bin":                 {events: 117, algorithms: sha1_256_384, startupLocality: -1},
	}

	expected := loadExpected(t)
	files, err := filepath.Glob(filepath.Join("testdata", "*.bin"))
	require.NoError(t, err)
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	require.ElementsMatch(t, slices.Collect(mapKeys(expected)), names, "expected.json and testdata/*.bin list different logs")
	require.ElementsMatch(t, slices.Collect(mapKeys(testCases)), names, "test table and testdata/*.bin list different logs")

	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			assert := assert.New(t)
			require := require.New(t)
			want := expected[name]
			raw := readLog(t, name)

			log, err := Parse(raw)
			require.NoError(err)
			assert.Len(log.Events, tc.events)
			assert.Equal(tc.algorithms, log.Algorithms)
			for i, e := range log.Events {
				assert.Equal(i, e.Index)
			}

			pcrs, err := log.Replay(AlgSHA256)
			require.NoError(err)
			got := map[string]string{}
			for pcr, v := range pcrs {
				got[strconv.FormatUint(uint64(pcr), 10)] = hex.EncodeToString(v)
			}
			assert.Equal(want.PCRs, got, "replayed PCRs differ")

			var apps []string
			for _, e := range log.Events {
				if e.Type != EvEFIBootServicesApp {
					continue
				}
				assert.Equal(uint32(4), e.PCR, "application event %d outside PCR 4", e.Index)
				apps = append(apps, hex.EncodeToString(e.Digests[AlgSHA256]))
			}
			assert.Equal(want.AppDigests, nilIfEmpty(apps))

			var locality []int
			for _, e := range log.Events {
				if l, ok, err := startupLocality(e); ok {
					require.NoError(err)
					locality = append(locality, int(l))
				}
			}
			if tc.startupLocality < 0 {
				assert.Empty(locality)
			} else {
				assert.Equal([]int{tc.startupLocality}, locality)
			}

			// The other banks must replay too; there are no reference values, but every event has to carry
			// their digests.
			for alg := range log.Algorithms {
				_, err := log.Replay(alg)
				assert.NoError(err, "replaying %s", alg)
			}
		})
	}
}

func mapKeys[M ~map[string]V, V any](m M) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return []string{}
	}
	return s
}

// Offsets in a log with one announced algorithm: the header is 32 bytes plus a 33-byte Spec ID event, so
// event 1 starts at 65 with its digest algorithm at 77, digest at 79, event size at 79+digest size.
const (
	oneAlgHeaderSize = 65
	event1Offset     = oneAlgHeaderSize
)

// headerWith returns a header event whose Spec ID event is mutated by edit, for testing the header checks.
func headerWith(edit func(spec []byte) []byte) []byte {
	good := appendHeader(nil, []algSize{{AlgSHA256, 32}})
	spec := edit(slices.Clone(good[32:]))
	out := slices.Clone(good[:32])
	binary.LittleEndian.PutUint32(out[28:], uint32(len(spec)))
	return append(out, spec...)
}

func sha256Log(events ...[]byte) []byte {
	out := appendHeader(nil, []algSize{{AlgSHA256, 32}})
	for _, e := range events {
		out = append(out, e...)
	}
	return out
}

func TestParseErrors(t *testing.T) {
	digest := make([]byte, 32)
	goodEvent := appendEvent2(nil, 4, EvEFIAction, []algDigest{{AlgSHA256, digest}}, []byte("x"))

	testCases := map[string]struct {
		raw     []byte
		wantErr string
	}{
		"empty input": {
			raw:     nil,
			wantErr: "malformed event log: empty input",
		},
		"input over the size limit": {
			raw:     make([]byte, MaxLogSize+1),
			wantErr: "16777217 bytes exceeds the limit of 16777216 bytes",
		},
		"truncated header": {
			raw:     sha256Log()[:6],
			wantErr: "parsing event 0 (Spec ID header) at offset 0: malformed event log: event type at offset 4 needs 4 bytes, only 2 left",
		},
		"header is not EV_NO_ACTION": {
			raw: func() []byte {
				l := sha256Log()
				binary.LittleEndian.PutUint32(l[4:], uint32(EvPostCode))
				return l
			}(),
			wantErr: "header event has type EV_POST_CODE, want EV_NO_ACTION",
		},
		"header event size beyond input": {
			raw: func() []byte {
				l := sha256Log()
				binary.LittleEndian.PutUint32(l[28:], 1000)
				return l
			}(),
			wantErr: "Spec ID event data at offset 32 needs 1000 bytes, only 33 left",
		},
		"wrong Spec ID signature": {
			raw: headerWith(func(spec []byte) []byte {
				copy(spec, "Spec ID Event02\x00")
				return spec
			}),
			wantErr: `parsing event 0 (Spec ID header) at offset 0: malformed event log: Spec ID signature is "Spec ID Event02\x00", want "Spec ID Event03\x00"`,
		},
		"SHA-1 format log": {
			// A TPM 1.2 style log starts with a measured event, not the Spec ID event.
			raw:     appendEvent2(nil, 0, EvSCRTMVersion, nil, []byte("1.0")),
			wantErr: "header event has type EV_S_CRTM_VERSION, want EV_NO_ACTION (not a crypto-agile log?)",
		},
		"zero algorithms": {
			raw: headerWith(func(spec []byte) []byte {
				binary.LittleEndian.PutUint32(spec[24:], 0)
				return append(spec[:28], 0) // no entries, vendor info size 0
			}),
			wantErr: "Spec ID event announces zero digest algorithms",
		},
		"absurd algorithm count": {
			raw: headerWith(func(spec []byte) []byte {
				binary.LittleEndian.PutUint32(spec[24:], 0xFFFFFFFF)
				return spec
			}),
			wantErr: "Spec ID event announces 4294967295 algorithms, more than the limit of 32",
		},
		"algorithm count beyond the Spec ID event": {
			raw: headerWith(func(spec []byte) []byte {
				binary.LittleEndian.PutUint32(spec[24:], 2)
				return spec
			}),
			wantErr: "Spec ID event announces 2 algorithms at offset 60, but only 5 bytes are left for them",
		},
		"too many distinct algorithms": {
			raw: func() []byte {
				var algs []algSize
				for i := range 33 {
					algs = append(algs, algSize{Alg(0x100 + i), 1})
				}
				return appendHeader(nil, algs)
			}(),
			wantErr: "Spec ID event announces 33 algorithms, more than the limit of 32",
		},
		"known algorithm with wrong size": {
			raw: headerWith(func(spec []byte) []byte {
				binary.LittleEndian.PutUint16(spec[30:], 20)
				return spec
			}),
			wantErr: "Spec ID event announces SHA256 with digest size 20, want 32 (entry 0 at offset 60)",
		},
		"algorithm announced twice": {
			raw:     appendHeader(nil, []algSize{{AlgSHA256, 32}, {AlgSHA256, 32}}),
			wantErr: "Spec ID event announces SHA256 twice (entry 1 at offset 64)",
		},
		"unknown algorithm of size zero": {
			raw:     appendHeader(nil, []algSize{{AlgSHA256, 32}, {0x99, 0}}),
			wantErr: "Spec ID event announces Alg(0x0099) with digest size 0 (entry 1 at offset 64)",
		},
		"vendor info beyond the Spec ID event": {
			raw: headerWith(func(spec []byte) []byte {
				spec[len(spec)-1] = 4
				return spec
			}),
			wantErr: "vendor info at offset 65 needs 4 bytes, only 0 left",
		},
		"bytes after the vendor info": {
			raw: headerWith(func(spec []byte) []byte {
				return append(spec, 0xAA)
			}),
			wantErr: "1 unexpected bytes after the Spec ID event's vendor info at offset 65",
		},
		"digest algorithm not announced": {
			raw:     sha256Log(goodEvent, appendEvent2(nil, 4, EvEFIAction, []algDigest{{AlgSHA384, make([]byte, 48)}}, nil)),
			wantErr: fmt.Sprintf("parsing event 2 at offset %d: malformed event log: digest algorithm SHA384 at offset %d was not announced in the Spec ID event (announced: SHA256)", event1Offset+len(goodEvent), event1Offset+len(goodEvent)+12),
		},
		"digest count absurdly large": {
			raw: func() []byte {
				e := slices.Clone(goodEvent)
				binary.LittleEndian.PutUint32(e[8:], 0xFFFFFFFF)
				return sha256Log(e)
			}(),
			wantErr: "parsing event 1 at offset 65: malformed event log: digest count 4294967295 exceeds the 1 algorithms announced in the Spec ID event",
		},
		"same digest twice": {
			raw: append(appendHeader(nil, []algSize{{AlgSHA1, 20}, {AlgSHA256, 32}}),
				appendEvent2(nil, 4, EvEFIAction, []algDigest{{AlgSHA256, digest}, {AlgSHA256, digest}}, nil)...),
			wantErr: "parsing event 1 at offset 69: malformed event log: second SHA256 digest at offset 115",
		},
		"event size larger than the remaining input": {
			raw: func() []byte {
				e := slices.Clone(goodEvent)
				binary.LittleEndian.PutUint32(e[46:], 0xFFFFFFFF)
				return sha256Log(e)
			}(),
			wantErr: "parsing event 1 at offset 65: malformed event log: event data at offset 115 needs 4294967295 bytes, only 1 left",
		},
		"event size one more than left": {
			raw: func() []byte {
				e := slices.Clone(goodEvent)
				binary.LittleEndian.PutUint32(e[46:], 2)
				return sha256Log(e)
			}(),
			wantErr: "event data at offset 115 needs 2 bytes, only 1 left",
		},
		"truncated in a digest": {
			raw:     sha256Log(goodEvent[:30]),
			wantErr: "parsing event 1 at offset 65: malformed event log: SHA256 digest at offset 79 needs 32 bytes, only 16 left",
		},
		"trailing partial event": {
			raw:     sha256Log(goodEvent, goodEvent[:3]),
			wantErr: "parsing event 2 at offset 116: malformed event log: PCR index at offset 116 needs 4 bytes, only 3 left",
		},
	}

	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			log, err := Parse(tc.raw)
			require.Error(t, err)
			assert.Nil(t, log)
			assert.ErrorIs(t, err, ErrMalformed)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestParseEventLimit(t *testing.T) {
	testCases := map[string]struct {
		events  int // after the header
		wantErr string
	}{
		"at the limit": {events: MaxEvents - 1},
		"one over": {
			events:  MaxEvents,
			wantErr: fmt.Sprintf("more than 100000 events (50 bytes left at offset %d)", oneAlgHeaderSize+(MaxEvents-1)*50),
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			b := NewBuilder()
			for range tc.events {
				b.Add(1, EvPostCode, [32]byte{}, nil) // 50 bytes each
			}
			log, err := Parse(b.Bytes())
			if tc.wantErr != "" {
				assert.ErrorIs(t, err, ErrMalformed)
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Len(t, log.Events, MaxEvents)
		})
	}
}

// TestTruncation cuts real logs at every length: a cut on an event boundary must parse to exactly the events
// before it, any other cut must fail and name the event it fell into and where that event starts.
func TestTruncation(t *testing.T) {
	testCases := map[string]struct {
		file string
	}{
		"Arch, SHA-1 and SHA-256": {file: "arch-linux-workstation.bin"},
		"gLinux, StartupLocality": {file: "glinux-alex.bin"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			raw := readLog(t, tc.file)
			full, err := Parse(raw)
			require.NoError(t, err)

			// Event boundaries, computed from the parsed sizes rather than by the parser's own cursor.
			starts := []int{0, 32 + len(full.Events[0].Data)}
			for _, e := range full.Events[1:] {
				size := 12 + 4 + len(e.Data)
				for _, d := range e.Digests {
					size += 2 + len(d)
				}
				starts = append(starts, starts[len(starts)-1]+size)
			}
			require.Equal(t, len(raw), starts[len(starts)-1])

			event := 0 // index of the event the cut falls into
			for n := 1; n < len(raw); n++ {
				for n >= starts[event+1] {
					event++
				}
				log, err := Parse(raw[:n])
				if n == starts[event] {
					require.NoError(t, err, "cut at boundary %d", n)
					require.Len(t, log.Events, event)
					require.Equal(t, full.Events[:event], log.Events)
					continue
				}
				require.Error(t, err, "cut at %d inside event %d", n, event)
				require.ErrorIs(t, err, ErrMalformed)
				wantPrefix := fmt.Sprintf("parsing event %d at offset %d: ", event, starts[event])
				if event == 0 {
					wantPrefix = "parsing event 0 (Spec ID header) at offset 0: "
				}
				require.True(t, strings.HasPrefix(err.Error(), wantPrefix), "cut at %d: %v", n, err)
			}
		})
	}
}

func TestParseDoesNotAliasInput(t *testing.T) {
	raw := readLog(t, "rhel8-uefi.bin")
	want, err := Parse(raw)
	require.NoError(t, err)

	got, err := Parse(raw)
	require.NoError(t, err)
	for i := range raw {
		raw[i] = 0xFF
	}
	assert.Equal(t, want, got)

	// Fields are cut to their length, so appending to one cannot overwrite the next.
	before := slices.Clone(got.Events[2].Digests[AlgSHA1])
	_ = append(got.Events[1].Data, 1, 2, 3)
	for _, d := range got.Events[1].Digests {
		_ = append(d, 1, 2, 3)
	}
	assert.Equal(t, before, got.Events[2].Digests[AlgSHA1])
	assert.Equal(t, want.Events, got.Events)
}

func TestStrings(t *testing.T) {
	testCases := map[string]struct {
		got, want string
	}{
		"EV_PREBOOT_CERT":              {EvPrebootCert.String(), "EV_PREBOOT_CERT"},
		"EV_NO_ACTION":                 {EvNoAction.String(), "EV_NO_ACTION"},
		"EV_OMIT_BOOT_DEVICE_EVENTS":   {EvOmitBootDeviceEvents.String(), "EV_OMIT_BOOT_DEVICE_EVENTS"},
		"EV_EFI_BOOT_SERVICES_APP":     {EvEFIBootServicesApp.String(), "EV_EFI_BOOT_SERVICES_APPLICATION"},
		"EV_EFI_HCRTM_EVENT":           {EvEFIHCRTMEvent.String(), "EV_EFI_HCRTM_EVENT"},
		"EV_EFI_SPDM_FIRMWARE_CONFIG":  {EvEFISPDMFirmwareConfig.String(), "EV_EFI_SPDM_FIRMWARE_CONFIG"},
		"unknown event type":           {EventType(0x800000FF).String(), "EventType(0x800000ff)"},
		"EV_POST_CODE2 is not defined": {EventType(0x13).String(), "EventType(0x00000013)"},
		"SHA1":                         {AlgSHA1.String(), "SHA1"},
		"SHA256":                       {AlgSHA256.String(), "SHA256"},
		"SHA384":                       {AlgSHA384.String(), "SHA384"},
		"SHA512":                       {AlgSHA512.String(), "SHA512"},
		"SM3":                          {algSM3.String(), "SM3_256"},
		"unknown algorithm":            {Alg(0x0027).String(), "Alg(0x0027)"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.got)
		})
	}
	// Every listed type has a name of the TCG form.
	for typ, name := range eventTypeNames {
		assert.True(t, strings.HasPrefix(name, "EV_"), "%#x", uint32(typ))
	}
	assert.Len(t, eventTypeNames, 35)
}

func utf16le(s string) []byte {
	var out []byte
	for _, r := range s {
		out = binary.LittleEndian.AppendUint16(out, uint16(r))
	}
	return out
}

func TestDescription(t *testing.T) {
	sepDigest := sha256.Sum256([]byte{0, 0, 0, 0})
	withSHA256 := func(typ EventType, pcr uint32, data []byte) Event {
		d := sha256.Sum256(data)
		return Event{PCR: pcr, Type: typ, Digests: map[Alg][]byte{AlgSHA256: d[:]}, Data: data}
	}
	testCases := map[string]struct {
		event Event
		want  string
	}{
		"EFI action text": {
			event: withSHA256(EvEFIAction, 4, []byte("Calling EFI Application from Boot Option")),
			want:  `EV_EFI_ACTION in PCR 4: "Calling EFI Application from Boot Option"`,
		},
		"NUL-terminated ASCII": {
			event: withSHA256(EvIPL, 8, []byte("grub_cmd: linux /vmlinuz\x00")),
			want:  `EV_IPL in PCR 8: "grub_cmd: linux /vmlinuz"`,
		},
		"UTF-16LE text": {
			event: withSHA256(EvIPL, 12, utf16le("initrd=/initrd.img quiet\x00")),
			want:  `EV_IPL in PCR 12: "initrd=/initrd.img quiet"`,
		},
		"UTF-16LE Latin-1 text": {
			event: withSHA256(EvEFIAction, 4, utf16le("Démarrage")),
			want:  `EV_EFI_ACTION in PCR 4: "Démarrage"`,
		},
		"binary that decodes to CJK is not text": {
			// As UTF-16LE these are U+761B U+6C69, both printable.
			event: withSHA256(EvIPL, 9, []byte{0x1b, 0x76, 0x69, 0x6c}),
			want:  "EV_IPL in PCR 9, sha256 " + hex.EncodeToString(digestOf("\x1bvil")[:8]) + "…",
		},
		"long UTF-16LE text is truncated": {
			event: withSHA256(EvIPL, 9, utf16le(strings.Repeat("b", 61)+"\x00")),
			want:  `EV_IPL in PCR 9: "` + strings.Repeat("b", 59) + `…"`,
		},
		"text of exactly the limit is not truncated": {
			event: withSHA256(EvIPL, 9, utf16le(strings.Repeat("c", 60))),
			want:  `EV_IPL in PCR 9: "` + strings.Repeat("c", 60) + `"`,
		},
		"binary after a long text prefix is not text": {
			event: withSHA256(EvIPL, 9, append(bytes.Repeat([]byte("d"), 100), 0x01, 0x02)),
			want:  "EV_IPL in PCR 9, sha256 " + hex.EncodeToString(digestOf(strings.Repeat("d", 100) + "\x01\x02")[:8]) + "…",
		},
		"long text is truncated": {
			event: withSHA256(EvAction, 5, bytes.Repeat([]byte("a"), 100)),
			want:  `EV_ACTION in PCR 5: "` + strings.Repeat("a", 59) + `…"`,
		},
		"binary separator shows digest": {
			event: Event{PCR: 7, Type: EvSeparator, Digests: map[Alg][]byte{AlgSHA256: sepDigest[:]}, Data: []byte{0, 0, 0, 0}},
			want:  "EV_SEPARATOR in PCR 7, sha256 df3f619804a92fdb…",
		},
		"control characters are not printed": {
			event: withSHA256(EvEFIAction, 4, []byte("evil\x1b[2J")),
			want:  "EV_EFI_ACTION in PCR 4, sha256 " + hex.EncodeToString(digestOf("evil\x1b[2J")[:8]) + "…",
		},
		"unpaired surrogate is not text": {
			event: withSHA256(EvPostCode, 0, []byte{0x00, 0xD8, 0x41, 0x00}),
			want:  "EV_POST_CODE in PCR 0, sha256 " + hex.EncodeToString(digestOf("\x00\xd8\x41\x00")[:8]) + "…",
		},
		"text of other types is not shown": {
			event: withSHA256(EvEFIBootServicesApp, 4, []byte("looks like text")),
			want:  "EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4, sha256 " + hex.EncodeToString(digestOf("looks like text")[:8]) + "…",
		},
		"no SHA-256 digest": {
			event: Event{PCR: 1, Type: EventType(0x800000FF), Digests: map[Alg][]byte{AlgSHA1: make([]byte, 20)}, Data: []byte{1, 2, 3}},
			want:  "EventType(0x800000ff) in PCR 1, 3 bytes of data, no SHA-256 digest",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.event.Description())
		})
	}
}

func digestOf(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

func TestErrMalformedOnlyForParse(t *testing.T) {
	// Replay errors are about the log's content, not its encoding; callers must be able to tell them apart.
	log, err := Parse(appendHeader(nil, []algSize{{AlgSHA1, 20}}))
	require.NoError(t, err)
	_, err = log.Replay(AlgSHA256)
	require.Error(t, err)
	assert.False(t, errors.Is(err, ErrMalformed))
}

// TestParseUnknownAlgorithm checks the point of the crypto-agile format: digests of algorithms the parser
// does not know are skipped by the size the Spec ID event announces, so the events after them still parse.
func TestParseUnknownAlgorithm(t *testing.T) {
	const unknown Alg = 0x0099
	raw := appendHeader(nil, []algSize{{unknown, 5}, {AlgSHA256, 32}})
	d := sha256.Sum256([]byte("a"))
	raw = appendEvent2(raw, 4, EvEFIAction, []algDigest{{unknown, []byte{1, 2, 3, 4, 5}}, {AlgSHA256, d[:]}}, []byte("a"))
	raw = appendEvent2(raw, 4, EvEFIAction, []algDigest{{AlgSHA256, d[:]}, {unknown, []byte{6, 7, 8, 9, 10}}}, []byte("a"))

	log, err := Parse(raw)
	require.NoError(t, err)
	assert.Equal(t, map[Alg]int{unknown: 5, AlgSHA256: 32}, log.Algorithms)
	require.Len(t, log.Events, 3)
	assert.Equal(t, map[Alg][]byte{unknown: {6, 7, 8, 9, 10}, AlgSHA256: d[:]}, log.Events[2].Digests)

	pcrs, err := log.Replay(AlgSHA256)
	require.NoError(t, err)
	assert.Equal(t, ExtendSHA256(ExtendSHA256(make([]byte, 32), d[:]), d[:]), pcrs[4])

	_, err = log.Replay(unknown)
	assert.ErrorContains(t, err, "replaying Alg(0x0099) is not supported")
}
