package eventlog

import (
	"encoding/binary"
	"slices"
)

// Builder writes a crypto-agile event log with a SHA-256 bank only, the way firmware records its extends.
// Components that extend PCRs themselves use it so that a verifier can parse and replay their log with the
// same code as the firmware's. The zero value is not usable; call NewBuilder.
type Builder struct {
	buf []byte
}

// NewBuilder returns a Builder whose log already holds the Spec ID header announcing SHA-256.
func NewBuilder() *Builder {
	return &Builder{buf: appendHeader(nil, []algSize{{AlgSHA256, 32}})}
}

// Add appends a TCG_PCR_EVENT2 record. digest must be the value that was (or will be) extended into pcr,
// so that replaying the log reproduces the PCR. Parse's limits (MaxLogSize, MaxEvents) apply to the result.
func (b *Builder) Add(pcr uint32, typ EventType, digest [32]byte, data []byte) {
	b.buf = appendEvent2(b.buf, pcr, typ, []algDigest{{AlgSHA256, digest[:]}}, data)
}

// Bytes returns the log built so far. The result is a copy; adding more events does not change it.
func (b *Builder) Bytes() []byte {
	return slices.Clone(b.buf)
}

// algSize and algDigest let the encoders write logs with any set of banks; tests use that to produce logs
// the Builder cannot (SHA-1 only, several banks).
type algSize struct {
	alg  Alg
	size uint16
}

type algDigest struct {
	alg    Alg
	digest []byte
}

// appendHeader appends the SHA-1 format header event carrying a TCG_EfiSpecIDEvent for algs.
func appendHeader(buf []byte, algs []algSize) []byte {
	var spec []byte
	spec = append(spec, specIDSignature...)
	spec = binary.LittleEndian.AppendUint32(spec, 0) // platformClass: client
	spec = append(spec,
		0, // specVersionMinor
		2, // specVersionMajor
		0, // specErrata
		2, // uintnSize: UINT64
	)
	spec = binary.LittleEndian.AppendUint32(spec, uint32(len(algs)))
	for _, a := range algs {
		spec = binary.LittleEndian.AppendUint16(spec, uint16(a.alg))
		spec = binary.LittleEndian.AppendUint16(spec, a.size)
	}
	spec = append(spec, 0) // vendorInfoSize

	buf = binary.LittleEndian.AppendUint32(buf, 0) // PCR 0
	buf = binary.LittleEndian.AppendUint32(buf, uint32(EvNoAction))
	buf = append(buf, make([]byte, sha1DigestSize)...)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(spec)))
	return append(buf, spec...)
}

// appendEvent2 appends one TCG_PCR_EVENT2.
func appendEvent2(buf []byte, pcr uint32, typ EventType, digests []algDigest, data []byte) []byte {
	buf = binary.LittleEndian.AppendUint32(buf, pcr)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(typ))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(digests)))
	for _, d := range digests {
		buf = binary.LittleEndian.AppendUint16(buf, uint16(d.alg))
		buf = append(buf, d.digest...)
	}
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(data)))
	return append(buf, data...)
}
