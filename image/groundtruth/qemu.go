// Package groundtruth boots the node image for real, in QEMU with OVMF and a swtpm vTPM, and reads back
// the PCR values and the firmware's TCG event log the booted node reports on its second serial port
// (constellation-boot-report.service in the image). It is the reference the PCR precomputation and the
// local launcher are checked against.
package groundtruth

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	swtpmArgs "github.com/constellation-go/constellation/internal/tpm/swtpm"
)

// Debian's OVMF (package ovmf): 4 MiB flash images, Secure Boot off.
const (
	DefaultOVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	DefaultOVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Markers framing the boot report (image/mkosi/mkosi.extra/usr/libexec/constellation/boot-report).
const (
	reportBegin = "CONSTELLATION-BOOT-REPORT-BEGIN"
	reportEnd   = "CONSTELLATION-BOOT-REPORT-END"
)

// Config describes one boot.
type Config struct {
	// Disk is the bootable GPT disk image (disk.raw of an image build). QEMU writes to a snapshot only.
	Disk string
	// OVMFCode and OVMFVars are the firmware images; empty means Debian's defaults.
	OVMFCode, OVMFVars string
	// MemoryMiB is the guest's memory; 0 means 2048.
	MemoryMiB int
	// Console receives the serial console's output (ttyS0) when Boot returns, for diagnosis (may be nil).
	Console io.Writer
}

// Report is what the booted node printed.
type Report struct {
	// PCRs are the SHA-256 PCR values 0..23 read by the guest kernel from the TPM.
	PCRs map[uint32][]byte
	// EventLog is the firmware's TCG2 event log (binary_bios_measurements).
	EventLog []byte
	// Cmdline is the kernel command line the node booted with.
	Cmdline string
}

// Boot starts swtpm and QEMU (TCG: KVM cannot run firmware on this machine), waits for the boot report
// and stops both. It takes a few minutes under TCG; ctx bounds it.
func Boot(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.OVMFCode == "" {
		cfg.OVMFCode = DefaultOVMFCode
	}
	if cfg.OVMFVars == "" {
		cfg.OVMFVars = DefaultOVMFVars
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 2048
	}
	for _, f := range []string{cfg.Disk, cfg.OVMFCode, cfg.OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("boot input: %w", err)
		}
	}
	for _, tool := range []string{"swtpm", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is needed for the ground-truth boot (make setup installs it): %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "groundtruth-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	vars := filepath.Join(dir, "vars.fd")
	if err := copyFile(cfg.OVMFVars, vars); err != nil {
		return nil, fmt.Errorf("copying the OVMF variable store: %w", err)
	}
	tpmDir := filepath.Join(dir, "tpm")
	if err := os.Mkdir(tpmDir, 0o700); err != nil {
		return nil, err
	}
	tpmSock := filepath.Join(tpmDir, "ctrl")

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// QEMU drives the vTPM over swtpm's control channel and does TPM2_Startup through the firmware, as
	// on a real machine: the same vTPM as the qemu provider's (swtpm.QEMUArgs), QEMU running as this user.
	swtpm := exec.CommandContext(ctx, "swtpm", append(swtpmArgs.QEMUArgs(tpmDir, tpmSock, os.Getuid(), os.Getgid()),
		"--log", "file="+filepath.Join(tpmDir, "log"))...)
	// Pdeathsig: a test binary that panics on its timeout must not leave a vTPM or a guest behind.
	swtpm.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	swtpm.Cancel = func() error { return swtpm.Process.Signal(syscall.SIGTERM) }
	swtpm.WaitDelay = 5 * time.Second
	if err := swtpm.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	defer func() { cancel(); _ = swtpm.Wait() }()
	if err := waitForSocket(ctx, tpmSock); err != nil {
		return nil, fmt.Errorf("swtpm did not create its socket: %w", err)
	}

	consoleLog := filepath.Join(dir, "console.log")
	if cfg.Console != nil {
		defer func() {
			if f, err := os.Open(consoleLog); err == nil {
				_, _ = io.Copy(cfg.Console, f)
				f.Close()
			}
		}()
	}
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64",
		// -nodefaults: the disk is the firmware's only boot option, which the OVMF profile assumes.
		"-nodefaults", "-machine", "q35", "-accel", "tcg", "-m", strconv.Itoa(cfg.MemoryMiB), "-smp", "2",
		"-display", "none", "-monitor", "none",
		// ttyS0 is the console (firmware, kernel, systemd); ttyS1 carries only the boot report.
		"-chardev", "file,id=console,path="+consoleLog, "-serial", "chardev:console", "-serial", "stdio",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+cfg.OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file="+vars,
		"-chardev", "socket,id=chrtpm,path="+tpmSock,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
		"-drive", "if=virtio,format=raw,snapshot=on,file="+cfg.Disk)
	qemu.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	qemu.Cancel = func() error { return qemu.Process.Kill() }
	qemu.WaitDelay = 5 * time.Second
	stdout, err := qemu.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	qemu.Stderr = &stderr
	if err := qemu.Start(); err != nil {
		return nil, fmt.Errorf("starting QEMU: %w", err)
	}
	defer func() { cancel(); _ = qemu.Wait() }()

	report, err := readReport(stdout)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no boot report before the deadline: %w", ctx.Err())
		}
		return nil, fmt.Errorf("reading the boot report (QEMU: %s): %w", strings.TrimSpace(stderr.String()), err)
	}
	return report, nil
}

// ansi matches terminal escape sequences (colours, cursor moves) in console output.
var ansi = regexp.MustCompile(`\x1b\[[0-9;?=]*[a-zA-Z]`)

// readReport scans console output for the boot report and parses it.
func readReport(r io.Reader) (*Report, error) {
	sc := bufio.NewScanner(r)
	// The event log is a single base64 line of tens of kilobytes.
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	var lines []string
	in := false
	for sc.Scan() {
		line := strings.TrimRight(ansi.ReplaceAllString(sc.Text(), ""), "\r")
		switch {
		case !in && strings.HasSuffix(line, reportBegin):
			in = true
		case in && strings.HasSuffix(line, reportEnd):
			return parseReport(lines)
		case in:
			lines = append(lines, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("console closed before the boot report was complete")
}

func parseReport(lines []string) (*Report, error) {
	r := &Report{PCRs: map[uint32][]byte{}}
	for _, line := range lines {
		key, rest, _ := strings.Cut(line, " ")
		switch key {
		case "pcr-sha256":
			idx, val, ok := strings.Cut(rest, " ")
			if !ok {
				return nil, fmt.Errorf("malformed PCR line %q", line)
			}
			n, err := strconv.ParseUint(idx, 10, 32)
			if err != nil || n > 23 {
				return nil, fmt.Errorf("malformed PCR index in %q", line)
			}
			v, err := hex.DecodeString(val)
			if err != nil || len(v) != 32 {
				return nil, fmt.Errorf("PCR %d: the guest could not read it (%q)", n, val)
			}
			r.PCRs[uint32(n)] = v
		case "eventlog-base64":
			log, err := base64.StdEncoding.DecodeString(rest)
			if err != nil {
				return nil, fmt.Errorf("the guest could not read its event log (%.40q): %w", rest, err)
			}
			r.EventLog = log
		case "cmdline":
			r.Cmdline = rest
		}
	}
	if len(r.PCRs) != 24 || r.EventLog == nil {
		return nil, fmt.Errorf("incomplete boot report: %d PCRs, event log present: %v", len(r.PCRs), r.EventLog != nil)
	}
	return r, nil
}

func waitForSocket(ctx context.Context, path string) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o600)
}
