package nodestate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/constellation-go/constellation/internal/statedisk"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestUUID(t *testing.T) {
	d := &Disk{Dir: t.TempDir()}
	id, err := d.UUID()
	require.NoError(t, err)
	assert.Regexp(t, uuidRe, id)
	again, err := d.UUID()
	require.NoError(t, err)
	assert.Equal(t, id, again, "the UUID is kept on the disk")
	other, err := (&Disk{Dir: t.TempDir()}).UUID()
	require.NoError(t, err)
	assert.NotEqual(t, id, other)

	require.NoError(t, os.WriteFile(filepath.Join(d.Dir, uuidFile), []byte("../../etc\n"), 0o644))
	_, err = d.UUID()
	require.Error(t, err, "a tampered UUID file is refused")
}

type recorder struct {
	encrypted map[string][]byte
	binds     [][2]string
	encErr    error
}

func (r *recorder) encrypt(dir string, key []byte) error {
	if r.encErr != nil {
		return r.encErr
	}
	if r.encrypted == nil {
		r.encrypted = map[string][]byte{}
	}
	if prev, ok := r.encrypted[dir]; ok && !bytes.Equal(prev, key) {
		return errors.New("wrong key")
	}
	r.encrypted[dir] = key
	return nil
}

func (r *recorder) bind(source, target string) error {
	r.binds = append(r.binds, [2]string{source, target})
	return nil
}

func TestUnlock(t *testing.T) {
	r := &recorder{}
	root := t.TempDir()
	d := &Disk{Dir: t.TempDir(), Encrypt: r.encrypt, Root: root, bind: r.bind}
	key := bytes.Repeat([]byte{1}, 64)
	require.NoError(t, d.Unlock(key))
	enc := filepath.Join(d.Dir, EncryptedDir)
	assert.Equal(t, map[string][]byte{enc: key}, r.encrypted)
	assert.ElementsMatch(t, [][2]string{
		{filepath.Join(enc, "kubernetes"), filepath.Join(root, "/etc/kubernetes")},
		{filepath.Join(enc, "kubelet"), filepath.Join(root, "/var/lib/kubelet")},
		{filepath.Join(enc, "etcd"), filepath.Join(root, "/var/lib/etcd")},
	}, r.binds)
	fi, err := os.Stat(enc)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	// Another key is refused; nothing is mounted then.
	r.binds = nil
	require.Error(t, d.Unlock(bytes.Repeat([]byte{2}, 64)))
	assert.Empty(t, r.binds)

	require.Error(t, (&Disk{Dir: t.TempDir()}).Unlock(key), "no encrypter")
	r.encErr = errors.New("ENOKEY")
	require.ErrorContains(t, d.Unlock(key), "ENOKEY")
}

// TestInitializedAndComponents: a disk unlocked once counts as initialized (a restarted node), and the
// components recorded on it come back.
func TestInitializedAndComponents(t *testing.T) {
	r := &recorder{}
	d := &Disk{Dir: t.TempDir(), Encrypt: r.encrypt, Root: t.TempDir(), bind: r.bind}
	assert.False(t, d.Initialized(), "a new disk")
	_, err := d.LoadComponents()
	assert.Error(t, err)
	require.NoError(t, d.Unlock(bytes.Repeat([]byte{1}, 64)))
	assert.True(t, d.Initialized())
	require.NoError(t, d.SaveComponents([]byte(`{"components":[]}`)))
	got, err := d.LoadComponents()
	require.NoError(t, err)
	assert.Equal(t, `{"components":[]}`, string(got))
	fi, err := os.Stat(filepath.Join(d.Dir, EncryptedDir, componentsFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// Set up, but the join or init did not complete yet.
	assert.False(t, d.Member())
	require.NoError(t, d.MarkMember())
	assert.True(t, d.Member())
	require.NoError(t, d.MarkMember(), "recording it again is harmless")
	assert.True(t, d.Member())
}

// TestWrappedKey: the wrapped key is kept outside the encrypted directory (readable on a locked disk),
// replaced by a newer one, and absent with constellation-managed keys.
func TestWrappedKey(t *testing.T) {
	d := &Disk{Dir: t.TempDir()}
	blob, err := d.WrappedKey()
	require.NoError(t, err)
	assert.Nil(t, blob, "constellation-managed: nothing kept")
	require.Error(t, d.SaveWrappedKey(nil))
	require.NoError(t, d.SaveWrappedKey([]byte("blob-1")))
	require.NoError(t, d.SaveWrappedKey([]byte("blob-2")))
	blob, err = d.WrappedKey()
	require.NoError(t, err)
	assert.Equal(t, "blob-2", string(blob))
	_, err = os.Stat(filepath.Join(d.Dir, wrappedKeyFile))
	require.NoError(t, err, "beside the encrypted directory, not in it")
}

// TestUnlockRealDisk uses a real ext4 state disk with fscrypt and real bind mounts: what Kubernetes writes
// to /etc/kubernetes ends up encrypted on the disk, and the disk only opens with the same key again.
func TestUnlockRealDisk(t *testing.T) {
	testenv.NeedRoot(t)
	dir := testenv.TempDir(t)
	img := filepath.Join(dir, "state.img")
	require.NoError(t, statedisk.Create(context.Background(), img, 64<<20))
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	root := filepath.Join(dir, "root")
	unmountAll := func() {
		for _, target := range []string{"/etc/kubernetes", "/var/lib/kubelet", "/var/lib/etcd"} {
			_ = unix.Unmount(filepath.Join(root, target), 0)
		}
		_ = unix.Unmount(mnt, 0)
	}
	t.Cleanup(unmountAll)
	_, err := statedisk.Mount(img, mnt)
	require.NoError(t, err)

	encrypt := func(dir string, key []byte) error {
		_, err := statedisk.EncryptDir(dir, key)
		return err
	}
	d := &Disk{Dir: mnt, Encrypt: encrypt, Root: root}
	key := bytes.Repeat([]byte{7}, statedisk.KeySize)
	id, err := d.UUID()
	require.NoError(t, err)
	require.NoError(t, d.Unlock(key))
	require.NoError(t, d.Unlock(key), "unlocking again is harmless")
	secret := []byte("-----BEGIN EC PRIVATE KEY-----")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "/etc/kubernetes/pki"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(root, "/etc/kubernetes/pki/ca.key"), secret, 0o600))
	got, err := os.ReadFile(filepath.Join(mnt, EncryptedDir, "kubernetes", "pki", "ca.key"))
	require.NoError(t, err)
	assert.Equal(t, secret, got, "the bind mount writes to the state disk")

	// A restarted node: the disk is mounted again without the key.
	unmountAll()
	_, err = statedisk.Mount(img, mnt)
	require.NoError(t, err)
	entries, err := os.ReadDir(filepath.Join(mnt, EncryptedDir))
	require.NoError(t, err)
	for _, e := range entries {
		assert.NotContains(t, []string{"kubernetes", "kubelet", "etcd"}, e.Name(), "names are encrypted without the key")
	}
	again := &Disk{Dir: mnt, Encrypt: encrypt, Root: root}
	sameID, err := again.UUID()
	require.NoError(t, err)
	assert.Equal(t, id, sameID, "the UUID survives a restart unencrypted")
	require.ErrorIs(t, again.Unlock(bytes.Repeat([]byte{8}, statedisk.KeySize)), statedisk.ErrWrongKey)
	require.NoError(t, again.Unlock(key))
	got, err = os.ReadFile(filepath.Join(root, "/etc/kubernetes/pki/ca.key"))
	require.NoError(t, err)
	assert.Equal(t, secret, got)
}
