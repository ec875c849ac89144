package verity

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/testenv"
)

// The tests in this file compare the package with the real tools: veritysetup (libcryptsetup, which
// systemd-repart calls to write Verity=hash partitions), mkfs.erofs (the root file system's format) and
// systemd-repart itself. They need
//
//	apt-get install -y cryptsetup-bin erofs-utils systemd
//
// veritysetup format works on plain files, without device-mapper. The tests skip without the tools, or
// fail where internal/testenv is strict (CI, `make go-test`). Under Bazel (whose sandboxed chroot lacks
// them) they always skip and say why.

const installHint = "apt-get install -y cryptsetup-bin erofs-utils systemd"

// need returns the first of paths that exists, or skips or fails the test with installHint.
func need(tb testing.TB, paths ...string) string {
	tb.Helper()
	return testenv.Need(tb, installHint, paths...)
}

// veritysetupFormat runs veritysetup format and returns the fields of its report ("Root hash", "Salt",
// ...).
func veritysetupFormat(tb testing.TB, veritysetup, data, hash string, args ...string) map[string]string {
	tb.Helper()
	out := testenv.Run(tb, veritysetup, append(append([]string{"format"}, args...), data, hash)...)
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	require.Contains(tb, fields, "Root hash", "veritysetup output:\n%s", out)
	return fields
}

func writeFile(tb testing.TB, path string, b []byte) {
	tb.Helper()
	require.NoError(tb, os.WriteFile(path, b, 0o600))
}

func readFile(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	require.NoError(tb, err)
	return b
}

// verifyFiles verifies through *os.File readers, as the launcher will.
func verifyFiles(tb testing.TB, dataPath, hashPath string, p *Params, root []byte) error {
	tb.Helper()
	data, err := os.Open(dataPath)
	require.NoError(tb, err)
	defer data.Close()
	st, err := data.Stat()
	require.NoError(tb, err)
	hash, err := os.Open(hashPath)
	require.NoError(tb, err)
	defer hash.Close()
	if p == nil {
		_, err = Verify(context.Background(), data, st.Size(), hash, root)
		return err
	}
	return VerifyParams(context.Background(), data, st.Size(), hash, p, root)
}

func TestVeritysetup(t *testing.T) {
	veritysetup := need(t, "veritysetup", "/usr/sbin/veritysetup", "/sbin/veritysetup")
	salt := randBytes(42, 32)
	uuid := "0d3cf0b4-52a5-4d0b-8c1f-2b4c8a1e9f00"

	for _, c := range []struct {
		name   string
		blocks int
		dbs    uint32
		args   []string
		params *Params // for --no-superblock; nil: read the superblock
	}{
		{name: "defaults (random salt and UUID)", blocks: 1000, dbs: 4096},
		{name: "salt and UUID", blocks: 1000, dbs: 4096, args: []string{"--salt=" + hex.EncodeToString(salt), "--uuid=" + uuid}},
		{name: "no superblock", blocks: 1000, dbs: 4096, args: []string{"--no-superblock", "--salt=" + hex.EncodeToString(salt)},
			params: &Params{Salt: salt}},
		{name: "no superblock no salt", blocks: 1000, dbs: 4096, args: []string{"--no-superblock", "--salt=-"}, params: &Params{}},
		{name: "three levels", blocks: 1000, dbs: 1024, args: []string{"--data-block-size=1024", "--hash-block-size=512", "--salt=" + hex.EncodeToString(salt), "--uuid=" + uuid}},
		{name: "one block", blocks: 1, dbs: 4096, args: []string{"--salt=" + hex.EncodeToString(salt), "--uuid=" + uuid}},
		{name: "partial trailing block", blocks: 129, dbs: 4096, args: []string{"--salt=" + hex.EncodeToString(salt), "--uuid=" + uuid}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			dataPath, hashPath := filepath.Join(dir, "data"), filepath.Join(dir, "hash")
			data := randBytes(uint64(c.blocks), c.blocks*int(c.dbs))
			if c.name == "partial trailing block" {
				data = append(data, 1, 2, 3)
			}
			writeFile(t, dataPath, data)
			out := veritysetupFormat(t, veritysetup, dataPath, hashPath, c.args...)
			root, err := ParseRootHash(out["Root hash"])
			require.NoError(t, err)
			params := c.params
			if params != nil {
				params.DataBlockSize = c.dbs
			}
			require.NoError(t, verifyFiles(t, dataPath, hashPath, params, root))
			hash := readFile(t, hashPath)

			p := params
			if p == nil {
				p, err = ReadSuperblock(bytes.NewReader(hash))
				require.NoError(t, err)
				assert.Equal(t, out["Salt"], hex.EncodeToString(p.Salt))
				assert.Equal(t, out["UUID"], formatUUID(p.UUID))
				assert.Equal(t, out["Data blocks"], fmt.Sprint(p.DataBlocks))
				assert.Equal(t, out["Hash algorithm"], p.Algorithm)
			} else {
				p, err = p.withDefaults(int64(len(data)))
				require.NoError(t, err)
			}

			// Build with the same parameters gives the same hash device, bit for bit.
			built := &memDev{}
			bp := Params{DataBlockSize: p.DataBlockSize, HashBlockSize: p.HashBlockSize, Salt: p.Salt, UUID: p.UUID, Superblock: p.Superblock}
			_, broot, err := Build(context.Background(), bytes.NewReader(data), int64(len(data)), built, bp)
			require.NoError(t, err)
			assert.Equal(t, hex.EncodeToString(root), hex.EncodeToString(broot))
			require.True(t, bytes.Equal(hash, built.b), "hash device differs from veritysetup's (%d vs %d bytes)", len(built.b), len(hash))

			// Tampering.
			g, err := p.geometry()
			require.NoError(t, err)
			for _, k := range []int{0, c.blocks - 1} {
				d := bytes.Clone(data)
				d[k*int(c.dbs)+100] ^= 0x80
				writeFile(t, dataPath, d)
				err := verifyFiles(t, dataPath, hashPath, params, root)
				if g.levels == 0 {
					require.ErrorIs(t, err, ErrRootHashMismatch)
				} else {
					var bm *BlockMismatchError
					require.ErrorAs(t, err, &bm)
					assert.Equal(t, 0, bm.Level)
					assert.Equal(t, uint64(k), bm.Index)
				}
				assert.Error(t, exec.Command(veritysetup, veritysetupVerifyArgs(c.args, dataPath, hashPath, root)...).Run(), "veritysetup verify accepts the tampered data")
			}
			writeFile(t, dataPath, data)
			require.NoError(t, exec.Command(veritysetup, veritysetupVerifyArgs(c.args, dataPath, hashPath, root)...).Run(), "veritysetup verify")

			if g.levels > 0 {
				for _, off := range []int64{p.TreeOffset(), p.TreeOffset() + int64(g.totalBlocks)*int64(p.HashBlockSize) - 1, p.TreeOffset() + int64(g.start[0])*int64(p.HashBlockSize) + 33} {
					h := bytes.Clone(hash)
					h[off] ^= 0x01
					writeFile(t, hashPath, h)
					var bm *BlockMismatchError
					require.ErrorAs(t, verifyFiles(t, dataPath, hashPath, params, root), &bm, "flipped hash device byte %d", off)
					assert.Equal(t, off, bm.Offset)
				}
				writeFile(t, hashPath, hash)
			}

			bad := bytes.Clone(root)
			bad[0] ^= 0xff
			require.ErrorIs(t, verifyFiles(t, dataPath, hashPath, params, bad), ErrRootHashMismatch)
		})
	}
}

