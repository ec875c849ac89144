package groundtruth

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReadReport(t *testing.T) {
	pcrLines := func(skip int) string {
		var b strings.Builder
		for i := 0; i < 24; i++ {
			if i == skip {
				fmt.Fprintf(&b, "pcr-sha256 %d unreadable\r\n", i)
				continue
			}
			fmt.Fprintf(&b, "pcr-sha256 %d %s\r\n", i, strings.Repeat(fmt.Sprintf("%02X", i), 32))
		}
		return b.String()
	}
	log := "eventlog-base64 AQIDBA==\r\n"
	testCases := map[string]struct {
		console string
		wantErr string
	}{
		"complete, with escape sequences and CRs": {
			console: "\x1b[0mBdsDxe: booting\r\n[  OK  ] Started x\r\n\x1b[1m" + reportBegin + "\r\n" + pcrLines(-1) + log +
				"cmdline roothash=ab console=ttyS0\r\n" + reportEnd + "\r\nlogin: ",
		},
		"console ends early": {
			console: reportBegin + "\n" + pcrLines(-1), wantErr: "console closed",
		},
		"no report at all": {console: "Shell> ", wantErr: "console closed"},
		"unreadable PCR": {
			console: reportBegin + "\n" + pcrLines(7) + log + reportEnd + "\n", wantErr: "PCR 7: the guest could not read it",
		},
		"missing event log": {
			console: reportBegin + "\n" + pcrLines(-1) + reportEnd + "\n", wantErr: "incomplete boot report",
		},
		"unreadable event log": {
			console: reportBegin + "\n" + pcrLines(-1) + "eventlog-base64 unreadable\n" + reportEnd + "\n",
			wantErr: "could not read its event log",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			r, err := readReport(strings.NewReader(tc.console))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Len(t, r.PCRs, 24)
			assert.Equal(t, bytes.Repeat([]byte{0x17}, 32), r.PCRs[23])
			assert.Equal(t, []byte{1, 2, 3, 4}, r.EventLog)
			assert.Equal(t, "roothash=ab console=ttyS0", r.Cmdline)
		})
	}
}

// TestQEMUBoot boots the image in $CONSTELLATION_IMAGE_DIR (an image/mkosi/build.sh output) under OVMF with
// a swtpm vTPM and checks that the PCRs the node reports are exactly the ones precompute.Precompute
// predicts from the UKI alone, and that the firmware's event log agrees event by event. It takes minutes:
// `make image-test` runs it with CONSTELLATION_IMAGE_DIR set; plain `go test` skips it.
func TestQEMUBoot(t *testing.T) {
	dir := imageDir(t)
	ukiBytes, err := os.ReadFile(filepath.Join(dir, "constellation.efi"))
	require.NoError(t, err)
	uki, err := precompute.ParseUKI(ukiBytes)
	require.NoError(t, err)
	want, err := precompute.Precompute(uki, precompute.Options{Platform: &precompute.OVMF})
	require.NoError(t, err)

	report := boot(t, filepath.Join(dir, "disk.raw"))

	// The PCRs a verifier sees on the booted node.
	booted := want.PCRs(true)
	for _, pcr := range []uint32{precompute.PCRBootChain, precompute.PCRKernel, precompute.PCRUKI, precompute.PCRBootLoader, precompute.PCRSystemd} {
		assert.Equal(t, hex.EncodeToString(booted[pcr]), hex.EncodeToString(report.PCRs[pcr]), "PCR %d", pcr)
		t.Logf("PCR %2d  booted %x  predicted %x", pcr, report.PCRs[pcr], booted[pcr])
	}
	assert.Equal(t, precompute.StubCmdline(uki.Cmdline), report.Cmdline)

	// The comparison can fail: one changed character of the command line changes PCRs 9 and 11.
	tampered := bytes.Clone(ukiBytes)
	var cmdlineAt int
	for _, sec := range uki.Sections {
		if sec.Name == precompute.SectionCmdline {
			cmdlineAt = int(sec.PointerToRawData) + 1
		}
	}
	require.NotZero(t, cmdlineAt, "the UKI has a .cmdline section")
	tampered[cmdlineAt] ^= 0x01
	tu, err := precompute.ParseUKI(tampered)
	require.NoError(t, err)
	tw, err := precompute.Precompute(tu, precompute.Options{Platform: &precompute.OVMF})
	require.NoError(t, err)
	assert.NotEqual(t, report.PCRs[precompute.PCRUKI], tw.PCRs(true)[precompute.PCRUKI])
	assert.NotEqual(t, report.PCRs[precompute.PCRKernel], tw.PCRs(true)[precompute.PCRKernel])

	// The firmware's log must replay to the same values, except for PCR 11's userspace phases, which
	// systemd-pcrphase does not log there.
	log, err := eventlog.Parse(report.EventLog)
	require.NoError(t, err)
	replayed, err := log.Replay(eventlog.AlgSHA256)
	require.NoError(t, err)
	for pcr, v := range replayed {
		if pcr == precompute.PCRUKI {
			assert.Equal(t, want.PCRs(false)[pcr], v, "PCR 11 replayed from the firmware log: the stub's extends")
			continue
		}
		assert.Equal(t, report.PCRs[pcr], v, "PCR %d replayed from the firmware log", pcr)
	}

	// Event by event, the platform profile and the model: the same extends in the same order.
	for _, pcr := range []uint32{precompute.PCRBootChain, precompute.PCRKernel, precompute.PCRUKI} {
		assert.Equal(t, predictedEvents(want, pcr), loggedEvents(log, pcr), "PCR %d events", pcr)
	}
}

