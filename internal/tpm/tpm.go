// Package tpm opens TPMs and performs the PCR operations the project needs. A TPM is reached either through
// the kernel's resource manager (/dev/tpmrm0) or through the Unix socket of an swtpm vTPM, both without cgo.
package tpm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// Schemes of a TPM address.
const (
	schemeDevice = "device:"
	schemeSwtpm  = "swtpm:"
)

// DefaultDevice is the kernel's TPM resource manager.
const DefaultDevice = "/dev/tpmrm0"

// Open opens the TPM at addr: "device:/dev/tpmrm0" (a character device) or "swtpm:/run/node/tpm.sock" (the
// server socket of `swtpm socket --server type=unixio`). A bare path is a device.
func Open(addr string) (transport.TPMCloser, error) {
	switch {
	case strings.HasPrefix(addr, schemeSwtpm):
		return OpenSocket(strings.TrimPrefix(addr, schemeSwtpm))
	case strings.HasPrefix(addr, schemeDevice):
		return OpenDevice(strings.TrimPrefix(addr, schemeDevice))
	case strings.Contains(addr, ":"):
		return nil, fmt.Errorf("TPM address %q: unknown scheme, use %s<path> or %s<path>", addr, schemeDevice, schemeSwtpm)
	default:
		return OpenDevice(addr)
	}
}

// OpenDevice opens a TPM character device such as /dev/tpmrm0.
func OpenDevice(path string) (transport.TPMCloser, error) {
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening TPM device %s: %w", path, err)
	}
	return t, nil
}

// OpenSocket returns a TPM that talks to an swtpm server socket. Each command uses its own connection:
// swtpm serves one connection at a time, and several processes of a node (the launcher that measures,
// the bootstrapper that quotes) share one vTPM.
func OpenSocket(path string) (transport.TPMCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("opening swtpm socket: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("opening swtpm socket: %s is not a socket", path)
	}
	return &socketTPM{path: path}, nil
}

type socketTPM struct {
	path string
	mu   sync.Mutex
}

// maxResponseSize bounds what a TPM may send back; real responses are a few KiB.
const maxResponseSize = 64 << 10

// responseHeaderSize is tag (2) + size (4) + response code (4).
const responseHeaderSize = 10

func (s *socketTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	conn, err := net.Dial("unix", s.path)
	if err != nil {
		return nil, fmt.Errorf("connecting to swtpm at %s: %w", s.path, err)
	}
	defer conn.Close()
	if _, err := conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("sending TPM command: %w", err)
	}
	header := make([]byte, responseHeaderSize)
	if _, err := io.ReadFull(conn, header); err != nil {
		return nil, fmt.Errorf("reading TPM response header: %w", err)
	}
	size := binary.BigEndian.Uint32(header[2:6])
	if size < responseHeaderSize || size > maxResponseSize {
		return nil, fmt.Errorf("TPM response announces %d bytes", size)
	}
	rsp := make([]byte, size)
	copy(rsp, header)
	if _, err := io.ReadFull(conn, rsp[responseHeaderSize:]); err != nil {
		return nil, fmt.Errorf("reading TPM response: %w", err)
	}
	return rsp, nil
}

func (s *socketTPM) Close() error { return nil }

// pcrsPerRead is how many PCRs TPM2_PCR_Read returns at most per call.
const pcrsPerRead = 8

// ReadPCRs returns the SHA-256 values of the given PCRs.
func ReadPCRs(t transport.TPM, pcrs []uint32) (map[uint32][]byte, error) {
	out := make(map[uint32][]byte, len(pcrs))
	sorted := slices.Clone(pcrs)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	for start := 0; start < len(sorted); start += pcrsPerRead {
		chunk := sorted[start:min(start+pcrsPerRead, len(sorted))]
		rsp, err := tpm2.PCRRead{PCRSelectionIn: Selection(chunk)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("reading PCRs %v: %w", chunk, err)
		}
		got, err := SelectedPCRs(rsp.PCRSelectionOut)
		if err != nil {
			return nil, err
		}
		if len(got) != len(rsp.PCRValues.Digests) {
			return nil, fmt.Errorf("reading PCRs %v: TPM returned %d values for %d PCRs", chunk, len(rsp.PCRValues.Digests), len(got))
		}
		for i, idx := range got {
			out[idx] = rsp.PCRValues.Digests[i].Buffer
		}
	}
	for _, idx := range sorted {
		if _, ok := out[idx]; !ok {
			return nil, fmt.Errorf("reading PCRs: TPM did not return PCR %d", idx)
		}
	}
	return out, nil
}

// Extend extends a PCR's SHA-256 bank with digest.
func Extend(t transport.TPM, pcr uint32, digest []byte) error {
	if len(digest) != sha256.Size {
		return fmt.Errorf("extending PCR %d: digest must be %d bytes, got %d", pcr, sha256.Size, len(digest))
	}
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
			{HashAlg: tpm2.TPMAlgSHA256, Digest: digest},
		}},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("extending PCR %d: %w", pcr, err)
	}
	return nil
}

// Selection returns a SHA-256 PCR selection of pcrs.
func Selection(pcrs []uint32) tpm2.TPMLPCRSelection {
	idx := make([]uint, len(pcrs))
	for i, p := range pcrs {
		idx[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(idx...),
	}}}
}

// ErrNotSHA256 is returned for PCR selections of other banks.
var ErrNotSHA256 = errors.New("PCR selection is not of the SHA-256 bank")

// SelectedPCRs returns the indices a SHA-256 selection names, ascending. Other banks are an error: this
// project only trusts SHA-256.
func SelectedPCRs(sel tpm2.TPMLPCRSelection) ([]uint32, error) {
	var out []uint32
	for _, s := range sel.PCRSelections {
		if s.Hash != tpm2.TPMAlgSHA256 {
			return nil, fmt.Errorf("%w: bank %#x", ErrNotSHA256, uint16(s.Hash))
		}
		for byteIdx, b := range s.PCRSelect {
			for bit := range 8 {
				if b&(1<<bit) != 0 {
					out = append(out, uint32(byteIdx*8+bit))
				}
			}
		}
	}
	return out, nil
}
