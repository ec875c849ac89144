package launcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/localprovider/verity"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// afterPhases is PCR 11 after the stub's events and the given phases.
func afterPhases(res *precompute.Result, phases ...string) []byte {
	pcr := res.PCRs(false)[precompute.PCRUKI]
	for _, p := range phases {
		d := sha256.Sum256([]byte(p))
		pcr = eventlog.ExtendSHA256(pcr, d[:])
	}
	return pcr
}

// replayLog parses the event log at path and replays its SHA-256 bank.
func replayLog(t *testing.T, path string) map[uint32][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	log, err := eventlog.Parse(raw)
	require.NoError(t, err)
	pcrs, err := log.Replay(eventlog.AlgSHA256)
	require.NoError(t, err)
	return pcrs
}

// assertReplays checks that the log at path replays to want; PCRs the log does not extend must be zero.
func assertReplays(t *testing.T, path string, want map[uint32][]byte) {
	t.Helper()
	replayed := replayLog(t, path)
	for idx, v := range want {
		got, ok := replayed[idx]
		if !ok {
			got = make([]byte, sha256.Size)
		}
		assert.Equal(t, v, got, "replayed PCR %d", idx)
	}
	for idx := range replayed {
		assert.Contains(t, want, idx, "the log extends PCR %d", idx)
	}
}

// TestLaunch: a launch on a fresh vTPM, then the node runtime's phases, yields the precomputed PCRs; the
// event log replays to the vTPM's PCRs at every step and a document with it validates against reference
// values from the precomputation.
func TestLaunch(t *testing.T) {
	im := newImage(t, imageSpec{})
	tp := newTPM(t)
	cfg := config(t, im, tp)
	want := predict(t, im.path(UKIFile))
	fresh := readPCRs(t, tp)
	for _, idx := range bootPCRList {
		require.Equal(t, make([]byte, 32), fresh[idx], "swtpm after startup-clear: PCR %d", idx)
	}

	b := launch(t, cfg)

	// The root is the verified erofs.
	root := b.Root()
	require.NotNil(t, root)
	fi, err := os.Stat(im.path(RootFile))
	require.NoError(t, err)
	assert.Equal(t, im.rootHash, root.RootHash)
	assert.Equal(t, fi.Size(), root.DataSize)
	assert.Equal(t, fi.Size(), root.FSSize)
	assert.Equal(t, uint32(4096), root.Params.DataBlockSize)
	assert.Equal(t, verity.RepartSalt(seed), root.Params.Salt)
	assert.Equal(t, im.path(RootFile), root.Path)
	assert.True(t, root.Leased(), "the kernel should grant a read lease on a file the test owns")
	require.NoError(t, root.Check())

	// Measured up to leave-initrd; the rest is the runtime's.
	pcrs := readPCRs(t, tp)
	wantNow := withZeros(want.PCRs(false))
	wantNow[precompute.PCRUKI] = afterPhases(want, precompute.PhaseEnterInitrd, precompute.PhaseLeaveInitrd)
	assert.Equal(t, wantNow, pcrs)
	assert.Equal(t, []string{precompute.PhaseSysinit, precompute.PhaseReady}, b.PendingPhases())
	for idx, v := range replayLog(t, cfg.EventLog) {
		assert.Equal(t, pcrs[idx], v, "replayed PCR %d", idx)
	}

	require.NoError(t, b.EnterPhase(precompute.PhaseSysinit))
	replayed := replayLog(t, cfg.EventLog)
	assert.Equal(t, afterPhases(want, precompute.BootedPhases[:3]...), replayed[precompute.PCRUKI])
	require.NoError(t, b.EnterPhase(precompute.PhaseReady))
	assert.Empty(t, b.PendingPhases())
	require.NoError(t, b.CompleteBoot(), "nothing left to enter")

	// Booted: exactly the precomputed values, in the vTPM and in the log.
	pcrs = readPCRs(t, tp)
	assert.Equal(t, withZeros(want.PCRs(true)), pcrs)
	assertReplays(t, cfg.EventLog, want.PCRs(true))
	logData, err := os.ReadFile(cfg.EventLog)
	require.NoError(t, err)
	assert.Equal(t, want.EventLog(true), logData, "the log is exactly the predicted extends")

	res, err := attest(t, tp, cfg.EventLog, referenceValues(want))
	require.NoError(t, err)
	assert.Empty(t, res.Warnings)
}

