// Package precomputetest builds small PE files and UKIs that package precompute parses and measures, for
// the tests of the components that measure images (the CLI, the Terraform provider).
package precomputetest

import (
	"encoding/binary"
	"strings"
)

// PE builds a minimal PE32+ file with the given sections, enough for precompute.ParseUKI and its
// Authenticode hash; package measurements tests the parsing and the values in depth.
func PE(sections [][2]string) []byte {
	const optOff, optSize, secHdr, align = 0x58, 240, 40, 0x200
	hdrEnd := optOff + optSize + len(sections)*secHdr
	buf := make([]byte, (hdrEnd+align-1)/align*align)
	copy(buf, "MZ")
	binary.LittleEndian.PutUint32(buf[0x3c:], 0x40)
	copy(buf[0x40:], "PE\x00\x00")
	binary.LittleEndian.PutUint16(buf[0x44:], 0x8664)
	binary.LittleEndian.PutUint16(buf[0x46:], uint16(len(sections)))
	binary.LittleEndian.PutUint16(buf[0x54:], optSize)
	binary.LittleEndian.PutUint16(buf[0x56:], 0x22)
	opt := buf[optOff:]
	binary.LittleEndian.PutUint16(opt[0:], 0x20b)
	binary.LittleEndian.PutUint32(opt[32:], 0x1000)
	binary.LittleEndian.PutUint32(opt[36:], align)
	binary.LittleEndian.PutUint32(opt[60:], uint32(len(buf)))
	binary.LittleEndian.PutUint32(opt[108:], 16)
	va := uint32(0x1000)
	for i, s := range sections {
		raw := (len(s[1]) + align - 1) / align * align
		h := buf[optOff+optSize+i*secHdr:]
		copy(h[:8], s[0])
		binary.LittleEndian.PutUint32(h[8:], uint32(len(s[1])))
		binary.LittleEndian.PutUint32(h[12:], va)
		binary.LittleEndian.PutUint32(h[16:], uint32(raw))
		binary.LittleEndian.PutUint32(h[20:], uint32(len(buf)))
		va += uint32((max(raw, 1) + 0xfff) / 0x1000 * 0x1000)
		buf = append(buf, s[1]...)
		buf = append(buf, make([]byte, raw-len(s[1]))...)
	}
	return buf
}

// UKI is a small UKI (stub, os-release, command line, kernel, initrd) that precompute parses and measures.
func UKI() []byte {
	kernel := PE([][2]string{{".text", "kernel code"}})
	return PE([][2]string{
		{".text", "stub code"},
		{".osrel", "ID=test\n"},
		{".cmdline", "console=ttyS0"},
		{".linux", string(kernel)},
		{".initrd", strings.Repeat("initrd", 100)},
	})
}

// BootLoader is a small PE standing for systemd-boot.
func BootLoader() []byte {
	return PE([][2]string{{".text", "systemd-boot"}})
}