// TestQEMUBootSystemdBoot boots the same image through the image's systemd-boot (firmware → systemd-boot →
// UKI, the UKI found as a type #2 entry) and checks the prediction for that path, which adds systemd-boot
// to PCR 4 and the command line to PCR 12.
func TestQEMUBootSystemdBoot(t *testing.T) {
	dir := imageDir(t)
	ukiPath := filepath.Join(dir, "constellation.efi")
	loaderPath := filepath.Join(dir, "systemd-bootx64.efi")
	ukiBytes, err := os.ReadFile(ukiPath)
	require.NoError(t, err)
	loader, err := os.ReadFile(loaderPath)
	require.NoError(t, err)
	uki, err := precompute.ParseUKI(ukiBytes)
	require.NoError(t, err)
	want, err := precompute.Precompute(uki, precompute.Options{
		Platform: &precompute.OVMF, Path: precompute.BootSystemdBoot, BootLoader: loader,
	})
	require.NoError(t, err)

	disk := filepath.Join(t.TempDir(), "disk-systemd-boot.raw")
	require.NoError(t, SystemdBootDisk(filepath.Join(dir, "disk.raw"), loaderPath, ukiPath, disk))
	report := boot(t, disk)

	booted := want.PCRs(true)
	for _, pcr := range []uint32{precompute.PCRBootChain, precompute.PCRKernel, precompute.PCRUKI, precompute.PCRBootLoader, precompute.PCRSystemd} {
		assert.Equal(t, hex.EncodeToString(booted[pcr]), hex.EncodeToString(report.PCRs[pcr]), "PCR %d", pcr)
		t.Logf("PCR %2d  booted %x  predicted %x", pcr, report.PCRs[pcr], booted[pcr])
	}
	assert.NotEqual(t, make([]byte, 32), report.PCRs[precompute.PCRBootLoader], "systemd-boot measured the command line")
	log, err := eventlog.Parse(report.EventLog)
	require.NoError(t, err)
	for _, pcr := range []uint32{precompute.PCRBootChain, precompute.PCRKernel, precompute.PCRBootLoader} {
		assert.Equal(t, predictedEvents(want, pcr), loggedEvents(log, pcr), "PCR %d events", pcr)
	}
}

func imageDir(t *testing.T) string {
	t.Helper()
	return testenv.ImageDir(t)
}

func boot(t *testing.T, disk string) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var console bytes.Buffer
	start := time.Now()
	report, err := Boot(ctx, Config{Disk: disk, Console: &console})
	if err != nil {
		t.Logf("console:\n%s", tail(console.String(), 4000))
	}
	require.NoError(t, err)
	t.Logf("booted to the report in %s", time.Since(start).Round(time.Second))
	return report
}

func loggedEvents(log *eventlog.Log, pcr uint32) []string {
	var got []string
	for _, e := range log.EventsFor(pcr) {
		if e.Type == eventlog.EvNoAction {
			continue
		}
		got = append(got, fmt.Sprintf("%v %x", e.Type, e.Digests[eventlog.AlgSHA256]))
	}
	return got
}

func predictedEvents(r *precompute.Result, pcr uint32) []string {
	var predicted []string
	for _, e := range r.Events {
		if e.PCR == pcr {
			predicted = append(predicted, fmt.Sprintf("%v %x", e.Type, e.Digest))
		}
	}
	return predicted
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