// TestCompleteBoot enters every pending phase at once.
func TestCompleteBoot(t *testing.T) {
	im := newImage(t, imageSpec{})
	tp := newTPM(t)
	cfg := config(t, im, tp)
	b := launch(t, cfg)
	require.NoError(t, b.CompleteBoot())
	assert.Equal(t, withZeros(predict(t, im.path(UKIFile)).PCRs(true)), readPCRs(t, tp))
	assertReplays(t, cfg.EventLog, b.Prediction().PCRs(true))
}

func TestPhaseOrder(t *testing.T) {
	im := newImage(t, imageSpec{})
	tp := newTPM(t)
	b := launch(t, config(t, im, tp))
	before := readPCRs(t, tp)

	for _, phase := range []string{precompute.PhaseReady, precompute.PhaseEnterInitrd, precompute.PhaseLeaveInitrd, "shutdown", ""} {
		err := b.EnterPhase(phase)
		require.ErrorIs(t, err, ErrPhase, phase)
		assert.Contains(t, err.Error(), `the next phase is "sysinit"`)
	}
	assert.Equal(t, before, readPCRs(t, tp), "refused phases extend nothing")

	require.NoError(t, b.EnterPhase(precompute.PhaseSysinit))
	require.ErrorIs(t, b.EnterPhase(precompute.PhaseSysinit), ErrPhase, "each phase once")
	require.NoError(t, b.EnterPhase(precompute.PhaseReady))
	err := b.EnterPhase(precompute.PhaseReady)
	require.ErrorIs(t, err, ErrPhase)
	assert.Contains(t, err.Error(), "already booted")
}

// TestTamperedUKI: a changed byte in a measured section changes PCR 11 (the launch itself succeeds: the
// launcher measures, the verifier judges), and the validator names PCR 11.
func TestTamperedUKI(t *testing.T) {
	testCases := map[string]struct {
		section string
		needle  []byte // the byte to change is the first of needle; nil means the middle of the section
	}{
		".cmdline": {section: precompute.SectionCmdline, needle: []byte("console")},
		".osrel":   {section: precompute.SectionOSRel, needle: []byte("VERSION_ID")},
		".linux":   {section: precompute.SectionLinux},
		".initrd":  {section: precompute.SectionInitrd},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			im := newImage(t, imageSpec{})
			tp := newTPM(t)
			cfg := config(t, im, tp)
			untampered := predict(t, im.path(UKIFile))
			flipByte(t, im.path(UKIFile), sectionOffset(t, im.path(UKIFile), tc.section, tc.needle))

			b := launch(t, cfg)
			require.NoError(t, b.CompleteBoot())
			pcrs := readPCRs(t, tp)
			assert.NotEqual(t, untampered.PCRs(true)[precompute.PCRUKI], pcrs[precompute.PCRUKI])
			assert.Equal(t, withZeros(predict(t, im.path(UKIFile)).PCRs(true)), pcrs, "the launcher measured the tampered file")

			_, err := attest(t, tp, cfg.EventLog, referenceValues(untampered))
			require.ErrorIs(t, err, attestation.ErrMeasurementMismatch)
			var verr *attestation.ValidationError
			require.ErrorAs(t, err, &verr)
			var mismatched []uint32
			for _, m := range verr.Mismatches {
				mismatched = append(mismatched, m.PCR)
				if m.PCR == precompute.PCRUKI {
					assert.Contains(t, m.Events, `EV_IPL in PCR 11: "`+tc.section+`"`, "the log names the section")
				}
			}
			assert.Contains(t, mismatched, uint32(precompute.PCRUKI))
			assert.Contains(t, err.Error(), "PCR 11")
		})
	}
}

