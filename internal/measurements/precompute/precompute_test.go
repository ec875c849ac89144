package precompute

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/measurements"
)

// chain extends a zeroed PCR with SHA-256 of each input in turn: the PCR formulas written out plainly,
// independent of the package's event list.
func chain(inputs ...[]byte) []byte {
	pcr := make([]byte, 32)
	for _, in := range inputs {
		d := sha256.Sum256(in)
		next := sha256.Sum256(append(bytes.Clone(pcr), d[:]...))
		pcr = next[:]
	}
	return pcr
}

// chainDigests is chain for inputs that are already digests (Authenticode hashes).
func chainDigests(digests ...[]byte) []byte {
	pcr := make([]byte, 32)
	for _, d := range digests {
		next := sha256.Sum256(append(bytes.Clone(pcr), d...))
		pcr = next[:]
	}
	return pcr
}

// asciiUTF16Z widens ASCII to NUL-terminated UTF-16LE.
func asciiUTF16Z(s string) []byte {
	var b []byte
	for i := 0; i < len(s); i++ {
		b = append(b, s[i], 0)
	}
	return append(b, 0, 0)
}

func authenticode(t *testing.T, pe []byte) []byte {
	t.Helper()
	d, err := AuthenticodeSHA256(pe)
	require.NoError(t, err)
	return d
}

func TestPrecompute(t *testing.T) {
	uki := testPE(t, testUKISections(t), testPEOpts{})
	u, err := ParseUKI(uki)
	require.NoError(t, err)
	kernel := testKernel(t)
	initrd := bytes.Repeat([]byte("initrd"), 1000)
	bootLoader := testPE(t, []testSection{{name: ".text", content: []byte("systemd-boot")}}, testPEOpts{})

	calling := []byte("Calling EFI Application from Boot Option")
	sep := []byte{0, 0, 0, 0}
	fw := [][]byte{sha256Of(calling), sha256Of(sep)}
	cmdline := asciiUTF16Z("console=ttyS0 root=/dev/vda") // trailing newline dropped by the stub
	pcr11 := [][]byte{
		[]byte(".linux\x00"), kernel,
		[]byte(".osrel\x00"), []byte("ID=test\nVERSION_ID=1\n"),
		[]byte(".cmdline\x00"), []byte("console=ttyS0 root=/dev/vda\n"),
		[]byte(".initrd\x00"), initrd,
	}
	phases := [][]byte{[]byte("enter-initrd"), []byte("leave-initrd"), []byte("sysinit"), []byte("ready")}
	zero := make([]byte, 32)

	testCases := map[string]struct {
		opts      Options
		wantPCR4  []byte
		wantPCR12 []byte
	}{
		"direct": {
			opts:      Options{},
			wantPCR4:  chainDigests(append(fw, authenticode(t, uki), authenticode(t, kernel))...),
			wantPCR12: zero,
		},
		"direct, Secure Boot": {
			opts:      Options{Path: BootDirect, SecureBoot: true},
			wantPCR4:  chainDigests(append(fw, authenticode(t, uki), authenticode(t, kernel))...),
			wantPCR12: zero,
		},
		"systemd-boot": {
			opts:      Options{Path: BootSystemdBoot, BootLoader: bootLoader},
			wantPCR4:  chainDigests(append(fw, authenticode(t, bootLoader), authenticode(t, uki), authenticode(t, kernel))...),
			wantPCR12: chain(cmdline, cmdline),
		},
		"systemd-boot, Secure Boot: the stub keeps its own .cmdline and measures nothing into PCR 12": {
			opts:      Options{Path: BootSystemdBoot, BootLoader: bootLoader, SecureBoot: true},
			wantPCR4:  chainDigests(append(fw, authenticode(t, bootLoader), authenticode(t, uki), authenticode(t, kernel))...),
			wantPCR12: chain(cmdline),
		},
		"platform without boot-attempt events but with extra ones": {
			opts: Options{Platform: &Platform{
				Name:   "test",
				Before: []Event{{PCR: 4, Type: eventlog.EvEFIBootServicesApp, Digest: sha256.Sum256([]byte("rom"))}},
				After:  []Event{{PCR: 4, Type: eventlog.EvEFIBootServicesDriver, Digest: sha256.Sum256([]byte("drv"))}},
			}},
			wantPCR4:  chainDigests(sha256Of([]byte("rom")), sha256Of([]byte("drv")), authenticode(t, uki), authenticode(t, kernel)),
			wantPCR12: zero,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			r, err := Precompute(u, tc.opts)
			require.NoError(t, err)

			want := map[uint32][]byte{
				4:  tc.wantPCR4,
				9:  chain(cmdline, initrd),
				11: chain(pcr11...),
				12: tc.wantPCR12,
				13: zero, // no system extensions
			}
			assert.Equal(t, want, r.PCRs(false))
			wantPhases := map[uint32][]byte{4: want[4], 9: want[9], 11: chain(append(pcr11, phases...)...), 12: want[12], 13: zero}
			assert.Equal(t, wantPhases, r.PCRs(true))

			m := r.Measurements(true)
			require.NoError(t, m.Validate())
			assert.Equal(t, []uint32{4, 9, 11, 12, 13}, m.Indices())
			assert.Equal(t, measurements.Digest(wantPhases[11]), m[11].Expected)
			assert.False(t, m[11].WarnOnly)

			// The event log replays to exactly the predicted values, with or without the phases.
			for _, withPhases := range []bool{false, true} {
				log, err := eventlog.Parse(r.EventLog(withPhases))
				require.NoError(t, err)
				replayed, err := log.Replay(eventlog.AlgSHA256)
				require.NoError(t, err)
				for pcr, v := range r.PCRs(withPhases) {
					if !bytes.Equal(v, zero) {
						assert.Equal(t, v, replayed[pcr], "PCR %d, phases %v", pcr, withPhases)
					}
				}
			}
		})
	}
}

