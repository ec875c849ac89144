package precompute

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformedPE is wrapped by every error about a PE/COFF file that cannot be parsed, so that callers can
// tell bad input from other failures with errors.Is.
var ErrMalformedPE = errors.New("malformed PE/COFF file")

// Offsets and sizes from the Microsoft PE/COFF specification. They are spelled out rather than read with
// debug/pe because the Authenticode hash needs the file offsets of individual header fields (CheckSum, the
// Certificate Table entry), which debug/pe does not expose, and because the parser must reject malformed
// input with an error instead of trusting it.
const (
	dosHeaderSize        = 0x40
	peOffsetField        = 0x3c
	coffHeaderSize       = 20
	sectionHeaderSize    = 40
	optMagicPE32         = 0x10b
	optMagicPE32Plus     = 0x20b
	optCheckSumOffset    = 64 // same in PE32 and PE32+
	optSizeOfHeadersOff  = 60 // same in PE32 and PE32+
	dataDirEntrySize     = 8
	certTableDirIndex    = 4 // IMAGE_DIRECTORY_ENTRY_SECURITY
	maxSections          = 96
	peSignature          = "PE\x00\x00"
	optNumRvaOffsetPE32  = 92
	optNumRvaOffsetPE32P = 108
)

// Section is one entry of a PE section table together with the bytes it refers to.
type Section struct {
	// Name is the section name with trailing NULs removed, e.g. ".linux".
	Name string
	// VirtualSize is the size of the section once loaded. For UKI sections it is the exact size of the
	// embedded file, while SizeOfRawData is rounded up to the file alignment.
	VirtualSize uint32
	// VirtualAddress is the section's RVA.
	VirtualAddress uint32
	// SizeOfRawData is the size of the section's data in the file, a multiple of FileAlignment.
	SizeOfRawData uint32
	// PointerToRawData is the file offset of the section's data.
	PointerToRawData uint32
	// Raw is the section's data in the file: SizeOfRawData bytes from PointerToRawData, padding included.
	Raw []byte
}

// Content returns the bytes systemd-stub measures and hands on for the section: the first VirtualSize bytes.
// systemd-stub 252 locates sections in the loaded image and uses VirtualSize as their length, so the
// file-alignment padding objcopy adds to SizeOfRawData is not part of the content. A VirtualSize beyond the
// raw data would mean zero-filled memory that is not in the file; UKI builders never produce that, so it is
// reported as an error instead of guessed at.
func (s Section) Content() ([]byte, error) {
	if s.VirtualSize > s.SizeOfRawData {
		return nil, fmt.Errorf("%w: section %q: VirtualSize %d exceeds SizeOfRawData %d",
			ErrMalformedPE, s.Name, s.VirtualSize, s.SizeOfRawData)
	}
	return s.Raw[:s.VirtualSize], nil
}

// peFile is the part of a PE header the package needs.
type peFile struct {
	data []byte
	// checkSumOff is the file offset of the optional header's CheckSum field.
	checkSumOff int
	// certDirOff is the file offset of the Certificate Table data directory entry, or -1 if the optional
	// header has too few data directories to contain it.
	certDirOff    int
	certTableSize uint32
	sizeOfHeaders uint32
	sections      []Section
}

