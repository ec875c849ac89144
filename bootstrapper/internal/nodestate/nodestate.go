// Package nodestate puts the node's Kubernetes state on its encrypted state disk. The node runtime mounts
// the state disk (an ext4 file system with the encrypt feature) at a known directory; once the init or join
// flow has the node's disk key, Unlock encrypts (first boot) or unlocks (later boots) the directory
// "encrypted" on it with fscrypt and bind-mounts its subdirectories over /etc/kubernetes, /var/lib/kubelet
// and /var/lib/etcd, so that certificates, keys, etcd's data and the kubelet's credentials are only ever
// written to disk encrypted with a key that only an attested node can obtain.
//
// The disk's UUID, from which its key is derived (key ID = UUID), is kept unencrypted at the root of the
// disk: it is not secret, and it must be readable before the key is known. Inside the encrypted directory,
// the disk records the node's components (for a rejoin) and, once its init or join completed, that the node
// is a member: a disk that opens but lacks that record belongs to an init or join a power cut interrupted.
package nodestate

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/constellation-go/constellation/internal/versions/components"
	"golang.org/x/sys/unix"
)

// EncryptedDir is the encrypted directory on the state disk.
const EncryptedDir = "encrypted"

// uuidFile holds the disk's UUID at the root of the state disk.
const uuidFile = "disk-uuid"

// wrappedKeyFile holds, at the root of the state disk, the disk key wrapped by the user's KMS key
// (user-managed keys only). It must be readable while the disk is locked: when every control plane is down,
// the admin unwraps it with the KMS to recover the node. It is useless without the KMS.
const wrappedKeyFile = "wrapped-disk-key"

// memberFile, inside EncryptedDir, records that the node completed its init or join with this disk. A disk
// set up (unlocked, so Initialized) without it was cut off in the middle of one: the next boot redoes it on
// the same disk instead of rejoining a cluster the node never belonged to.
const memberFile = "member"

// componentsFile, inside EncryptedDir, lists the components the node installed: a restarted node that is
// recovered installs them again (its /var is gone).
const componentsFile = "components.json"

// DefaultMounts map directories below EncryptedDir to the node paths they are bind-mounted on.
var DefaultMounts = map[string]string{
	"kubernetes": "/etc/kubernetes",
	"kubelet":    "/var/lib/kubelet",
	"etcd":       "/var/lib/etcd",
}

// Encrypter protects a directory with a key: it sets an fscrypt policy on an empty directory, or unlocks one
// encrypted with the same key before, and fails for any other key (statedisk.EncryptDir).
type Encrypter func(dir string, key []byte) error

// Disk is the node's state disk.
type Disk struct {
	// Dir is the state disk's mount point.
	Dir string
	// Encrypt protects Dir/EncryptedDir.
	Encrypt Encrypter
	// Mounts maps directories below Dir/EncryptedDir to absolute node paths; nil means DefaultMounts.
	Mounts map[string]string
	// Root prefixes the mount targets (tests); "" on a node.
	Root string
	// bind replaces the bind mount (tests).
	bind func(source, target string) error
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// UUID returns the disk's UUID, creating it on first use.
func (d *Disk) UUID() (string, error) {
	path := filepath.Join(d.Dir, uuidFile)
	raw, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(raw))
		if !uuidRe.MatchString(id) {
			return "", fmt.Errorf("state disk UUID in %s is not a UUID: %q", path, id)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading the state disk UUID: %w", err)
	}
	id, err := newUUID()
	if err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("writing the state disk UUID: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("writing the state disk UUID: %w", err)
	}
	return id, nil
}

// Unlock encrypts or unlocks the state directory with key and mounts its parts in place. It is safe to call
// again with the same key (mounts already in place are kept).
func (d *Disk) Unlock(key []byte) error {
	if d.Encrypt == nil {
		return errors.New("state disk: no encrypter")
	}
	enc := filepath.Join(d.Dir, EncryptedDir)
	if err := os.Mkdir(enc, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("state disk: %w", err)
	}
	if err := d.Encrypt(enc, key); err != nil {
		return fmt.Errorf("state disk: encrypting %s: %w", enc, err)
	}
	mounts := d.Mounts
	if mounts == nil {
		mounts = DefaultMounts
	}
	bind := d.bind
	if bind == nil {
		bind = bindMount
	}
	for sub, target := range mounts {
		source := filepath.Join(enc, sub)
		target = filepath.Join(d.Root, target)
		if err := os.MkdirAll(source, 0o700); err != nil {
			return fmt.Errorf("state disk: %w", err)
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("state disk: %w", err)
		}
		if mounted, err := sameDir(source, target); err != nil {
			return fmt.Errorf("state disk: %w", err)
		} else if mounted {
			continue
		}
		if err := bind(source, target); err != nil {
			return fmt.Errorf("state disk: mounting %s on %s: %w", source, target, err)
		}
	}
	return nil
}

