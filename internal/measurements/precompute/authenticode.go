package precompute

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"slices"
)

// AuthenticodeSHA256 returns the Authenticode SHA-256 hash of a PE/COFF image: the digest UEFI firmware
// extends into PCR 4 (EV_EFI_BOOT_SERVICES_APPLICATION) for each EFI application it loads.
//
// It follows Microsoft's "Windows Authenticode Portable Executable Signature Format" as implemented by
// EDK2's MeasurePeImageAndExtend, which is what OVMF runs: hash the headers up to SizeOfHeaders without the
// CheckSum field and the Certificate Table data-directory entry, then each section with raw data in order of
// PointerToRawData, then whatever follows the last hashed byte except the attribute certificate table
// (whose size is taken from the Certificate Table entry).
func AuthenticodeSHA256(pe []byte) ([]byte, error) {
	p, err := parsePE(pe)
	if err != nil {
		return nil, fmt.Errorf("authenticode: %w", err)
	}
	h := sha256.New()
	if err := p.authenticode(h); err != nil {
		return nil, fmt.Errorf("authenticode: %w", err)
	}
	return h.Sum(nil), nil
}

func (p *peFile) authenticode(h hash.Hash) error {
	d := p.data
	hdrEnd := int(p.sizeOfHeaders)
	// parsePE guarantees checkSumOff+4 and certDirOff+8 lie inside the optional header, which ends before
	// the section table and therefore before SizeOfHeaders.
	h.Write(d[:p.checkSumOff])
	if p.certDirOff < 0 {
		h.Write(d[p.checkSumOff+4 : hdrEnd])
	} else {
		h.Write(d[p.checkSumOff+4 : p.certDirOff])
		h.Write(d[p.certDirOff+dataDirEntrySize : hdrEnd])
	}

	sum := uint64(p.sizeOfHeaders)
	// A stable sort keeps the order of EDK2's insertion sort for sections that share a file offset.
	sorted := slices.Clone(p.sections)
	slices.SortStableFunc(sorted, func(a, b Section) int {
		return int(int64(a.PointerToRawData) - int64(b.PointerToRawData))
	})
	for _, s := range sorted {
		if s.SizeOfRawData == 0 {
			continue
		}
		h.Write(s.Raw)
		sum += uint64(s.SizeOfRawData)
	}

	size := uint64(len(d))
	if size <= sum {
		return nil
	}
	cert := uint64(0)
	if p.certDirOff >= 0 {
		cert = uint64(p.certTableSize)
	}
	switch {
	case size > sum+cert:
		h.Write(d[sum : size-cert])
	case size < sum+cert:
		// EDK2 refuses to measure such an image (EFI_UNSUPPORTED), so there is no digest to predict.
		return fmt.Errorf("%w: certificate table of %d bytes does not fit after the hashed %d of %d bytes",
			ErrMalformedPE, cert, sum, size)
	}
	return nil
}
