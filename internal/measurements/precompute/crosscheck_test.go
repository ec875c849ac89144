package precompute

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/testenv"
)

// The tests in this file compare the package with independent, real tools: systemd-measure (PCR 11),
// osslsigncode (Authenticode) and sbsign (Authenticode of a signed file). They need Debian bookworm's
//
//	apt-get install -y systemd systemd-boot-efi osslsigncode sbsigntool binutils openssl
//
// and skip without them, or fail where internal/testenv is strict (CI, `make go-test`, after `make setup`
// installed the tools). The checks pin systemd 252's stub semantics (the version the node image uses);
// under Bazel, whose chroot is Debian forky with a newer systemd and none of these tools, they skip and
// say why.
//
// A real kernel makes the check more meaningful (Linux's PE layout, 8 MB of data). Set
// MEASUREMENTS_TEST_VMLINUZ to one, e.g. extracted without installing it:
//
//	apt-get download linux-image-6.1.0-<abi>-amd64 && dpkg-deb -x linux-image-*.deb x && ls x/boot/vmlinuz-*
//
// Without it, systemd-boot's EFI binary stands in for the kernel: any PE serves the hash checks.

const installHint = "apt-get install -y systemd systemd-boot-efi osslsigncode sbsigntool binutils openssl"

// need returns the first of paths that exists, or skips or fails the test with installHint.
func need(tb testing.TB, paths ...string) string {
	tb.Helper()
	return testenv.Need(tb, installHint, paths...)
}

const (
	stub   = testenv.SystemdStub
	sdboot = testenv.SystemdBoot
)

// needSystemd252 returns systemd-measure if it is systemd 252's: later stubs measure other sections
// (e.g. .uname), and this package implements 252's behaviour.
func needSystemd252(tb testing.TB) string {
	tb.Helper()
	measure := need(tb, "/usr/lib/systemd/systemd-measure", "/lib/systemd/systemd-measure")
	out, err := exec.Command(measure, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "systemd 252 ") {
		testenv.SkipOrFail(tb, fmt.Sprintf("systemd-measure is not systemd 252's (%q); the cross-checks pin 252's stub", strings.SplitN(string(out), "\n", 2)[0]))
	}
	return measure
}

// newcCPIO returns a cpio archive in the "newc" format the kernel unpacks as an initrd, holding the given
// regular files, so that the test initrd is a real one without needing the cpio tool.
func newcCPIO(files map[string]string, order []string) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	entry := func(ino int, name string, mode int, data string) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name)
		b.WriteByte(0)
		pad()
		b.WriteString(data)
		pad()
	}
	for i, name := range order {
		entry(i+1, name, 0o100755, files[name])
	}
	entry(0, "TRAILER!!!", 0, "")
	return b.Bytes()
}

type ukiInputs struct {
	dir                                         string
	kernel, osrel, cmdline, initrd, splash, dtb string // paths; splash and dtb may be empty
}

// buildUKI assembles a UKI the classic way, with objcopy from systemd's stub, at the section addresses
// systemd 252's documentation gives, and returns its path.
func buildUKI(tb testing.TB, in ukiInputs) string {
	tb.Helper()
	objcopy := need(tb, "objcopy")
	need(tb, stub)
	out := filepath.Join(in.dir, "uki.efi")
	args := []string{}
	add := func(name, path, vma string) {
		if path != "" {
			args = append(args, "--add-section", name+"="+path, "--change-section-vma", name+"="+vma)
		}
	}
	add(".osrel", in.osrel, "0x20000")
	add(".cmdline", in.cmdline, "0x30000")
	add(".splash", in.splash, "0x40000")
	add(".dtb", in.dtb, "0x50000")
	add(".linux", in.kernel, "0x2000000")
	add(".initrd", in.initrd, "0x3000000")
	testenv.Run(tb, objcopy, append(args, stub, out)...)
	return out
}

