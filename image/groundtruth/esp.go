package groundtruth

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// espType is the EFI System Partition's GPT type GUID (C12A7328-F81F-11D2-BA4B-00A0C93EC93B) as stored on
// disk (the first three fields little-endian).
var espType = []byte{0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b}

// SystemdBootDisk writes to dst a copy of the image's disk whose ESP holds systemd-boot as the removable
// media boot loader (\EFI\BOOT\BOOTX64.EFI) and the UKI as a type #2 entry (\EFI\Linux\constellation.efi),
// i.e. the "firmware → systemd-boot → UKI" boot path with everything else unchanged. It needs mkfs.vfat
// (dosfstools) and mcopy/mmd (mtools).
func SystemdBootDisk(disk, bootLoader, uki, dst string) error {
	for _, tool := range []string{"mkfs.vfat", "mmd", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed to build the systemd-boot ESP (make setup installs dosfstools and mtools): %w", tool, err)
		}
	}
	if err := copySparse(disk, dst); err != nil {
		return fmt.Errorf("copying the disk: %w", err)
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	off, size, err := findESP(f)
	if err != nil {
		return fmt.Errorf("%s: %w", disk, err)
	}

	esp := filepath.Join(filepath.Dir(dst), "esp.img")
	defer os.Remove(esp)
	if err := os.WriteFile(esp, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(esp, size); err != nil {
		return err
	}
	// Fixed volume ID and label so that the disk is the same on every run.
	steps := [][]string{
		{"mkfs.vfat", "-F", "32", "-i", "0c0ffee0", "-n", "ESP", esp},
		{"mmd", "-i", esp, "::EFI", "::EFI/BOOT", "::EFI/Linux"},
		{"mcopy", "-i", esp, bootLoader, "::EFI/BOOT/BOOTX64.EFI"},
		{"mcopy", "-i", esp, uki, "::EFI/Linux/constellation.efi"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %w: %s", s, err, out)
		}
	}
	src, err := os.Open(esp)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := io.Copy(io.NewOffsetWriter(f, off), src); err != nil {
		return fmt.Errorf("writing the ESP: %w", err)
	}
	return f.Close()
}

// findESP returns the byte offset and size of the first EFI System Partition of a GPT disk with 512- or
// 4096-byte logical sectors.
func findESP(r io.ReaderAt) (offset, size int64, err error) {
	for _, sector := range []int64{512, 4096} {
		hdr := make([]byte, 92)
		if _, err := r.ReadAt(hdr, sector); err != nil {
			return 0, 0, fmt.Errorf("reading the GPT header: %w", err)
		}
		if !bytes.Equal(hdr[:8], []byte("EFI PART")) {
			continue
		}
		entriesLBA := int64(binary.LittleEndian.Uint64(hdr[72:]))
		count := binary.LittleEndian.Uint32(hdr[80:])
		entrySize := int64(binary.LittleEndian.Uint32(hdr[84:]))
		if count > 1024 || entrySize < 128 || entrySize > 4096 {
			return 0, 0, errors.New("implausible GPT partition table")
		}
		entry := make([]byte, entrySize)
		for i := int64(0); i < int64(count); i++ {
			if _, err := r.ReadAt(entry, entriesLBA*sector+i*entrySize); err != nil {
				return 0, 0, fmt.Errorf("reading GPT entry %d: %w", i, err)
			}
			if bytes.Equal(entry[:16], espType) {
				first := int64(binary.LittleEndian.Uint64(entry[32:]))
				last := int64(binary.LittleEndian.Uint64(entry[40:]))
				return first * sector, (last - first + 1) * sector, nil
			}
		}
		return 0, 0, errors.New("no EFI System Partition in the GPT")
	}
	return 0, 0, errors.New("no GPT found")
}

// copySparse copies a disk image without writing its holes.
func copySparse(src, dst string) error {
	out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}