// veritysetupVerifyArgs gives `veritysetup verify` the options of the format that matter for it.
func veritysetupVerifyArgs(formatArgs []string, data, hash string, root []byte) []string {
	args := []string{"verify"}
	for _, a := range formatArgs {
		if !strings.HasPrefix(a, "--uuid") {
			args = append(args, a)
		}
	}
	return append(args, data, hash, hex.EncodeToString(root))
}

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// makeErofs builds an erofs image of a small tree of random files.
func makeErofs(t *testing.T, dir string) string {
	t.Helper()
	mkfs := need(t, "mkfs.erofs")
	src := filepath.Join(dir, "root")
	for i := range 50 {
		p := filepath.Join(src, fmt.Sprintf("d%d", i%7), fmt.Sprintf("f%d", i))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		writeFile(t, p, randBytes(uint64(i), 1000+i*3000))
	}
	img := filepath.Join(dir, "root.erofs")
	// Fixed timestamps and UUID make the image reproducible, as mkosi's is.
	testenv.Run(t, mkfs, "-T0", "-U", "6e3f1c8a-8c9d-4c57-9d3b-3f1e5a2b7c11", img, src)
	return img
}

// TestErofs formats an erofs image as systemd-repart 257 would (4 KiB blocks, salt and UUID derived from
// the seed) and checks Verify and Build against veritysetup.
func TestErofs(t *testing.T) {
	veritysetup := need(t, "veritysetup", "/usr/sbin/veritysetup", "/sbin/veritysetup")
	dir := t.TempDir()
	img := makeErofs(t, dir)
	data := readFile(t, img)
	require.Equal(t, "\xe2\xe1\xf5\xe0", string(data[1024:1028]), "erofs magic")
	require.Zero(t, len(data)%4096)

	seed := [16]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	uuid := RepartUUID(seed)
	hashPath := filepath.Join(dir, "root.verity")
	out := veritysetupFormat(t, veritysetup, img, hashPath, "--salt="+hex.EncodeToString(RepartSalt(seed)), "--uuid="+formatUUID(uuid))
	root, err := ParseRootHash(out["Root hash"])
	require.NoError(t, err)
	require.NoError(t, verifyFiles(t, img, hashPath, nil, root))

	built := &memDev{}
	p, broot, err := Build(context.Background(), bytes.NewReader(data), int64(len(data)), built,
		Params{Salt: RepartSalt(seed), UUID: uuid, Superblock: true})
	require.NoError(t, err)
	assert.Equal(t, root, broot)
	assert.True(t, bytes.Equal(readFile(t, hashPath), built.b), "hash device differs from veritysetup's")
	assert.Equal(t, uint64(len(data)/4096), p.DataBlocks)

	// A changed byte in the erofs superblock (block 0).
	d := bytes.Clone(data)
	d[1024+12] ^= 1
	writeFile(t, img, d)
	var bm *BlockMismatchError
	require.ErrorAs(t, verifyFiles(t, img, hashPath, nil, root), &bm)
	assert.Equal(t, 0, bm.Level)
	assert.Equal(t, uint64(0), bm.Index)
}

