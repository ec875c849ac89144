package launcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/localprovider/verity"
)

// Names of the files Launch reads in an image directory, as image/mkosi/build.sh writes them.
const (
	UKIFile    = "constellation.efi"
	RootFile   = "root.erofs"
	VerityFile = "root.verity"
)

// maxUKISize bounds how much of the UKI is read into memory; the node image's is ~40 MB.
const maxUKISize = 1 << 30

// Errors that refuse a launch. Each is wrapped with details and what to do.
var (
	// ErrNotReset means a PCR the boot extends is not zero: the vTPM was already used since its last power
	// cycle (startup-clear).
	ErrNotReset = errors.New("vTPM is not in its reset state")
	// ErrNoRootHash means the UKI's command line has no usable roothash=.
	ErrNoRootHash = errors.New("UKI's command line has no usable roothash=")
	// ErrRootMismatch means the root file system does not verify against the root hash in the UKI.
	ErrRootMismatch = errors.New("root file system does not match the root hash measured in the UKI")
	// ErrUnsafeRoot means root.erofs could be modified by someone other than its trusted owner.
	ErrUnsafeRoot = errors.New("root file system file is not safe to verify and mount")
	// ErrRootChanged means root.erofs may have been modified after it was opened for verification.
	ErrRootChanged = errors.New("root file system file changed after verification")
	// ErrPhase means a boot phase was entered out of order.
	ErrPhase = errors.New("boot phase out of order")
	// ErrTPMDiverged means the vTPM does not hold the values the launcher extended: something else extended
	// it at the same time.
	ErrTPMDiverged = errors.New("vTPM PCRs differ from what the launcher extended")
)

// rebuildHint is what the user can do about an image that fails verification.
const rebuildHint = "the image is damaged or was modified: rebuild it (image/mkosi/build.sh) or download it again, " +
	"and do not launch nodes from it"

// Config is what Launch needs.
type Config struct {
	// ImageDir holds constellation.efi, root.erofs and root.verity.
	ImageDir string
	// TPM is the node's vTPM, fresh from its startup-clear.
	TPM transport.TPM
	// EventLog is the path of the TCG2 event log Launch writes; its directory must exist. An existing file
	// is replaced.
	EventLog string
	// Options selects the boot the launcher imitates. The zero value (generic UEFI firmware starting the
	// UKI directly) is `constellation image measure`'s default; it must be what the node's reference values
	// were computed with.
	Options precompute.Options
}

// Boot is a launched node: its vTPM is measured up to leave-initrd and its root is verified. It is safe for
// concurrent use.
type Boot struct {
	tpm        transport.TPM
	logPath    string
	prediction *precompute.Result
	root       *Root

	mu      sync.Mutex
	log     *eventlog.Builder
	pending []precompute.Event
	// expected is what the PCRs the boot extends must hold after the extends made so far.
	expected map[uint32][]byte
	// broken is the error of a failed extend: the vTPM's state is then unknown and no phase may follow.
	broken error
}