// TestRefusedRoot: a root that does not verify is refused, nothing is handed out, and the vTPM and log
// show the boot up to enter-initrd, not leave-initrd.
func TestRefusedRoot(t *testing.T) {
	blockMismatch := func(t *testing.T, err error) {
		var bm *verity.BlockMismatchError
		assert.ErrorAs(t, err, &bm)
	}
	testCases := map[string]struct {
		tamper   func(t *testing.T, im testImage)
		wantErr  error
		contains string
		check    func(t *testing.T, err error)
		// unmeasured is set for refusals that come before anything is extended.
		unmeasured bool
	}{
		"root data byte": {
			tamper:   func(t *testing.T, im testImage) { flipByte(t, im.path(RootFile), 5*4096+17) },
			wantErr:  ErrRootMismatch,
			contains: "root.erofs bytes 20480 to 24575 (data block 5) do not match",
			check:    blockMismatch,
		},
		"root last byte": {
			tamper: func(t *testing.T, im testImage) {
				fi, err := os.Stat(im.path(RootFile))
				require.NoError(t, err)
				flipByte(t, im.path(RootFile), fi.Size()-1)
			},
			wantErr: ErrRootMismatch, contains: "do not match their digest", check: blockMismatch,
		},
		"erofs superblock byte": {
			tamper:   func(t *testing.T, im testImage) { flipByte(t, im.path(RootFile), 1024+36) },
			wantErr:  ErrRootMismatch,
			contains: "(data block 0)",
		},
		"verity tree byte, level 0": {
			tamper:  func(t *testing.T, im testImage) { flipByte(t, im.path(VerityFile), 4096+4096+40) },
			wantErr: ErrRootMismatch, check: blockMismatch,
		},
		"verity tree byte, top level": {
			tamper:   func(t *testing.T, im testImage) { flipByte(t, im.path(VerityFile), 4096+3) },
			wantErr:  ErrRootMismatch,
			contains: "root.verity's hash tree is inconsistent",
			check:    blockMismatch,
		},
		"verity superblock salt": {
			tamper:  func(t *testing.T, im testImage) { flipByte(t, im.path(VerityFile), 88) },
			wantErr: ErrRootMismatch,
		},
		"verity superblock magic": {
			tamper:   func(t *testing.T, im testImage) { flipByte(t, im.path(VerityFile), 0) },
			wantErr:  ErrRootMismatch,
			contains: "root.verity is not a usable dm-verity hash partition",
		},
		"root truncated": {
			tamper: func(t *testing.T, im testImage) {
				fi, err := os.Stat(im.path(RootFile))
				require.NoError(t, err)
				require.NoError(t, os.Truncate(im.path(RootFile), fi.Size()-4096))
			},
			wantErr: ErrRootMismatch, contains: "root.erofs is shorter than root.verity's hash tree covers",
		},
		"verity truncated": {
			tamper:   func(t *testing.T, im testImage) { require.NoError(t, os.Truncate(im.path(VerityFile), 4096+4096)) },
			wantErr:  ErrRootMismatch,
			contains: "root.verity is shorter than its hash tree",
		},
		"root and verity from another build": {
			tamper: func(t *testing.T, im testImage) {
				other := newImage(t, imageSpec{content: 7})
				for _, f := range []string{RootFile, VerityFile} {
					require.NoError(t, os.Rename(other.path(f), im.path(f)))
				}
			},
			wantErr: ErrRootMismatch, contains: "does not lead to the roothash=",
			check: func(t *testing.T, err error) { assert.ErrorIs(t, err, verity.ErrRootHashMismatch) },
		},
		"tree covers only part of the file system": {
			tamper: func(t *testing.T, im testImage) {
				// A tree over the first 16 blocks, and a UKI naming its root hash: verity alone would accept it.
				root := buildVerity(t, im.path(RootFile), im.path(VerityFile), verity.Params{DataBlocks: 16})
				buildUKI(t, im.dir, "roothash="+hex.EncodeToString(root)+" console=ttyS0\n")
			},
			wantErr:  ErrRootMismatch,
			contains: "but root.verity covers only the first 65536 bytes",
		},
		"forged geometry": {
			tamper:   forgeGeometry,
			wantErr:  ErrRootMismatch,
			contains: "the verified data has no erofs superblock",
		},
		"root writable by others": {
			tamper:     func(t *testing.T, im testImage) { require.NoError(t, os.Chmod(im.path(RootFile), 0o646)) },
			wantErr:    ErrUnsafeRoot,
			contains:   "writable by its group or others (mode 0646)",
			unmeasured: true,
		},
		"root missing": {
			tamper:     func(t *testing.T, im testImage) { require.NoError(t, os.Remove(im.path(RootFile))) },
			contains:   "opening the image's root.erofs",
			unmeasured: true,
		},
		"root is a symlink out of the image directory": {
			tamper: func(t *testing.T, im testImage) {
				outside := filepath.Join(t.TempDir(), RootFile)
				require.NoError(t, os.Rename(im.path(RootFile), outside))
				require.NoError(t, os.Symlink(outside, im.path(RootFile)))
			},
			contains:   "opening the image's root.erofs",
			unmeasured: true,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			im := newImage(t, imageSpec{})
			tp := newTPM(t)
			cfg := config(t, im, tp)
			tc.tamper(t, im)
			res := predict(t, im.path(UKIFile))

			b, err := Launch(context.Background(), cfg)
			require.Error(t, err)
			assert.Nil(t, b, "no root may be handed out")
			if tc.wantErr != nil {
				assert.ErrorIs(t, err, tc.wantErr)
			}
			if tc.contains != "" {
				assert.Contains(t, err.Error(), tc.contains)
			}
			if errors.Is(err, ErrRootMismatch) {
				assert.Contains(t, err.Error(), "rebuild it (image/mkosi/build.sh) or download it again")
			}
			if tc.check != nil {
				tc.check(t, err)
			}

			pcrs := readPCRs(t, tp)
			if tc.unmeasured {
				for _, idx := range bootPCRList {
					assert.Equal(t, make([]byte, 32), pcrs[idx], "PCR %d", idx)
				}
				assert.NoFileExists(t, cfg.EventLog)
				return
			}
			wantPCRs := withZeros(res.PCRs(false))
			wantPCRs[precompute.PCRUKI] = afterPhases(res, precompute.PhaseEnterInitrd)
			assert.Equal(t, wantPCRs, pcrs, "measured up to enter-initrd")
			assertReplays(t, cfg.EventLog, wantPCRs)
		})
	}
}