// repartPartition is the part of `systemd-repart --json=short` this test reads.
type repartPartition struct {
	Type     string  `json:"type"`
	UUID     string  `json:"uuid"`
	Offset   int64   `json:"offset"`
	RawSize  int64   `json:"raw_size"`
	RootHash *string `json:"roothash"`
}

// TestSystemdRepart builds a disk image with the machine's systemd-repart from an erofs root with
// Verity=data/hash partitions, as mkosi does, and verifies the partitions against the root hash repart
// reports. (Debian bookworm's systemd 252 differs from the image's 257 in its defaults: 512-byte verity
// blocks for an image file and a random salt; Verify takes both from the superblock.)
func TestSystemdRepart(t *testing.T) {
	repart := need(t, "systemd-repart", "/usr/bin/systemd-repart", "/bin/systemd-repart")
	dir := t.TempDir()
	img := makeErofs(t, dir)
	defs := filepath.Join(dir, "defs")
	require.NoError(t, os.Mkdir(defs, 0o755))
	writeFile(t, filepath.Join(defs, "10-root.conf"), []byte("[Partition]\nType=root\nCopyBlocks="+img+"\nVerity=data\nVerityMatchKey=root\n"))
	writeFile(t, filepath.Join(defs, "20-root-verity.conf"), []byte("[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\n"))
	disk := filepath.Join(dir, "disk.raw")
	out := testenv.Run(t, repart, "--empty=create", "--size=auto", "--dry-run=no", "--no-pager", "--json=short",
		"--seed=00112233-4455-6677-8899-aabbccddeeff", "--definitions="+defs, disk)
	var parts []repartPartition
	require.NoError(t, json.Unmarshal(out, &parts), "%s", out)
	var dataPart, hashPart *repartPartition
	for i := range parts {
		switch {
		case strings.HasSuffix(parts[i].Type, "-verity"):
			hashPart = &parts[i]
		case strings.HasPrefix(parts[i].Type, "root"):
			dataPart = &parts[i]
		}
	}
	require.NotNil(t, dataPart, "%s", out)
	require.NotNil(t, hashPart, "%s", out)
	require.NotNil(t, hashPart.RootHash)
	root, err := ParseRootHash(*hashPart.RootHash)
	require.NoError(t, err)
	// repart names the partitions after the root hash: data = first half, hash = second half.
	assert.Equal(t, hex.EncodeToString(root[:16]), strings.ReplaceAll(dataPart.UUID, "-", ""))
	assert.Equal(t, hex.EncodeToString(root[16:]), strings.ReplaceAll(hashPart.UUID, "-", ""))

	f, err := os.Open(disk)
	require.NoError(t, err)
	defer f.Close()
	section := func(f *os.File, p *repartPartition) *io.SectionReader {
		return io.NewSectionReader(f, p.Offset, p.RawSize)
	}
	p, err := Verify(context.Background(), section(f, dataPart), dataPart.RawSize, section(f, hashPart), root)
	require.NoError(t, err)
	t.Logf("systemd-repart wrote: %+v", *p)
	assert.True(t, p.Superblock)
	assert.Equal(t, dataPart.RawSize, p.DataSize(), "the tree covers the whole data partition")
	assert.Len(t, p.Salt, 32)

	// The erofs image is at the start of the data partition.
	erofs := readFile(t, img)
	got := make([]byte, len(erofs))
	_, err = f.ReadAt(got, dataPart.Offset)
	require.NoError(t, err)
	require.True(t, bytes.Equal(erofs, got))

	// Tamper with a file's contents inside the image (a byte in the middle of the erofs data).
	diskBytes := readFile(t, disk)
	off := dataPart.Offset + int64(len(erofs)/2)
	diskBytes[off] ^= 0x20
	tampered := filepath.Join(dir, "tampered.raw")
	writeFile(t, tampered, diskBytes)
	tf, err := os.Open(tampered)
	require.NoError(t, err)
	defer tf.Close()
	_, err = Verify(context.Background(), section(tf, dataPart), dataPart.RawSize, section(tf, hashPart), root)
	var bm *BlockMismatchError
	require.ErrorAs(t, err, &bm)
	assert.Equal(t, 0, bm.Level)
	assert.Equal(t, uint64(len(erofs)/2)/uint64(p.DataBlockSize), bm.Index)
	t.Logf("tampered image: %v", err)
}