// Launch measures and verifies the image in cfg.ImageDir on cfg.TPM, as the package documentation
// describes, and returns the launched node. Any error means the node must not run: no verified root is
// handed out.
func Launch(ctx context.Context, cfg Config) (_ *Boot, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.TPM == nil {
		return nil, errors.New("launching: no vTPM")
	}
	if cfg.EventLog == "" {
		return nil, errors.New("launching: no event log path")
	}
	dir, err := os.OpenRoot(cfg.ImageDir)
	if err != nil {
		return nil, fmt.Errorf("opening the image directory: %w", err)
	}
	defer dir.Close()

	// 1. The UKI, read once: the measured bytes are the ones the root hash comes from.
	ukiData, err := readUKI(dir)
	if err != nil {
		return nil, err
	}
	uki, err := precompute.ParseUKI(ukiData)
	if err != nil {
		return nil, fmt.Errorf("%s in %s is not a usable UKI: %w", UKIFile, cfg.ImageDir, err)
	}
	res, err := precompute.Precompute(uki, cfg.Options)
	if err != nil {
		return nil, fmt.Errorf("predicting the measurements of %s: %w", UKIFile, err)
	}
	if len(res.PhaseEvents) < 2 || string(res.PhaseEvents[0].Data) != precompute.PhaseEnterInitrd ||
		string(res.PhaseEvents[1].Data) != precompute.PhaseLeaveInitrd {
		return nil, fmt.Errorf("launching: the prediction's phases %v do not start with %s, %s",
			phaseNames(res.PhaseEvents), precompute.PhaseEnterInitrd, precompute.PhaseLeaveInitrd)
	}

	// 2. The root hash, from the command line the stub passes (the measured .cmdline).
	rootHash, err := verity.RootHashFromCmdline(precompute.StubCmdline(uki.Cmdline))
	if err != nil {
		return nil, fmt.Errorf("%w: %w; %s cannot bind a root file system, so it is not a node image for the local provider "+
			"(build it with image/mkosi/build.sh, which puts the root's verity hash there)", ErrNoRootHash, err, UKIFile)
	}

	// 3. The root and its hash tree, opened once.
	root, err := openRoot(dir, cfg.ImageDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			root.Close()
		}
	}()
	hashFile, err := openRegular(dir, VerityFile)
	if err != nil {
		return nil, err
	}
	defer hashFile.Close()

	// 4. A vTPM in its reset state.
	b := &Boot{
		tpm: cfg.TPM, logPath: cfg.EventLog, prediction: res,
		log:      eventlog.NewBuilder(),
		pending:  slices.Clone(res.PhaseEvents),
		expected: map[uint32][]byte{},
	}
	if err := b.checkReset(); err != nil {
		return nil, err
	}

	// 5. Firmware, boot loader, stub and kernel events, then enter-initrd.
	if err := b.extend(append(slices.Clone(res.Events), b.pending[0])); err != nil {
		return nil, err
	}
	b.pending = b.pending[1:]

	// 6. The root.
	if err := root.verify(ctx, hashFile, rootHash); err != nil {
		return nil, err
	}
	if err := root.Check(); err != nil {
		return nil, err
	}

	// 7. Switching root: leave-initrd.
	if err := b.extend(b.pending[:1]); err != nil {
		return nil, err
	}
	b.pending = b.pending[1:]
	b.root = root
	return b, nil
}

// readUKI reads the UKI from the image directory, once and bounded.
func readUKI(dir *os.Root) ([]byte, error) {
	f, err := openRegular(dir, UKIFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxUKISize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", UKIFile, err)
	}
	if len(data) > maxUKISize {
		return nil, fmt.Errorf("reading %s: larger than %d bytes", UKIFile, maxUKISize)
	}
	return data, nil
}

