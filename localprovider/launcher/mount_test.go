package launcher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/testenv"
)

// needMount skips unless the test can set up loop devices and mount erofs: root, /dev/loop-control and
// erofs in the kernel. Root is a privilege, not a tool, so it is never required.
func needMount(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat(loopControl); err != nil {
		testenv.SkipOrFail(t, "no loop devices: "+err.Error())
	}
	fs, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(fs), "\terofs\n") {
		testenv.SkipOrFail(t, "the kernel has no erofs (modprobe erofs)")
	}
}

// loopsBackedBy lists the loop devices whose backing file lies in dir.
func loopsBackedBy(t *testing.T, dir string) []string {
	t.Helper()
	devs, err := filepath.Glob("/sys/block/loop*")
	require.NoError(t, err)
	var out []string
	for _, d := range devs {
		b, err := os.ReadFile(filepath.Join(d, "loop", "backing_file"))
		if err == nil && strings.HasPrefix(string(b), dir+"/") {
			out = append(out, "/dev/"+filepath.Base(d))
		}
	}
	return out
}

// requireNoLoops waits briefly for auto-clearing loop devices of dir to detach.
func requireNoLoops(t *testing.T, dir string) {
	t.Helper()
	require.Eventually(t, func() bool { return len(loopsBackedBy(t, dir)) == 0 }, 10*time.Second, 20*time.Millisecond,
		"loop devices left over: %v", loopsBackedBy(t, dir))
}

// mount mounts the boot's root at a new directory and unmounts it when the test ends, if still mounted.
func mount(t *testing.T, b *Boot) *Mounted {
	t.Helper()
	target := t.TempDir()
	m, err := Mount(context.Background(), b.Root(), target)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := syscall.Unmount(target, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("unmounting %s: %v", target, err)
		}
	})
	return m
}

func sysBlock(t *testing.T, dev, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), name))
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// assertRootFiles checks that the mounted root holds files.
func assertRootFiles(t *testing.T, target string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(target, name))
		if assert.NoError(t, err, name) {
			assert.True(t, string(want) == string(got), "%s differs", name)
		}
	}
}

func TestMount(t *testing.T) {
	testCases := map[string]struct {
		// change runs after the launch and before the mount.
		change func(t *testing.T, im testImage)
		slack  bool
	}{
		"plain":                       {},
		"slack after the file system": {slack: true},
		"path replaced after verification": {
			change: func(t *testing.T, im testImage) {
				other := newImage(t, imageSpec{content: 3})
				require.NoError(t, os.Rename(other.path(RootFile), im.path(RootFile)))
			},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			needMount(t)
			im := newImage(t, imageSpec{})
			fi, err := os.Stat(im.path(RootFile))
			require.NoError(t, err)
			if tc.slack {
				f, err := os.OpenFile(im.path(RootFile), os.O_WRONLY|os.O_APPEND, 0)
				require.NoError(t, err)
				_, err = f.Write(make([]byte, 3*4096))
				require.NoError(t, err)
				require.NoError(t, f.Close())
			}
			b := launch(t, config(t, im, newTPM(t)))
			if tc.change != nil {
				tc.change(t, im)
			}

			m := mount(t, b)
			assert.True(t, strings.HasPrefix(m.Device, "/dev/loop"), m.Device)
			assertRootFiles(t, m.Target, im.files)
			assert.Equal(t, "1", sysBlock(t, m.Device, "ro"), "read-only device")
			sectors, err := strconv.ParseInt(sysBlock(t, m.Device, "size"), 10, 64)
			require.NoError(t, err)
			assert.Equal(t, fi.Size(), sectors*512, "the device exposes exactly the verified bytes")
			assert.Equal(t, b.Root().DataSize, sectors*512)
			err = os.WriteFile(filepath.Join(m.Target, "new"), []byte("x"), 0o644)
			assert.ErrorIs(t, err, syscall.EROFS)

			require.NoError(t, m.Unmount())
			requireNoLoops(t, im.dir)
		})
	}
}

// TestMountRefused: Mount checks the root first and leaves no loop device behind on any failure.
func TestMountRefused(t *testing.T) {
	testCases := map[string]struct {
		prepare func(t *testing.T, b *Boot, im testImage) (target string)
		wantErr error
	}{
		"opened for writing after verification": {
			prepare: func(t *testing.T, b *Boot, im testImage) string {
				if !b.Root().Leased() {
					t.Skip("no read lease on this file system")
				}
				_, err := os.OpenFile(im.path(RootFile), os.O_WRONLY|syscall.O_NONBLOCK, 0)
				require.ErrorIs(t, err, syscall.EWOULDBLOCK)
				return t.TempDir()
			},
			wantErr: ErrRootChanged,
		},
		"modified after verification": {
			prepare: func(t *testing.T, b *Boot, im testImage) string {
				releaseLease(t, b.Root())
				flipByte(t, im.path(RootFile), 8*4096)
				return t.TempDir()
			},
			wantErr: ErrRootChanged,
		},
		"closed": {
			prepare: func(t *testing.T, b *Boot, _ testImage) string {
				require.NoError(t, b.Close())
				return t.TempDir()
			},
		},
		"no mount point": {
			prepare: func(t *testing.T, _ *Boot, im testImage) string { return filepath.Join(im.dir, "missing") },
			wantErr: syscall.ENOENT,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			needMount(t)
			im := newImage(t, imageSpec{})
			b := launch(t, config(t, im, newTPM(t)))
			target := tc.prepare(t, b, im)
			m, err := Mount(context.Background(), b.Root(), target)
			require.Error(t, err)
			assert.Nil(t, m)
			if tc.wantErr != nil {
				assert.ErrorIs(t, err, tc.wantErr)
			}
			requireNoLoops(t, im.dir)
		})
	}
}

// TestMountTwice: a root can be mounted more than once (e.g. once per mount namespace), each on its own loop
// device.
func TestMountTwice(t *testing.T) {
	needMount(t)
	im := newImage(t, imageSpec{})
	b := launch(t, config(t, im, newTPM(t)))
	m1 := mount(t, b)
	m2 := mount(t, b)
	assert.NotEqual(t, m1.Device, m2.Device)
	assertRootFiles(t, m2.Target, im.files)
	require.NoError(t, b.Close(), "the mounts keep the file")
	assertRootFiles(t, m1.Target, im.files)
	require.NoError(t, m1.Unmount())
	require.NoError(t, m2.Unmount())
	requireNoLoops(t, im.dir)
}
