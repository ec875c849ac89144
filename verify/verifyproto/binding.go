package verifyproto

import (
	"crypto/sha256"
	"encoding/binary"
)

// bindingDomain separates the VerificationService's documents from every other use of a node's
// attestation key: aTLS binds its documents to SHA-256("constellation-atls-v1\0" || key), so no answer of
// the VerificationService can serve as an aTLS certificate's attestation (and the other way round).
const bindingDomain = "constellation-verificationservice-v1\x00"

// Binding is the user data the VerificationService of node binds its answer to, for the caller's
// userData: SHA-256 over the domain, the node's name and the caller's user data, each length-prefixed. A
// caller that asked node X recomputes it with X and so notices an answer relayed from another node.
func Binding(node string, userData []byte) []byte {
	h := sha256.New()
	h.Write([]byte(bindingDomain))
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(node)))
	h.Write(n[:])
	h.Write([]byte(node))
	binary.BigEndian.PutUint32(n[:], uint32(len(userData)))
	h.Write(n[:])
	h.Write(userData)
	return h.Sum(nil)
}
