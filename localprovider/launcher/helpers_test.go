package launcher

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/testenv"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm/swtpmtest"
	"github.com/constellation-go/constellation/localprovider/verity"
)

// The tests build small node images the way the real one is built, from real tools: a UKI assembled with
// objcopy from Debian's systemd 252 stub (systemd-boot's EFI binary stands in for the kernel, as in
// measurements' cross-checks), and an erofs root made by mkfs.erofs with its hash tree from verity.Build
// (which localprovider/verity checks against veritysetup and systemd-repart). They need
//
//	apt-get install -y systemd-boot-efi binutils erofs-utils swtpm
//
// and skip without them, or fail where internal/testenv is strict (CI, `make go-test`). Under Bazel, whose
// chroot has neither the stub nor mkfs.erofs, they skip and say why.

const installHint = "apt-get install -y systemd-boot-efi binutils erofs-utils swtpm"

// need returns the first of paths that exists, or skips or fails the test with installHint.
func need(tb testing.TB, paths ...string) string {
	tb.Helper()
	return testenv.Need(tb, installHint, paths...)
}

const (
	stub   = testenv.SystemdStub
	sdboot = testenv.SystemdBoot
)

// seed is the image's mkosi Seed=, from which the verity salt and UUID derive as systemd-repart does.
var seed = [16]byte{0x0c, 0x05, 0x7e, 0x11, 0xa7, 0x10, 0x4e, 0x00, 0x90, 0x01, 0x1a, 0x7c, 0x4e, 0x5e, 0x00, 0x01}

// testImage is a node image in dir.
type testImage struct {
	dir      string
	rootHash []byte
	// files are the root file system's files, by path.
	files map[string][]byte
}

func (im testImage) path(name string) string { return filepath.Join(im.dir, name) }

// imageSpec varies a test image.
type imageSpec struct {
	// cmdline is the UKI's .cmdline; %s is replaced with the root hash. Empty means the default.
	cmdline string
	// content seeds the root's file contents, so that two images can differ.
	content uint64
}

const defaultCmdline = "roothash=%s console=ttyS0 panic=-1 ro\n"

// newImage builds an image in a new temporary directory.
func newImage(t testing.TB, spec imageSpec) testImage {
	t.Helper()
	im := testImage{dir: t.TempDir()}
	im.files = buildRoot(t, im.dir, spec.content)
	im.rootHash = buildVerity(t, im.path(RootFile), im.path(VerityFile), verity.Params{})
	cmdline := spec.cmdline
	if cmdline == "" {
		cmdline = defaultCmdline
	}
	if strings.Contains(cmdline, "%s") {
		cmdline = fmt.Sprintf(cmdline, hex.EncodeToString(im.rootHash))
	}
	buildUKI(t, im.dir, cmdline)
	return im
}

// buildRoot writes root.erofs, made by mkfs.erofs from a few files of pseudo-random data (about 200 blocks
// of 4 KiB, so that the hash tree has two levels), and returns the files.
func buildRoot(t testing.TB, dir string, content uint64) map[string][]byte {
	t.Helper()
	mkfs := need(t, "mkfs.erofs")
	src := filepath.Join(t.TempDir(), "root")
	rng := mrand.New(mrand.NewPCG(content, 42))
	files := map[string][]byte{}
	for i := range 8 {
		name := fmt.Sprintf("usr/lib/f%d", i)
		data := make([]byte, 100_000+i*1000)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		files[name] = data
	}
	files["etc/os-release"] = []byte("ID=constellation\nVERSION_ID=test\n")
	for name, data := range files {
		p := filepath.Join(src, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, data, 0o644))
	}
	out := filepath.Join(dir, RootFile)
	// Fixed timestamps and UUID, as mkosi's reproducible build has.
	testenv.Run(t, mkfs, "--quiet", "-T0", "-U", "6e3f1c8a-8c9d-4c57-9d3b-3f1e5a2b7c11", out, src)
	require.NoError(t, os.Chmod(out, 0o644))
	return files
}

// buildVerity writes the hash partition of data as systemd-repart does (superblock, salt and UUID from the
// seed, 4 KiB blocks; zero fields of p take those defaults) and returns the root hash.
func buildVerity(t testing.TB, data, hash string, p verity.Params) []byte {
	t.Helper()
	d, err := os.Open(data)
	require.NoError(t, err)
	defer d.Close()
	fi, err := d.Stat()
	require.NoError(t, err)
	h, err := os.OpenFile(hash, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	require.NoError(t, err)
	defer h.Close()
	if p.Salt == nil {
		p.Salt = verity.RepartSalt(seed)
		p.UUID = verity.RepartUUID(seed)
	}
	p.Superblock = true
	_, root, err := verity.Build(context.Background(), d, fi.Size(), h, p)
	require.NoError(t, err)
	return root
}

// buildUKI assembles constellation.efi with objcopy from systemd's stub, at the section addresses systemd
// 252's documentation gives, as measurements' cross-checks do.
func buildUKI(t testing.TB, dir, cmdline string) {
	t.Helper()
	objcopy := need(t, "objcopy")
	need(t, stub)
	kernel := need(t, sdboot)
	parts := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(parts, name)
		require.NoError(t, os.WriteFile(p, data, 0o644))
		return p
	}
	osrel := write("osrel", []byte("ID=constellation\nVERSION_ID=test\n"))
	cmd := write("cmdline", []byte(cmdline))
	initrd := write("initrd", bytes.Repeat([]byte("test initrd "), 1000))
	out := filepath.Join(dir, UKIFile)
	testenv.Run(t, objcopy,
		"--add-section", ".osrel="+osrel, "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline="+cmd, "--change-section-vma", ".cmdline=0x30000",
		"--add-section", ".linux="+kernel, "--change-section-vma", ".linux=0x2000000",
		"--add-section", ".initrd="+initrd, "--change-section-vma", ".initrd=0x3000000",
		stub, out)
}