// Initialized tells whether the state disk was unlocked before (in an earlier boot): its encrypted
// directory has content. Such a node belongs to a cluster and must be recovered or rejoin, not initialised.
func (d *Disk) Initialized() bool {
	entries, err := os.ReadDir(filepath.Join(d.Dir, EncryptedDir))
	return err == nil && len(entries) > 0
}

// SaveComponents records the node's components on the unlocked state disk.
func (d *Disk) SaveComponents(data []byte) error {
	if err := writeDurably(filepath.Join(d.Dir, EncryptedDir, componentsFile), data); err != nil {
		return fmt.Errorf("state disk: recording the components: %w", err)
	}
	return nil
}

// MarkMember records, on the unlocked state disk, that the node has completed its init or join.
func (d *Disk) MarkMember() error {
	if err := writeDurably(filepath.Join(d.Dir, EncryptedDir, memberFile), []byte("member\n")); err != nil {
		return fmt.Errorf("state disk: recording that the node joined: %w", err)
	}
	return nil
}

// Member tells whether MarkMember was called for this disk, in this boot or an earlier one. The disk must be
// unlocked (a locked directory shows only encrypted names).
func (d *Disk) Member() bool {
	_, err := os.Stat(filepath.Join(d.Dir, EncryptedDir, memberFile))
	return err == nil
}

// writeDurably replaces path with data so that a power cut leaves either the old or the new file: the data
// is synced before the rename, the directory after it.
func writeDurably(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	return errors.Join(dir.Sync(), dir.Close())
}

// SaveWrappedKey keeps the disk key wrapped by the user's KMS key beside the disk (user-managed keys).
func (d *Disk) SaveWrappedKey(blob []byte) error {
	if len(blob) == 0 {
		return errors.New("state disk: no wrapped key to keep")
	}
	if err := writeDurably(filepath.Join(d.Dir, wrappedKeyFile), blob); err != nil {
		return fmt.Errorf("state disk: keeping the wrapped disk key: %w", err)
	}
	return nil
}

// WrappedKey returns what SaveWrappedKey kept; nil and no error if nothing was (constellation-managed keys).
func (d *Disk) WrappedKey() ([]byte, error) {
	blob, err := os.ReadFile(filepath.Join(d.Dir, wrappedKeyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state disk: reading the wrapped disk key: %w", err)
	}
	return blob, nil
}

// LoadComponents returns what SaveComponents recorded; the disk must be unlocked.
func (d *Disk) LoadComponents() ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(d.Dir, EncryptedDir, componentsFile))
	if err != nil {
		return nil, fmt.Errorf("state disk: reading the recorded components: %w", err)
	}
	return data, nil
}

func bindMount(source, target string) error {
	return unix.Mount(source, target, "", unix.MS_BIND, "")
}

// sameDir tells whether a and b are the same directory (b is already a bind mount of a).
func sameDir(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// Installer installs verified components.
type Installer interface {
	Install(ctx context.Context, comps []*components.Component) error
}

// Reinstall installs the components recorded on the unlocked disk (SaveComponents) again, as a restarted
// node must before its kubelet runs (its /var is gone). It returns how many it installed.
func Reinstall(ctx context.Context, disk interface{ LoadComponents() ([]byte, error) }, in Installer) (int, error) {
	data, err := disk.LoadComponents()
	if err != nil {
		return 0, err
	}
	comps, err := components.UnmarshalList(data)
	if err != nil {
		return 0, fmt.Errorf("the recorded components: %w", err)
	}
	if err := in.Install(ctx, comps); err != nil {
		return 0, fmt.Errorf("installing the recorded components: %w", err)
	}
	return len(comps), nil
}
