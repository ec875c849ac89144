package verity

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
)

// FuzzParseSuperblock checks that no input makes the parser panic, that whatever parses is valid and
// re-encodes to a superblock that parses to the same parameters.
func FuzzParseSuperblock(f *testing.F) {
	f.Add(validSuperblock(f))
	b := validSuperblock(f)
	binary.LittleEndian.PutUint64(b[72:], 1<<50)
	f.Add(b)
	b = validSuperblock(f)
	binary.LittleEndian.PutUint16(b[80:], 300)
	f.Add(b)
	f.Add([]byte("verity\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseSuperblock(b)
		if err != nil {
			if p != nil {
				t.Fatal("params returned with an error")
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed superblock does not validate: %v", err)
		}
		if _, err := p.HashDeviceSize(); err != nil {
			t.Fatal(err)
		}
		again, err := p.MarshalSuperblock()
		if err != nil {
			t.Fatal(err)
		}
		q, err := ParseSuperblock(again)
		if err != nil {
			t.Fatal(err)
		}
		if q.Algorithm != p.Algorithm || q.DataBlockSize != p.DataBlockSize || q.HashBlockSize != p.HashBlockSize ||
			q.DataBlocks != p.DataBlocks || !bytes.Equal(q.Salt, p.Salt) || q.UUID != p.UUID {
			t.Fatalf("round trip changed the parameters: %+v != %+v", q, p)
		}
	})
}

// FuzzVerify checks that arbitrary hash devices (superblock and tree) over small data never panic nor
// verify against a root hash that was not computed from that data.
func FuzzVerify(f *testing.F) {
	data := randBytes(1, 40*512)
	dev := &memDev{}
	_, root, err := Build(context.Background(), bytes.NewReader(data), int64(len(data)), dev,
		Params{DataBlockSize: 512, HashBlockSize: 512, Salt: []byte("salt"), Superblock: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(dev.b)
	f.Add(dev.b[:600])
	f.Add(validSuperblock(f))
	f.Fuzz(func(t *testing.T, hash []byte) {
		p, err := Verify(context.Background(), bytes.NewReader(data), int64(len(data)), bytes.NewReader(hash), root)
		if err != nil {
			return
		}
		// Success means the tree really is data's: rebuilding it gives the same device prefix.
		rebuilt := &memDev{}
		_, r2, err := Build(context.Background(), bytes.NewReader(data), int64(len(data)), rebuilt, *p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r2, root) {
			t.Fatal("verified with a root hash Build does not reproduce")
		}
		if !bytes.Equal(rebuilt.b[SuperblockSize:], hash[SuperblockSize:len(rebuilt.b)]) {
			t.Fatal("verified a tree that differs from the rebuilt one")
		}
	})
}