func parsePE(data []byte) (*peFile, error) {
	if len(data) < dosHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a DOS header", ErrMalformedPE, len(data))
	}
	if data[0] != 'M' || data[1] != 'Z' {
		return nil, fmt.Errorf("%w: no MZ signature", ErrMalformedPE)
	}
	peOff := uint64(binary.LittleEndian.Uint32(data[peOffsetField:]))
	coffOff := peOff + 4
	optOff := coffOff + coffHeaderSize
	if optOff > uint64(len(data)) {
		return nil, fmt.Errorf("%w: PE header offset %#x beyond end of file", ErrMalformedPE, peOff)
	}
	if string(data[peOff:coffOff]) != peSignature {
		return nil, fmt.Errorf("%w: no PE signature at %#x", ErrMalformedPE, peOff)
	}
	numSections := uint64(binary.LittleEndian.Uint16(data[coffOff+2:]))
	sizeOfOpt := uint64(binary.LittleEndian.Uint16(data[coffOff+16:]))
	if numSections > maxSections {
		return nil, fmt.Errorf("%w: %d sections, the limit is %d", ErrMalformedPE, numSections, maxSections)
	}
	secTableOff := optOff + sizeOfOpt
	secTableEnd := secTableOff + numSections*sectionHeaderSize
	if secTableEnd > uint64(len(data)) {
		return nil, fmt.Errorf("%w: section table ends at %#x, beyond end of file", ErrMalformedPE, secTableEnd)
	}
	if sizeOfOpt < 2 {
		return nil, fmt.Errorf("%w: optional header is missing", ErrMalformedPE)
	}
	var numRvaOff, dirsOff uint64
	switch magic := binary.LittleEndian.Uint16(data[optOff:]); magic {
	case optMagicPE32:
		numRvaOff, dirsOff = optNumRvaOffsetPE32, optNumRvaOffsetPE32+4
	case optMagicPE32Plus:
		numRvaOff, dirsOff = optNumRvaOffsetPE32P, optNumRvaOffsetPE32P+4
	default:
		return nil, fmt.Errorf("%w: unknown optional header magic %#x", ErrMalformedPE, magic)
	}
	if numRvaOff+4 > sizeOfOpt {
		return nil, fmt.Errorf("%w: optional header of %d bytes is too short", ErrMalformedPE, sizeOfOpt)
	}
	p := &peFile{
		data:          data,
		checkSumOff:   int(optOff + optCheckSumOffset),
		certDirOff:    -1,
		sizeOfHeaders: binary.LittleEndian.Uint32(data[optOff+optSizeOfHeadersOff:]),
	}
	numRva := uint64(binary.LittleEndian.Uint32(data[optOff+numRvaOff:]))
	if numRva > certTableDirIndex {
		entry := dirsOff + certTableDirIndex*dataDirEntrySize
		if entry+dataDirEntrySize > sizeOfOpt {
			return nil, fmt.Errorf("%w: %d data directories do not fit the optional header", ErrMalformedPE, numRva)
		}
		p.certDirOff = int(optOff + entry)
		p.certTableSize = binary.LittleEndian.Uint32(data[p.certDirOff+4:])
	}
	// The Authenticode hash covers the headers up to SizeOfHeaders, so they must include the section table
	// and lie within the file; otherwise the header ranges below would overlap or run off the end.
	if uint64(p.sizeOfHeaders) < secTableEnd || uint64(p.sizeOfHeaders) > uint64(len(data)) {
		return nil, fmt.Errorf("%w: SizeOfHeaders %#x outside [%#x, %#x]", ErrMalformedPE, p.sizeOfHeaders, secTableEnd, len(data))
	}
	for i := range numSections {
		h := data[secTableOff+i*sectionHeaderSize:][:sectionHeaderSize]
		s := Section{
			Name:             string(bytes.TrimRight(h[:8], "\x00")),
			VirtualSize:      binary.LittleEndian.Uint32(h[8:]),
			VirtualAddress:   binary.LittleEndian.Uint32(h[12:]),
			SizeOfRawData:    binary.LittleEndian.Uint32(h[16:]),
			PointerToRawData: binary.LittleEndian.Uint32(h[20:]),
		}
		end := uint64(s.PointerToRawData) + uint64(s.SizeOfRawData)
		if end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: section %d (%q) data [%#x, %#x) beyond end of file (%#x)",
				ErrMalformedPE, i, s.Name, s.PointerToRawData, end, len(data))
		}
		s.Raw = data[s.PointerToRawData:end:end]
		p.sections = append(p.sections, s)
	}
	return p, nil
}