func sha256Of(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}

func TestPrecomputeSections(t *testing.T) {
	// .splash, .dtb and .pcrpkey are measured by 252 in table order regardless of file order; .uname and
	// .sbat are not.
	secs := []testSection{
		{name: ".pcrpkey", content: []byte("key")},
		{name: ".uname", content: []byte("6.1.0")},
		{name: ".cmdline", content: []byte("quiet")},
		{name: ".dtb", content: []byte("dtb")},
		{name: ".splash", content: []byte("bmp")},
		{name: ".linux", content: testKernel(t)},
	}
	u, err := ParseUKI(testPE(t, secs, testPEOpts{}))
	require.NoError(t, err)
	r, err := Precompute(u, Options{})
	require.NoError(t, err)
	want := chain([]byte(".linux\x00"), testKernel(t), []byte(".cmdline\x00"), []byte("quiet"),
		[]byte(".splash\x00"), []byte("bmp"), []byte(".dtb\x00"), []byte("dtb"), []byte(".pcrpkey\x00"), []byte("key"))
	assert.Equal(t, want, r.PCRs(false)[11])
	assert.Equal(t, chain(asciiUTF16Z("quiet")), r.PCRs(false)[9], "no .initrd: Linux measures only the command line")
}

func TestPrecomputeErrors(t *testing.T) {
	withCmdline := func(c []byte) *UKI {
		secs := testUKISections(t)
		if c == nil {
			secs = append(secs[:3], secs[4:]...)
		} else {
			secs[3].content = c
		}
		u, err := ParseUKI(testPE(t, secs, testPEOpts{}))
		require.NoError(t, err)
		return u
	}
	testCases := map[string]struct {
		uki     *UKI
		opts    Options
		wantErr error
	}{
		"no .cmdline":               {uki: withCmdline(nil), wantErr: ErrNoCmdline},
		"non-ASCII .cmdline":        {uki: withCmdline([]byte("root=/dev/vda quiet\xc3\xa4")), wantErr: ErrNonASCIICmdline},
		"systemd-boot without file": {uki: withCmdline([]byte("quiet")), opts: Options{Path: BootSystemdBoot}, wantErr: ErrNoBootLoader},
		"broken boot loader": {
			uki:     withCmdline([]byte("quiet")),
			opts:    Options{Path: BootSystemdBoot, BootLoader: []byte("MZ not really")},
			wantErr: ErrMalformedPE,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := Precompute(tc.uki, tc.opts)
			assert.ErrorIs(t, err, tc.wantErr)
		})
	}
	_, err := Precompute(withCmdline([]byte("quiet")), Options{Path: 7})
	assert.Error(t, err)
}

