package statedisk

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/constellation-go/constellation/internal/remains"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return k
}

// mountDisk mounts the disk at path on target and unmounts it when the test ends if still mounted.
func mountDisk(t *testing.T, path, target string) {
	t.Helper()
	dev, err := Mount(path, target)
	require.NoError(t, err)
	assert.Regexp(t, `^/dev/loop\d+$`, dev)
	t.Cleanup(func() {
		if err := unix.Unmount(target, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmounting %s: %v", target, err)
		}
	})
}

func newDisk(t *testing.T) (dir, disk string) {
	t.Helper()
	testenv.NeedRoot(t)
	dir = testenv.TempDir(t)
	disk = filepath.Join(dir, "state.img")
	require.NoError(t, Create(context.Background(), disk, 64<<20))
	t.Cleanup(func() {
		// The kernel detaches an auto-clear loop device shortly after its last user closed it.
		assert.Eventually(t, func() bool { return len(remains.LoopsBackedBy(dir)) == 0 }, 5*time.Second, 50*time.Millisecond)
		assert.Empty(t, remains.LoopsBackedBy(dir), "loop devices left")
		assert.Empty(t, remains.MountsUnder(dir))
	})
	return dir, disk
}

// TestEncryptDir is the bootstrapper's use: encrypt an empty directory of the state disk, write secrets,
// and after a remount (a node restart) the names are ciphertext and contents unreadable until the key is
// added again.
func TestEncryptDir(t *testing.T) {
	dir, disk := newDisk(t)
	fi, err := os.Stat(disk)
	require.NoError(t, err)
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(disk, &st))
	assert.Less(t, st.Blocks*512, fi.Size()/2, "the disk file is sparse")

	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	mountDisk(t, disk, mnt)

	key := newKey(t)
	enc := filepath.Join(mnt, "enc")
	require.NoError(t, os.Mkdir(enc, 0o700))
	id, err := EncryptDir(enc, key)
	require.NoError(t, err)
	assert.Equal(t, KeyIdentifier(key), id, "the identifier is the kernel's HKDF of the key")
	got, encrypted, err := PolicyOf(enc)
	require.NoError(t, err)
	assert.True(t, encrypted)
	assert.Equal(t, id, got)
	_, encrypted, err = PolicyOf(mnt)
	require.NoError(t, err)
	assert.False(t, encrypted)

	secret := []byte("the etcd data of a confidential cluster")
	require.NoError(t, os.MkdirAll(filepath.Join(enc, "etcd", "member"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(enc, "etcd", "member", "secret.db"), secret, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(enc, "secret.txt"), secret, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "plain.txt"), []byte("public"), 0o644))

	// Encrypting again with the same key is an unlock; another key is refused and not left behind.
	_, err = EncryptDir(enc, key)
	require.NoError(t, err)
	other := newKey(t)
	_, err = EncryptDir(enc, other)
	assert.ErrorIs(t, err, ErrWrongKey)
	present, err := KeyPresent(mnt, KeyIdentifier(other))
	require.NoError(t, err)
	assert.False(t, present, "the wrong key was removed again")
	present, err = KeyPresent(mnt, id)
	require.NoError(t, err)
	assert.True(t, present)

	// A non-empty plain directory cannot be encrypted.
	_, err = EncryptDir(mnt, other)
	assert.ErrorContains(t, err, "not empty")

	// The ciphertext is on the disk: the secret is nowhere in the image.
	require.NoError(t, unix.Unmount(mnt, 0))
	img, err := os.ReadFile(disk)
	require.NoError(t, err)
	assert.False(t, bytes.Contains(img, secret), "plaintext secret on the disk")
	assert.False(t, bytes.Contains(img, []byte("secret.txt")), "plaintext name on the disk")
	assert.True(t, bytes.Contains(img, []byte("public")), "unencrypted files stay plain (sanity check of the search)")

	// Remounted without the key: ciphertext names, no reads, no new files.
	mountDisk(t, disk, mnt)
	names := readNames(t, enc)
	assert.Len(t, names, 2)
	assert.NotContains(t, names, "secret.txt")
	assert.NotContains(t, names, "etcd")
	for _, n := range names {
		_, err := os.ReadFile(filepath.Join(enc, n))
		if err == nil || !errors.Is(err, syscall.EISDIR) {
			assert.ErrorIs(t, err, syscall.ENOKEY, n)
		}
	}
	err = os.WriteFile(filepath.Join(enc, "new"), []byte("x"), 0o600)
	assert.ErrorIs(t, err, syscall.ENOKEY)
	_, err = Unlock(enc, other)
	assert.ErrorIs(t, err, ErrWrongKey)

	// With the key, everything is back.
	_, err = Unlock(enc, key)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"etcd", "secret.txt"}, readNames(t, enc))
	b, err := os.ReadFile(filepath.Join(enc, "etcd", "member", "secret.db"))
	require.NoError(t, err)
	assert.Equal(t, secret, b)

	// RemoveKey locks it again (nothing is open).
	require.NoError(t, RemoveKey(mnt, id))
	present, err = KeyPresent(mnt, id)
	require.NoError(t, err)
	assert.False(t, present)
	assert.NotContains(t, readNames(t, enc), "secret.txt")
}

func readNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestKeyIdentifier(t *testing.T) {
	k := bytes.Repeat([]byte{0x42}, KeySize)
	assert.Equal(t, KeyIdentifier(k), KeyIdentifier(bytes.Clone(k)))
	assert.NotEqual(t, KeyIdentifier(k), KeyIdentifier(make([]byte, KeySize)))
}

func TestErrors(t *testing.T) {
	_, err := AddKey(t.TempDir(), make([]byte, 32))
	assert.ErrorContains(t, err, "must be 64 bytes")
	testenv.Need(t, "apt-get install e2fsprogs", "mkfs.ext4")
	dir := t.TempDir()
	require.NoError(t, Create(context.Background(), filepath.Join(dir, "d"), 1<<20))
	assert.Error(t, Create(context.Background(), filepath.Join(dir, "d"), 1<<20), "an existing disk is not overwritten")
}