// forgeGeometry replaces the root with the genuine tree's level-0 hash blocks and root.verity with a
// superblock claiming that many data blocks plus the upper levels: verity accepts this against the genuine
// root hash (localprovider/verity's TestGeometryNotBound); the launcher's erofs check must not.
func forgeGeometry(t *testing.T, im testImage) {
	hash, err := os.ReadFile(im.path(VerityFile))
	require.NoError(t, err)
	p, err := verity.ParseSuperblock(hash)
	require.NoError(t, err)
	require.Greater(t, p.DataBlocks, uint64(128), "the test root must need two levels")
	level0Blocks := (p.DataBlocks + 127) / 128
	tree := hash[p.TreeOffset():]
	upper, level0 := tree[:4096], tree[4096:4096+level0Blocks*4096]
	forged := *p
	forged.DataBlocks = level0Blocks
	sb, err := forged.MarshalSuperblock()
	require.NoError(t, err)
	forgedHash := append(append(sb, make([]byte, 4096-len(sb))...), upper...)
	require.NoError(t, os.WriteFile(im.path(RootFile), level0, 0o644))
	require.NoError(t, os.WriteFile(im.path(VerityFile), forgedHash, 0o644))

	// The forgery is valid as far as verity can tell.
	data, err := os.Open(im.path(RootFile))
	require.NoError(t, err)
	defer data.Close()
	_, err = verity.Verify(context.Background(), data, int64(len(level0)), bytes.NewReader(forgedHash), im.rootHash)
	require.NoError(t, err)
}