func TestStubCmdline(t *testing.T) {
	testCases := map[string]struct {
		in   string
		want string
	}{
		"plain":                     {in: "console=ttyS0 quiet", want: "console=ttyS0 quiet"},
		"trailing newline":          {in: "quiet\n", want: "quiet"},
		"leading and trailing":      {in: " \t quiet ro\r\n ", want: "quiet ro"},
		"inner controls are spaces": {in: "a\tb\nc\x7fd  e", want: "a b c d  e"},
		"stops at NUL":              {in: "quiet\x00garbage", want: "quiet"},
		"only whitespace":           {in: " \n", want: ""},
		"empty":                     {in: "", want: ""},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, StubCmdline([]byte(tc.in)))
		})
	}
}

func TestPrecomputeEventOrder(t *testing.T) {
	u, err := ParseUKI(testPE(t, testUKISections(t), testPEOpts{}))
	require.NoError(t, err)
	bootLoader := testPE(t, []testSection{{name: ".text", content: []byte("systemd-boot")}}, testPEOpts{})
	type ev struct {
		PCR  uint32
		Type eventlog.EventType
	}
	app := ev{4, eventlog.EvEFIBootServicesApp}
	sections := []ev{{11, eventlog.EvIPL}, {11, eventlog.EvIPL}, {11, eventlog.EvIPL}, {11, eventlog.EvIPL},
		{11, eventlog.EvIPL}, {11, eventlog.EvIPL}, {11, eventlog.EvIPL}, {11, eventlog.EvIPL}}
	linux := []ev{{9, eventlog.EvEventTag}, {9, eventlog.EvEventTag}}
	fw := []ev{{4, eventlog.EvEFIAction}, {4, eventlog.EvSeparator}}
	cat := func(parts ...[]ev) []ev {
		var out []ev
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	testCases := map[string]struct {
		opts Options
		want []ev
	}{
		"direct": {
			want: cat(fw, []ev{app}, sections, []ev{app}, linux),
		},
		"systemd-boot": {
			opts: Options{Path: BootSystemdBoot, BootLoader: bootLoader},
			want: cat(fw, []ev{app, {12, eventlog.EvIPL}, app}, sections, []ev{{12, eventlog.EvIPL}, app}, linux),
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			r, err := Precompute(u, tc.opts)
			require.NoError(t, err)
			var got []ev
			for _, e := range r.Events {
				got = append(got, ev{e.PCR, e.Type})
			}
			assert.Equal(t, tc.want, got)
			// The log names what was measured, so that a verifier can say which component changed.
			log, err := eventlog.Parse(r.EventLog(false))
			require.NoError(t, err)
			require.Len(t, log.Events, len(got)+1, "the header, then one record per extend")
			assert.Contains(t, log.Events[1].Description(), CallingEFIApplication)
			for _, e := range log.EventsFor(12) {
				assert.Contains(t, e.Description(), "console=ttyS0 root=/dev/vda")
			}
		})
	}
	assert.False(t, GenericUEFI.Verified, "no real boot has confirmed the generic profile yet")
}
