package eventlog

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"hash"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func locality(l byte) []byte { return append([]byte(startupLocalitySignature), l) }

func TestReplayErrors(t *testing.T) {
	d32 := make([]byte, 32)
	d20 := make([]byte, 20)
	sha1And256 := []algSize{{AlgSHA1, 20}, {AlgSHA256, 32}}
	logOf := func(algs []algSize, events ...[]byte) []byte {
		out := appendHeader(nil, algs)
		for _, e := range events {
			out = append(out, e...)
		}
		return out
	}

	testCases := map[string]struct {
		raw     []byte
		log     *Log // used instead of raw for states Parse cannot produce
		alg     Alg
		wantErr string
	}{
		"SHA-256 on a SHA-1-only log": {
			raw:     logOf([]algSize{{AlgSHA1, 20}}, appendEvent2(nil, 0, EvPostCode, []algDigest{{AlgSHA1, d20}}, nil)),
			alg:     AlgSHA256,
			wantErr: "replaying the SHA256 bank: the log has no SHA256 digests (its Spec ID event announces SHA1)",
		},
		"event missing the SHA-256 digest": {
			raw: logOf(sha1And256,
				appendEvent2(nil, 4, EvEFIAction, []algDigest{{AlgSHA1, d20}, {AlgSHA256, d32}}, []byte("first")),
				appendEvent2(nil, 4, EvEFIAction, []algDigest{{AlgSHA1, d20}}, []byte("Calling EFI Application from Boot Option"))),
			alg:     AlgSHA256,
			wantErr: `replaying the SHA256 bank: event 2 (EV_EFI_ACTION in PCR 4: "Calling EFI Application from Boot Option") has no SHA256 digest`,
		},
		"event without any digest": {
			raw:     logOf(sha1And256, appendEvent2(nil, 9, EvIPL, nil, []byte{0xFF})),
			alg:     AlgSHA1,
			wantErr: "event 1 (EV_IPL in PCR 9, 1 bytes of data, no SHA-256 digest) has no SHA1 digest",
		},
		"SM3 cannot be replayed": {
			raw:     logOf([]algSize{{algSM3, 32}}),
			alg:     algSM3,
			wantErr: "replaying SM3_256 is not supported",
		},
		"StartupLocality without locality byte": {
			raw:     logOf(sha1And256, appendEvent2(nil, 0, EvNoAction, nil, []byte(startupLocalitySignature))),
			alg:     AlgSHA256,
			wantErr: "StartupLocality event 1 has no locality byte",
		},
		"StartupLocality after PCR 0 was extended": {
			raw: logOf(sha1And256,
				appendEvent2(nil, 0, EvPostCode, []algDigest{{AlgSHA256, d32}}, nil),
				appendEvent2(nil, 0, EvNoAction, nil, locality(3))),
			alg:     AlgSHA256,
			wantErr: "StartupLocality event 2 comes after PCR 0 was extended",
		},
		"two StartupLocality events": {
			raw: logOf(sha1And256,
				appendEvent2(nil, 0, EvNoAction, nil, locality(3)),
				appendEvent2(nil, 0, EvNoAction, nil, locality(0))),
			alg:     AlgSHA256,
			wantErr: "second StartupLocality event 2 (first was event 1)",
		},
		"digest of the wrong size in a hand-built log": {
			log: &Log{
				Algorithms: map[Alg]int{AlgSHA256: 32},
				Events:     []Event{{Index: 1, PCR: 4, Type: EvPostCode, Digests: map[Alg][]byte{AlgSHA256: {1, 2, 3}}}},
			},
			alg:     AlgSHA256,
			wantErr: "has a 3-byte SHA256 digest, want 32",
		},
		"wrong announced size in a hand-built log": {
			log:     &Log{Algorithms: map[Alg]int{AlgSHA256: 20}},
			alg:     AlgSHA256,
			wantErr: "log announces 20-byte digests, want 32",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			log := tc.log
			if log == nil {
				var err error
				log, err = Parse(tc.raw)
				require.NoError(t, err, "the log must parse: the error belongs to replay")
			}
			pcrs, err := log.Replay(tc.alg)
			assert.Nil(t, pcrs)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

type builtEvent struct {
	pcr    uint32
	typ    EventType
	digest [32]byte
	data   []byte
}

func TestBuilderRoundTrip(t *testing.T) {
	testCases := map[string]struct {
		events []builtEvent
	}{
		"header only": {},
		"boot chain": {
			events: []builtEvent{
				{4, EvEFIAction, sha256.Sum256([]byte("Calling EFI Application from Boot Option")), []byte("Calling EFI Application from Boot Option")},
				{4, EvSeparator, sha256.Sum256([]byte{0, 0, 0, 0}), []byte{0, 0, 0, 0}},
				{4, EvEFIBootServicesApp, sha256.Sum256([]byte("uki")), []byte{}},
				{9, EvIPL, sha256.Sum256([]byte("cmdline")), utf16le("console=ttyS0\x00")},
				{15, EventType(0x800000FF), sha256.Sum256([]byte("cluster id")), []byte("vendor event")},
			},
		},
		"large data": {
			events: []builtEvent{{11, EvIPL, [32]byte{1}, make([]byte, 1<<20)}},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			require := require.New(t)
			b := NewBuilder()
			want := map[uint32][]byte{}
			for _, e := range tc.events {
				b.Add(e.pcr, e.typ, e.digest, e.data)
				cur, ok := want[e.pcr]
				if !ok {
					cur = make([]byte, 32)
				}
				want[e.pcr] = ExtendSHA256(cur, e.digest[:])
			}

			log, err := Parse(b.Bytes())
			require.NoError(err)
			require.Equal(map[Alg]int{AlgSHA256: 32}, log.Algorithms)
			require.Len(log.Events, len(tc.events)+1)
			assert.Equal(t, EvNoAction, log.Events[0].Type)
			for i, e := range tc.events {
				got := log.Events[i+1]
				assert.Equal(t, i+1, got.Index)
				assert.Equal(t, e.pcr, got.PCR)
				assert.Equal(t, e.typ, got.Type)
				assert.Equal(t, map[Alg][]byte{AlgSHA256: e.digest[:]}, got.Digests)
				assert.Equal(t, hex.EncodeToString(e.data), hex.EncodeToString(got.Data))
			}

			pcrs, err := log.Replay(AlgSHA256)
			require.NoError(err)
			assert.Equal(t, want, pcrs)
		})
	}
}

func TestBuilderBytesIsASnapshot(t *testing.T) {
	b := NewBuilder()
	data := []byte("first")
	b.Add(4, EvEFIAction, [32]byte{1}, data)
	first := b.Bytes()
	snapshot := slices.Clone(first)
	copy(data, "XXXXX") // the builder copied the data
	b.Add(4, EvEFIAction, [32]byte{2}, []byte("second"))
	first[0] ^= 0xFF // and Bytes returned a copy

	assert.Equal(t, snapshot[1:], first[1:])
	log, err := Parse(b.Bytes())
	require.NoError(t, err)
	require.Len(t, log.Events, 3)
	assert.Equal(t, []byte("first"), log.Events[1].Data)
}

func TestStartupLocality(t *testing.T) {
	d1 := sha256.Sum256([]byte("crtm"))
	d2 := sha256.Sum256([]byte("separator"))
	testCases := map[string]struct {
		locality  []byte // data of a leading EV_NO_ACTION event, nil for none
		pcr0Start []byte
		wantPCR0  bool
		noExtends bool
	}{
		"locality 3": {
			locality:  locality(3),
			pcr0Start: append(make([]byte, 31), 3),
			wantPCR0:  true,
		},
		"locality 0": {
			locality:  locality(0),
			pcr0Start: make([]byte, 32),
			wantPCR0:  true,
		},
		"no StartupLocality event": {
			pcr0Start: make([]byte, 32),
			wantPCR0:  true,
		},
		"trailing bytes after the locality are ignored": {
			locality:  append(locality(4), 0xAA, 0xBB),
			pcr0Start: append(make([]byte, 31), 4),
			wantPCR0:  true,
		},
		"other EV_NO_ACTION events do not change PCR 0": {
			locality:  []byte("SP800-155 Event3\x00\x03"),
			pcr0Start: make([]byte, 32),
			wantPCR0:  true,
		},
		"StartupLocality alone does not make PCR 0 appear": {
			locality:  locality(3),
			noExtends: true,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			b := NewBuilder()
			if tc.locality != nil {
				b.Add(0, EvNoAction, [32]byte{}, tc.locality)
			}
			if !tc.noExtends {
				b.Add(0, EvSCRTMVersion, d1, nil)
				b.Add(0, EvSeparator, d2, nil)
			}
			b.Add(7, EvSeparator, d2, nil)
			log, err := Parse(b.Bytes())
			require.NoError(t, err)

			pcrs, err := log.Replay(AlgSHA256)
			require.NoError(t, err)
			assert.Equal(t, ExtendSHA256(make([]byte, 32), d2[:]), pcrs[7], "other PCRs start from zero")
			if !tc.wantPCR0 {
				assert.NotContains(t, pcrs, uint32(0))
				return
			}
			want := ExtendSHA256(ExtendSHA256(tc.pcr0Start, d1[:]), d2[:])
			assert.Equal(t, want, pcrs[0])
		})
	}
}

// TestReplayBanks replays a log carrying several banks and checks each against an independent hash chain.
func TestReplayBanks(t *testing.T) {
	algs := []algSize{{AlgSHA1, 20}, {AlgSHA256, 32}, {AlgSHA384, 48}, {AlgSHA512, 64}}
	hashes := map[Alg]func() hash.Hash{AlgSHA1: sha1.New, AlgSHA256: sha256.New, AlgSHA384: sha512.New384, AlgSHA512: sha512.New}
	sum := func(alg Alg, parts ...[]byte) []byte {
		h := hashes[alg]()
		for _, p := range parts {
			h.Write(p)
		}
		return h.Sum(nil)
	}

	type ev struct {
		pcr  uint32
		typ  EventType
		data string
	}
	events := []ev{
		{0, EvNoAction, startupLocalitySignature + "\x02"},
		{0, EvSCRTMVersion, "v1"},
		{4, EvEFIAction, "Calling EFI Application from Boot Option"},
		{0, EvSeparator, "\x00\x00\x00\x00"},
		{4, EvSeparator, "\x00\x00\x00\x00"},
		{0, EvNoAction, "SP800-155 Event3"},
		{4, EvEFIBootServicesApp, "app"},
	}
	raw := appendHeader(nil, algs)
	for _, e := range events {
		var digests []algDigest
		for _, a := range algs {
			digests = append(digests, algDigest{a.alg, sum(a.alg, []byte(e.data))})
		}
		raw = appendEvent2(raw, e.pcr, e.typ, digests, []byte(e.data))
	}
	log, err := Parse(raw)
	require.NoError(t, err)

	testCases := map[string]struct{ alg Alg }{
		"SHA1": {AlgSHA1}, "SHA256": {AlgSHA256}, "SHA384": {AlgSHA384}, "SHA512": {AlgSHA512},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			size := hashes[tc.alg]().Size()
			want := map[uint32][]byte{}
			want[0] = append(make([]byte, size-1), 2)
			want[4] = make([]byte, size)
			for _, e := range events {
				if e.typ == EvNoAction {
					continue
				}
				want[e.pcr] = sum(tc.alg, want[e.pcr], sum(tc.alg, []byte(e.data)))
			}
			got, err := log.Replay(tc.alg)
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

func TestExtendSHA256(t *testing.T) {
	// SHA-256 of 32 zero bytes followed by SHA-256("") as computed by a TPM for a first extend.
	empty := sha256.Sum256(nil)
	got := ExtendSHA256(make([]byte, 32), empty[:])
	want := sha256.Sum256(append(make([]byte, 32), empty[:]...))
	assert.Equal(t, want[:], got)
	assert.Len(t, got, 32)
}

func TestEventsFor(t *testing.T) {
	log, err := Parse(readLog(t, "glinux-alex.bin"))
	require.NoError(t, err)

	testCases := map[string]struct {
		pcr       uint32
		wantFirst EventType
	}{
		"PCR 0 starts with the StartupLocality event": {pcr: 0, wantFirst: EvNoAction},
		"PCR 7":              {pcr: 7, wantFirst: EvEFIVariableDriverConfig},
		"PCR never extended": {pcr: 16},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			got := log.EventsFor(tc.pcr)
			var want []Event
			for _, e := range log.Events {
				if e.PCR == tc.pcr && e.Type != EvNoAction {
					want = append(want, e)
				}
			}
			if tc.wantFirst == EvNoAction {
				require.NotEmpty(t, got)
				assert.Equal(t, EvNoAction, got[0].Type)
				assert.Equal(t, 1, got[0].Index)
				got = got[1:]
			} else if len(want) > 0 {
				assert.Equal(t, tc.wantFirst, got[0].Type)
			}
			assert.Equal(t, want, got)
			for _, e := range got {
				assert.NotEqual(t, EvNoAction, e.Type)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	const name = "cos-101-amd-sev.bin"
	log, err := Parse(readLog(t, name))
	require.NoError(t, err)
	expected := loadExpected(t)[name]
	quotedFromExpected := func() map[uint32][]byte {
		q := map[uint32][]byte{}
		for k, v := range expected.PCRs {
			pcr, err := strconv.ParseUint(k, 10, 32)
			require.NoError(t, err)
			d, err := hex.DecodeString(v)
			require.NoError(t, err)
			q[uint32(pcr)] = d
		}
		return q
	}
	ones := func() []byte {
		v := make([]byte, 32)
		for i := range v {
			v[i] = 0xFF
		}
		return v
	}

	testCases := map[string]struct {
		edit     func(q map[uint32][]byte)
		alg      Alg
		wantPCRs []uint32
		wantErr  string
	}{
		"quote matches the log": {
			edit: func(map[uint32][]byte) {},
		},
		"a selection of PCRs": {
			edit: func(q map[uint32][]byte) {
				for pcr := range q {
					if pcr != 4 {
						delete(q, pcr)
					}
				}
			},
		},
		"PCR 4 and 9 differ": {
			edit: func(q map[uint32][]byte) {
				q[4] = make([]byte, 32)
				q[9] = ExtendSHA256(q[9], make([]byte, 32))
			},
			wantPCRs: []uint32{4, 9},
		},
		"unextended PCRs at their reset values": {
			edit: func(q map[uint32][]byte) {
				q[16] = make([]byte, 32)
				q[17] = ones()
				q[23] = make([]byte, 32)
			},
		},
		"unextended PCRs not at their reset values": {
			edit: func(q map[uint32][]byte) {
				q[16] = ones()
				q[17] = make([]byte, 32)
			},
			wantPCRs: []uint32{16, 17},
		},
		"quoted value of the wrong size": {
			edit:    func(q map[uint32][]byte) { q[4] = q[4][:20] },
			wantErr: "quoted PCR 4 is 20 bytes, want 32 for SHA256",
		},
		"bank the log lacks": {
			edit:    func(map[uint32][]byte) {},
			alg:     AlgSHA512,
			wantErr: "the log has no SHA512 digests",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			quoted := quotedFromExpected()
			tc.edit(quoted)
			alg := tc.alg
			if alg == 0 {
				alg = AlgSHA256
			}
			got, err := log.Diff(alg, quoted)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			var pcrs []uint32
			for _, m := range got {
				pcrs = append(pcrs, m.PCR)
				assert.Equal(t, quoted[m.PCR], m.Quoted)
				assert.NotEqual(t, m.Quoted, m.Replayed)
				assert.Equal(t, log.EventsFor(m.PCR), m.Events)
				assert.Contains(t, m.String(), "PCR "+strconv.Itoa(int(m.PCR))+": quoted ")
			}
			assert.Equal(t, tc.wantPCRs, pcrs)
		})
	}

	// The PCR 4 mismatch names the events that make it up.
	quoted := quotedFromExpected()
	quoted[4] = make([]byte, 32)
	got, err := log.Diff(AlgSHA256, quoted)
	require.NoError(t, err)
	require.Len(t, got, 1)
	want, _ := hex.DecodeString(expected.PCRs["4"])
	assert.Equal(t, want, got[0].Replayed)
	var apps int
	for _, e := range got[0].Events {
		assert.Equal(t, uint32(4), e.PCR)
		if e.Type == EvEFIBootServicesApp {
			apps++
		}
	}
	assert.Equal(t, 4, apps)
}