// openRegular opens name inside dir (symbolic links may not leave it) and requires a regular file.
func openRegular(dir *os.Root, name string) (*os.File, error) {
	f, err := dir.Open(name)
	if err != nil {
		return nil, fmt.Errorf("opening the image's %s: %w", name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening the image's %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("opening the image's %s: not a regular file (%s)", name, fi.Mode().Type())
	}
	return f, nil
}

// bootPCRs returns the PCRs the prediction covers (whether or not the boot extends them, e.g. PCR 12 on the
// direct path) and every PCR the boot extends, and always PCRs 4, 9, 11 and 12, sorted.
func bootPCRs(res *precompute.Result) []uint32 {
	pcrs := []uint32{precompute.PCRBootChain, precompute.PCRKernel, precompute.PCRUKI, precompute.PCRBootLoader}
	pcrs = slices.AppendSeq(pcrs, maps.Keys(res.PCRs(true)))
	for _, ev := range slices.Concat(res.Events, res.PhaseEvents) {
		pcrs = append(pcrs, ev.PCR)
	}
	slices.Sort(pcrs)
	return slices.Compact(pcrs)
}

// checkReset refuses a vTPM on which any PCR the boot extends is not zero, and records the zeros as the
// starting point of the expected values.
func (b *Boot) checkReset() error {
	pcrs := bootPCRs(b.prediction)
	values, err := tpm.ReadPCRs(b.tpm, pcrs)
	if err != nil {
		return fmt.Errorf("reading the vTPM's PCRs: %w", err)
	}
	zero := make([]byte, sha256.Size)
	for _, idx := range pcrs {
		if !bytes.Equal(values[idx], zero) {
			return fmt.Errorf("%w: PCR %d is %x, not zero: a node is launched once per vTPM power cycle, and this "+
				"vTPM was already measured into; start the node with a fresh vTPM (restart its swtpm)", ErrNotReset, idx, values[idx])
		}
		b.expected[idx] = zero
	}
	return nil
}

// extend measures events, writes the log and checks that the vTPM holds what was extended. After a failure
// every later call fails too. Callers hold b.mu or own b exclusively.
func (b *Boot) extend(events []precompute.Event) error {
	if b.broken != nil {
		return fmt.Errorf("an earlier measurement failed: %w", b.broken)
	}
	if err := b.doExtend(events); err != nil {
		b.broken = err
		return err
	}
	return nil
}

func (b *Boot) doExtend(events []precompute.Event) error {
	measureErr := precompute.Measure(b.tpm, b.log, events...)
	// The log records whatever was extended, also when an extend failed: it must explain the PCRs.
	if err := writeLog(b.logPath, b.log.Bytes()); err != nil {
		return errors.Join(measureErr, err)
	}
	if measureErr != nil {
		return measureErr
	}
	for _, ev := range events {
		b.expected[ev.PCR] = eventlog.ExtendSHA256(b.expected[ev.PCR], ev.Digest[:])
	}
	pcrs := slices.Sorted(maps.Keys(b.expected))
	values, err := tpm.ReadPCRs(b.tpm, pcrs)
	if err != nil {
		return fmt.Errorf("reading the vTPM's PCRs back: %w", err)
	}
	for _, idx := range pcrs {
		if !bytes.Equal(values[idx], b.expected[idx]) {
			return fmt.Errorf("%w: PCR %d is %x, the launcher's extends give %x: another process extended this vTPM "+
				"during the launch; stop it and start the node with a fresh vTPM", ErrTPMDiverged, idx, values[idx], b.expected[idx])
		}
	}
	return nil
}

// writeLog replaces the file at path with log atomically, so that the issuer never reads a partial log.
func writeLog(path string, log []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing the event log: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	_, err = tmp.Write(log)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing the event log: %w", err)
	}
	return nil
}

func phaseNames(events []precompute.Event) []string {
	names := make([]string, len(events))
	for i, ev := range events {
		names[i] = string(ev.Data)
	}
	return names
}

// Root returns the verified root file system.
func (b *Boot) Root() *Root {
	return b.root
}

// Prediction returns the precomputed extends of this boot: Result.PCRs(true) is what the vTPM holds once
// every phase is entered, Result.Measurements(true) the reference values it attests against.
func (b *Boot) Prediction() *precompute.Result {
	return b.prediction
}

// PendingPhases returns the systemd-pcrphase phases not entered yet, in the order they must be entered.
func (b *Boot) PendingPhases() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return phaseNames(b.pending)
}

// EnterPhase extends phase (precompute.PhaseSysinit, then precompute.PhaseReady) into PCR 11 and the
// event log. Phases must be entered in order, each once.
func (b *Boot) EnterPhase(phase string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.broken != nil {
		return fmt.Errorf("entering %q: an earlier measurement failed: %w", phase, b.broken)
	}
	if len(b.pending) == 0 {
		return fmt.Errorf("%w: entering %q: the node is already booted (every phase entered)", ErrPhase, phase)
	}
	if next := string(b.pending[0].Data); next != phase {
		return fmt.Errorf("%w: entering %q: the next phase is %q", ErrPhase, phase, next)
	}
	if err := b.extend(b.pending[:1]); err != nil {
		return err
	}
	b.pending = b.pending[1:]
	return nil
}

// CompleteBoot enters every pending phase. The vTPM then holds the precomputed booted values, which it
// checks.
func (b *Boot) CompleteBoot() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.broken != nil {
		return fmt.Errorf("completing the boot: an earlier measurement failed: %w", b.broken)
	}
	if len(b.pending) > 0 {
		if err := b.extend(b.pending); err != nil {
			return err
		}
		b.pending = nil
	}
	for idx, want := range b.prediction.PCRs(true) {
		if got := b.expected[idx]; !bytes.Equal(got, want) {
			// Unreachable unless Precompute's PCRs and its events disagree.
			return fmt.Errorf("booted PCR %d is %x, the prediction says %x", idx, got, want)
		}
	}
	return nil
}

// Close releases the root file system's descriptor. A mount made from it stays valid.
func (b *Boot) Close() error {
	return b.root.Close()
}