// testInputs writes the UKI's parts to a temporary directory. withExtras adds .splash and .dtb, which
// systemd-stub 252 measures too.
func testInputs(tb testing.TB, withExtras bool) ukiInputs {
	tb.Helper()
	dir := tb.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(tb, os.WriteFile(p, data, 0o644))
		return p
	}
	in := ukiInputs{dir: dir}
	if k := os.Getenv("MEASUREMENTS_TEST_VMLINUZ"); k != "" {
		in.kernel = k
	} else {
		in.kernel = need(tb, sdboot)
	}
	in.osrel = write("osrel", []byte("ID=constellation\nVERSION_ID=test\n"))
	// A trailing newline, as `echo` writes: PCR 11 measures it, the command line the stub passes drops it.
	in.cmdline = write("cmdline", []byte("console=ttyS0 root=/dev/vda ro\n"))
	in.initrd = write("initrd", newcCPIO(map[string]string{
		"init":     "#!/bin/sh\necho hello from the test initrd\nexec /bin/sh\n",
		"etc/data": strings.Repeat("some initrd content ", 200),
	}, []string{"init", "etc/data"}))
	if withExtras {
		in.splash = write("splash", []byte("BM fake bitmap"))
		in.dtb = write("dtb", []byte("\xd0\x0d\xfe\xed fake devicetree"))
	}
	return in
}

func TestCrossCheckPCR11SystemdMeasure(t *testing.T) {
	measure := needSystemd252(t)
	testCases := map[string]struct{ withExtras bool }{
		"classic sections":      {},
		"with .splash and .dtb": {withExtras: true},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			in := testInputs(t, tc.withExtras)
			data, err := os.ReadFile(buildUKI(t, in))
			require.NoError(t, err)
			u, err := ParseUKI(data)
			require.NoError(t, err)
			r, err := Precompute(u, Options{})
			require.NoError(t, err)

			args := []string{"calculate", "--bank=sha256", "--json=short",
				"--linux=" + in.kernel, "--osrel=" + in.osrel, "--cmdline=" + in.cmdline, "--initrd=" + in.initrd}
			if in.splash != "" {
				args = append(args, "--splash="+in.splash, "--dtb="+in.dtb)
			}
			// An empty --phase asks for the value right after the stub, before systemd-pcrphase.
			stubOnly := parseMeasure(t, testenv.Run(t, measure, append(args, "--phase=")...))
			require.Len(t, stubOnly, 1)
			ours := hex.EncodeToString(r.PCRs(false)[PCRUKI])
			t.Logf("PCR 11 after stub: ours %s, systemd-measure %s", ours, stubOnly[0].Hash)
			assert.Equal(t, stubOnly[0].Hash, ours)

			// Without --phase, systemd-measure 252 lists the value after each booted phase in turn.
			phased := parseMeasure(t, testenv.Run(t, measure, args...))
			require.Len(t, phased, len(BootedPhases))
			for i, p := range phased {
				assert.Equal(t, strings.Join(BootedPhases[:i+1], ":"), p.Phase)
				partial := &Result{Events: r.Events, PhaseEvents: r.PhaseEvents[:i+1]}
				assert.Equal(t, p.Hash, hex.EncodeToString(partial.PCRs(true)[PCRUKI]), "phase %s", p.Phase)
			}
			t.Logf("PCR 11 after %s: ours %x, systemd-measure %s",
				phased[len(phased)-1].Phase, r.PCRs(true)[PCRUKI], phased[len(phased)-1].Hash)
		})
	}
}

type measureEntry struct {
	Phase string `json:"phase"`
	PCR   int    `json:"pcr"`
	Hash  string `json:"hash"`
}

func parseMeasure(t *testing.T, out []byte) []measureEntry {
	t.Helper()
	var res map[string][]measureEntry
	require.NoError(t, json.Unmarshal(out, &res), "%s", out)
	for _, e := range res["sha256"] {
		require.Equal(t, PCRUKI, e.PCR)
	}
	return res["sha256"]
}

// sha256DigestInfo is the DER of a DigestInfo's AlgorithmIdentifier for SHA-256 with NULL parameters,
// followed by the OCTET STRING header of a 32-byte digest: in an Authenticode SpcIndirectDataContent, the
// 32 bytes after it are the file's Authenticode hash. (The SignerInfo's digestAlgorithm has the same OID
// but is not followed by an OCTET STRING of 32 bytes.)
var sha256DigestInfo = []byte{0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}