// predict is the reference computation: the measurements package on the UKI's bytes.
func predict(t testing.TB, ukiPath string) *precompute.Result {
	t.Helper()
	data, err := os.ReadFile(ukiPath)
	require.NoError(t, err)
	u, err := precompute.ParseUKI(data)
	require.NoError(t, err)
	res, err := precompute.Precompute(u, precompute.Options{})
	require.NoError(t, err)
	return res
}

// sectionOffset returns the file offset of the first occurrence of needle in a UKI section's content.
func sectionOffset(t testing.TB, ukiPath, section string, needle []byte) int64 {
	t.Helper()
	data, err := os.ReadFile(ukiPath)
	require.NoError(t, err)
	u, err := precompute.ParseUKI(data)
	require.NoError(t, err)
	for _, s := range u.Sections {
		if s.Name != section {
			continue
		}
		c, err := s.Content()
		require.NoError(t, err)
		i := len(c) / 2
		if needle != nil {
			i = bytes.Index(c, needle)
			require.GreaterOrEqual(t, i, 0, "%q not in %s", needle, section)
		}
		return int64(s.PointerToRawData) + int64(i)
	}
	t.Fatalf("no %s section", section)
	return 0
}

// flipByte changes the lowest bit of the byte at off in the file at path (an ASCII byte stays ASCII).
func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 1
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

// newTPM starts a fresh swtpm.
func newTPM(t testing.TB) transport.TPMCloser {
	t.Helper()
	p := swtpmtest.Start(t)
	tp, err := tpm.Open(p.Address())
	require.NoError(t, err)
	t.Cleanup(func() { _ = tp.Close() })
	return tp
}

// config returns a launch configuration for im on tp with the event log in a temporary directory.
func config(t testing.TB, im testImage, tp transport.TPM) Config {
	return Config{ImageDir: im.dir, TPM: tp, EventLog: filepath.Join(t.TempDir(), "binary_bios_measurements")}
}

// launch launches im and closes the boot when the test ends.
func launch(t testing.TB, cfg Config) *Boot {
	t.Helper()
	b, err := Launch(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// bootPCRList are the PCRs the tests compare: the boot's, and PCR 13, which measurements may predict too.
var bootPCRList = []uint32{precompute.PCRBootChain, precompute.PCRKernel, precompute.PCRUKI, precompute.PCRBootLoader, measurements.PCRSystemd}

// readPCRs reads the PCRs of bootPCRList.
func readPCRs(t testing.TB, tp transport.TPM) map[uint32][]byte {
	t.Helper()
	pcrs, err := tpm.ReadPCRs(tp, bootPCRList)
	require.NoError(t, err)
	return pcrs
}

// withZeros returns a copy of pcrs with zero values for the PCRs of bootPCRList it lacks, so that a
// prediction compares with readPCRs whether or not it lists PCR 13.
func withZeros(pcrs map[uint32][]byte) map[uint32][]byte {
	out := maps.Clone(pcrs)
	for _, idx := range bootPCRList {
		if _, ok := out[idx]; !ok {
			out[idx] = make([]byte, 32)
		}
	}
	return out
}

// referenceValues are the reference values of a booted, fresh node whose image res predicts: PCRs 4, 9, 11
// and 12 from the prediction, PCRs 13 and 15 zero.
func referenceValues(res *precompute.Result) measurements.M {
	m := res.Measurements(true).WithFreshNode()
	if _, ok := m[measurements.PCRSystemd]; !ok {
		m[measurements.PCRSystemd] = measurements.Measurement{Expected: measurements.Zero}
	}
	return m
}

// attest issues a document with the event log the launcher wrote, as a node's issuer would, and validates
// it against refs.
func attest(t testing.TB, tp transport.TPM, logPath string, refs measurements.M) (*vtpm.Result, error) {
	t.Helper()
	// The platform certifies the vTPM, as the local provider does before it launches a node.
	ca, err := manufacturer.NewCA("launcher test platform CA")
	require.NoError(t, err)
	require.NoError(t, ca.Manufacture(tp, "launcher-test"))
	issuer := vtpm.NewIssuer(variant.QEMUVTPM, tp, vtpm.WithEventLogFile(logPath))
	defer issuer.Close()
	nonce := make([]byte, 32)
	_, err = rand.Read(nonce)
	require.NoError(t, err)
	doc, err := issuer.Issue(context.Background(), []byte("user data"), nonce)
	require.NoError(t, err)
	v, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{Measurements: refs, AKRoots: []*x509.Certificate{ca.Certificate()}})
	require.NoError(t, err)
	return v.ValidateDetailed(context.Background(), doc, nonce)
}
