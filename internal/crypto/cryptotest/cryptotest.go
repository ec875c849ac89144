// Package cryptotest holds the inputs of the project's key-derivation test vectors. The expected keys in
// tests across the tree (internal/crypto, the KeyService, the JoinService) were computed from exactly these
// bytes with an independent HKDF implementation, so every test must get them from here.
package cryptotest

import "github.com/constellation-go/constellation/internal/crypto"

// MasterSecret returns a fresh copy of the vectors' master secret: key 0x00..0x1f, salt 0x20..0x3f.
func MasterSecret() *crypto.MasterSecret {
	m := &crypto.MasterSecret{Key: make([]byte, crypto.MasterSecretLength), Salt: make([]byte, crypto.SaltLength)}
	for i := range m.Key {
		m.Key[i] = byte(i)
	}
	for i := range m.Salt {
		m.Salt[i] = byte(crypto.MasterSecretLength + i)
	}
	return m
}