func digestFromPKCS7(t *testing.T, der []byte) string {
	t.Helper()
	i := bytes.Index(der, sha256DigestInfo)
	require.GreaterOrEqual(t, i, 0, "no SHA-256 DigestInfo in PKCS#7")
	require.Equal(t, -1, bytes.Index(der[i+1:], sha256DigestInfo), "ambiguous DigestInfo in PKCS#7")
	start := i + len(sha256DigestInfo)
	require.LessOrEqual(t, start+32, len(der))
	return hex.EncodeToString(der[start : start+32])
}

func TestCrossCheckAuthenticodeOsslsigncode(t *testing.T) {
	osslsigncode := need(t, "osslsigncode")
	in := testInputs(t, false)
	ukiPath := buildUKI(t, in)
	testCases := map[string]struct{ path string }{
		"systemd-stub": {path: need(t, stub)},
		"systemd-boot": {path: need(t, sdboot)},
		"kernel":       {path: in.kernel},
		"UKI":          {path: ukiPath},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(tc.path)
			require.NoError(t, err)
			ours, err := AuthenticodeSHA256(data)
			require.NoError(t, err)
			// extract-data writes the PKCS#7 content osslsigncode would sign, which carries the file's
			// Authenticode digest, for an unsigned file.
			out := filepath.Join(t.TempDir(), "data.p7")
			testenv.Run(t, osslsigncode, "extract-data", "-h", "sha256", "-in", tc.path, "-out", out)
			der, err := os.ReadFile(out)
			require.NoError(t, err)
			theirs := digestFromPKCS7(t, der)
			t.Logf("%s (%d bytes): ours %x, osslsigncode %s", name, len(data), ours, theirs)
			if len(data)%8 == 0 {
				assert.Equal(t, theirs, hex.EncodeToString(ours))
				return
			}
			// osslsigncode (like sbsign) hashes the file as it will be once signed: zero-padded to a
			// multiple of 8 bytes, where the certificate table must start. Firmware measures the unsigned
			// file as it is (EDK2 hashes ImageSize bytes), so ours differs exactly by that padding.
			padded := append(bytes.Clone(data), make([]byte, 8-len(data)%8)...)
			oursPadded, err := AuthenticodeSHA256(padded)
			require.NoError(t, err)
			t.Logf("%s zero-padded to %d bytes: ours %x", name, len(padded), oursPadded)
			assert.Equal(t, theirs, hex.EncodeToString(oursPadded))
			assert.NotEqual(t, theirs, hex.EncodeToString(ours))
		})
	}

	t.Run("embedded kernel equals the file", func(t *testing.T) {
		data, err := os.ReadFile(ukiPath)
		require.NoError(t, err)
		kernel, err := os.ReadFile(in.kernel)
		require.NoError(t, err)
		u, err := ParseUKI(data)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(kernel, u.Linux), "VirtualSize must trim .linux to the original file")
	})
}

// TestCrossCheckAuthenticodeSbsign signs the UKI with sbsign (sbsigntool, an Authenticode implementation
// independent of osslsigncode) and compares the digest sbsign embedded with ours of the signed file, which
// exercises the exclusion of the certificate table and the CheckSum sbsign rewrites.
func TestCrossCheckAuthenticodeSbsign(t *testing.T) {
	sbsign := need(t, "sbsign")
	openssl := need(t, "openssl")
	in := testInputs(t, false)
	ukiPath := buildUKI(t, in)
	dir := t.TempDir()
	key, cert, signed := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "signed.efi")
	testenv.Run(t, openssl, "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
		"-subj", "/CN=measurements test", "-keyout", key, "-out", cert)
	testenv.Run(t, sbsign, "--key", key, "--cert", cert, "--output", signed, ukiPath)

	data, err := os.ReadFile(signed)
	require.NoError(t, err)
	p, err := parsePE(data)
	require.NoError(t, err)
	require.Positive(t, p.certTableSize, "sbsign wrote no certificate table")
	ours, err := AuthenticodeSHA256(data)
	require.NoError(t, err)
	theirs := digestFromPKCS7(t, data[len(data)-int(p.certTableSize):])
	t.Logf("signed UKI: ours %x, sbsign %s", ours, theirs)
	assert.Equal(t, theirs, hex.EncodeToString(ours))
}
