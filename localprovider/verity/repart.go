package verity

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// RepartSalt is the salt systemd-repart gives a Verity=hash partition: HMAC-SHA256 keyed with the
// 128-bit seed (--seed=, mkosi's Seed=) of the string "verity-salt" (repart.c: derive_salt()).
func RepartSalt(seed [16]byte) []byte {
	m := hmac.New(sha256.New, seed[:])
	m.Write([]byte("verity-salt"))
	return m.Sum(nil)
}

// RepartUUID is the superblock UUID systemd-repart gives a Verity=hash partition: the first half of
// HMAC-SHA256(seed, "verity-uuid") made a version 4, variant 1 UUID (repart.c: derive_uuid()).
func RepartUUID(seed [16]byte) [16]byte {
	m := hmac.New(sha256.New, seed[:])
	m.Write([]byte("verity-uuid"))
	var u [16]byte
	copy(u[:], m.Sum(nil))
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

// ParseRootHash decodes a hex root hash (as in roothash= or veritysetup's output).
func ParseRootHash(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("verity: root hash %q: %w", s, err)
	}
	if len(b) != DigestSize {
		return nil, fmt.Errorf("verity: root hash %q is %d bytes, want %d", s, len(b), DigestSize)
	}
	return b, nil
}

// RootHashFromCmdline returns the root hash of a kernel command line's roothash= (the last one wins, as
// in systemd-veritysetup-generator). It fails if there is none or it is not a SHA-256 hex digest.
func RootHashFromCmdline(cmdline string) ([]byte, error) {
	var v string
	found := false
	for _, f := range strings.Fields(cmdline) {
		if s, ok := strings.CutPrefix(f, "roothash="); ok {
			v, found = s, true
		}
	}
	if !found {
		return nil, fmt.Errorf("verity: no roothash= on the command line")
	}
	return ParseRootHash(v)
}