// TestRootSlack: root.erofs may be longer than the tree covers (partition slack); the slack is not part of
// the root.
func TestRootSlack(t *testing.T) {
	im := newImage(t, imageSpec{})
	fi, err := os.Stat(im.path(RootFile))
	require.NoError(t, err)
	f, err := os.OpenFile(im.path(RootFile), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(bytes.Repeat([]byte("unverified slack"), 1000))
	require.NoError(t, err)
	require.NoError(t, f.Close())

	b := launch(t, config(t, im, newTPM(t)))
	assert.Equal(t, fi.Size(), b.Root().DataSize)
	assert.Equal(t, fi.Size(), b.Root().FSSize)
}

// TestNoRootHash: a UKI that cannot bind a root is refused before anything is measured.
func TestNoRootHash(t *testing.T) {
	testCases := map[string]string{
		"no roothash":        "console=ttyS0 ro\n",
		"malformed roothash": "roothash=xyz console=ttyS0\n",
		"short roothash":     "roothash=0123abcd console=ttyS0\n",
		"usrhash only":       "usrhash=%s console=ttyS0\n",
	}
	for name, cmdline := range testCases {
		t.Run(name, func(t *testing.T) {
			im := newImage(t, imageSpec{cmdline: cmdline})
			tp := newTPM(t)
			cfg := config(t, im, tp)
			b, err := Launch(context.Background(), cfg)
			require.ErrorIs(t, err, ErrNoRootHash)
			assert.Nil(t, b)
			assert.Contains(t, err.Error(), "not a node image for the local provider")
			for idx, v := range readPCRs(t, tp) {
				assert.Equal(t, make([]byte, 32), v, "PCR %d untouched", idx)
			}
			assert.NoFileExists(t, cfg.EventLog)
		})
	}
}

// TestNotReset: a vTPM is launched once per power cycle.
func TestNotReset(t *testing.T) {
	testCases := map[string]struct {
		prepare func(t *testing.T, cfg Config)
		pcr     string
	}{
		"second launch": {
			prepare: func(t *testing.T, cfg Config) { launch(t, cfg) },
			pcr:     "PCR 4 ",
		},
		"PCR 12 extended": {
			prepare: func(t *testing.T, cfg Config) {
				require.NoError(t, tpm.Extend(cfg.TPM, 12, make([]byte, 32)))
			},
			pcr: "PCR 12 ",
		},
		"PCR 9 extended": {
			prepare: func(t *testing.T, cfg Config) {
				require.NoError(t, tpm.Extend(cfg.TPM, 9, make([]byte, 32)))
			},
			pcr: "PCR 9 ",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			im := newImage(t, imageSpec{})
			tp := newTPM(t)
			cfg := config(t, im, tp)
			tc.prepare(t, cfg)
			before := readPCRs(t, tp)
			cfg.EventLog = filepath.Join(t.TempDir(), "second.log")

			b, err := Launch(context.Background(), cfg)
			require.ErrorIs(t, err, ErrNotReset)
			assert.Nil(t, b)
			assert.Contains(t, err.Error(), tc.pcr)
			assert.Contains(t, err.Error(), "restart its swtpm")
			assert.Equal(t, before, readPCRs(t, tp), "nothing extended")
			assert.NoFileExists(t, cfg.EventLog)
		})
	}
}

// TestRootChanged: after verification, writers are detected; replacing the path is harmless.
func TestRootChanged(t *testing.T) {
	testCases := map[string]struct {
		change  func(t *testing.T, im testImage)
		wantErr bool
		lease   bool // needs the read lease
		noLease bool // release the lease first
	}{
		"opened for writing": {
			change: func(t *testing.T, im testImage) {
				// O_NONBLOCK: fail at once instead of waiting out the lease break, which starts anyway.
				_, err := os.OpenFile(im.path(RootFile), os.O_WRONLY|syscall.O_NONBLOCK, 0)
				require.ErrorIs(t, err, syscall.EWOULDBLOCK)
			},
			wantErr: true, lease: true,
		},
		"modification time changed": {
			change: func(t *testing.T, im testImage) {
				fi, err := os.Stat(im.path(RootFile))
				require.NoError(t, err)
				require.NoError(t, os.Chtimes(im.path(RootFile), fi.ModTime(), fi.ModTime().Add(time.Second)))
			},
			wantErr: true,
		},
		"modification time restored, no lease": {
			// Without the lease, a write whose mtime was set back still changes the ctime.
			change: func(t *testing.T, im testImage) {
				fi, err := os.Stat(im.path(RootFile))
				require.NoError(t, err)
				require.NoError(t, os.Chtimes(im.path(RootFile), fi.ModTime(), fi.ModTime()))
			},
			noLease: true, wantErr: true,
		},
		"path replaced, no lease": {
			// Without the lease the ctime counts, and a rename over the path changes the verified inode's.
			change: func(t *testing.T, im testImage) {
				other := newImage(t, imageSpec{content: 9})
				require.NoError(t, os.Rename(other.path(RootFile), im.path(RootFile)))
			},
			noLease: true, wantErr: true,
		},
		"chmod": {
			change: func(t *testing.T, im testImage) { require.NoError(t, os.Chmod(im.path(RootFile), 0o600)) },
		},
		"path replaced": {
			change: func(t *testing.T, im testImage) {
				other := newImage(t, imageSpec{content: 9})
				require.NoError(t, os.Rename(other.path(RootFile), im.path(RootFile)))
			},
		},
		"read": {
			change: func(t *testing.T, im testImage) {
				_, err := os.ReadFile(im.path(RootFile))
				require.NoError(t, err)
			},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			im := newImage(t, imageSpec{})
			b := launch(t, config(t, im, newTPM(t)))
			if tc.lease && !b.Root().Leased() {
				t.Skip("no read lease on this file system")
			}
			if tc.noLease {
				releaseLease(t, b.Root())
			}
			tc.change(t, im)
			err := b.Root().Check()
			if !tc.wantErr {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrRootChanged)
		})
	}
}

// releaseLease makes r a root without a lease, as on a file system that refuses leases.
func releaseLease(t *testing.T, r *Root) {
	if r.leased {
		require.NoError(t, r.fcntl(syscall.F_SETLEASE, syscall.F_UNLCK))
		r.leased = false
	}
}

// TestRootOpenForWriting: a root someone holds open for writing is refused.
func TestRootOpenForWriting(t *testing.T) {
	im := newImage(t, imageSpec{})
	w, err := os.OpenFile(im.path(RootFile), os.O_WRONLY, 0)
	require.NoError(t, err)
	defer w.Close()
	tp := newTPM(t)
	cfg := config(t, im, tp)
	_, err = Launch(context.Background(), cfg)
	if err == nil {
		t.Skip("no read lease on this file system")
	}
	require.ErrorIs(t, err, ErrUnsafeRoot)
	assert.Contains(t, err.Error(), "open for writing")
	assert.NoFileExists(t, cfg.EventLog)
}

func TestLaunchCancelled(t *testing.T) {
	im := newImage(t, imageSpec{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b, err := Launch(ctx, config(t, im, newTPM(t)))
	require.ErrorIs(t, err, context.Canceled)
	assert.Nil(t, b)
}

func TestLaunchConfigErrors(t *testing.T) {
	im := newImage(t, imageSpec{})
	tp := newTPM(t)
	testCases := map[string]struct {
		edit     func(*Config)
		contains string
	}{
		"no TPM":         {edit: func(c *Config) { c.TPM = nil }, contains: "no vTPM"},
		"no log":         {edit: func(c *Config) { c.EventLog = "" }, contains: "no event log path"},
		"no image":       {edit: func(c *Config) { c.ImageDir = filepath.Join(im.dir, "missing") }, contains: "opening the image directory"},
		"log dir absent": {edit: func(c *Config) { c.EventLog = filepath.Join(im.dir, "missing", "log") }, contains: "writing the event log"},
		"systemd-boot path without boot loader": {
			edit:     func(c *Config) { c.Options.Path = precompute.BootSystemdBoot },
			contains: precompute.ErrNoBootLoader.Error(),
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			cfg := config(t, im, tp)
			tc.edit(&cfg)
			_, err := Launch(context.Background(), cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.contains)
		})
	}
}

// interferingTPM imitates a second launcher on the same vTPM: once armed, it makes an extend of its own into
// PCR 11 after the next extend it forwards.
type interferingTPM struct {
	transport.TPM
	armed atomic.Bool
}

const ccPCRExtend = 0x00000182

func (i *interferingTPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := i.TPM.Send(cmd)
	if err == nil && len(cmd) >= 10 && binary.BigEndian.Uint32(cmd[6:]) == ccPCRExtend && i.armed.CompareAndSwap(true, false) {
		err = tpm.Extend(i.TPM, precompute.PCRUKI, bytes.Repeat([]byte{0x42}, 32))
	}
	return rsp, err
}

// TestDiverged: a vTPM that does not hold what the launcher extended is refused, then and later.
func TestDiverged(t *testing.T) {
	t.Run("during the launch", func(t *testing.T) {
		im := newImage(t, imageSpec{})
		tp := &interferingTPM{TPM: newTPM(t)}
		tp.armed.Store(true)
		b, err := Launch(context.Background(), config(t, im, tp))
		require.ErrorIs(t, err, ErrTPMDiverged)
		assert.Nil(t, b)
		assert.Contains(t, err.Error(), "PCR 11 ")
	})
	t.Run("in a phase", func(t *testing.T) {
		im := newImage(t, imageSpec{})
		tp := &interferingTPM{TPM: newTPM(t)}
		b := launch(t, config(t, im, tp))
		tp.armed.Store(true)
		require.ErrorIs(t, b.EnterPhase(precompute.PhaseSysinit), ErrTPMDiverged)
		err := b.EnterPhase(precompute.PhaseReady)
		require.ErrorIs(t, err, ErrTPMDiverged, "no phase after a failure")
		assert.Contains(t, err.Error(), "an earlier measurement failed")
		require.ErrorIs(t, b.CompleteBoot(), ErrTPMDiverged)
	})
}
