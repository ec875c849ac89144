package packages

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func sum(data string) string {
	s := sha256.Sum256([]byte(data))
	return hex.EncodeToString(s[:])
}

// debDir writes fake .deb files for the entries and returns the lock with their hashes.
func debDir(t *testing.T, dir string, entries ...Entry) Lock {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	var l Lock
	for _, e := range entries {
		content := "deb " + e.Name + " " + e.Version
		require.NoError(t, os.WriteFile(filepath.Join(dir, e.DebFileName()), []byte(content), 0o644))
		e.SHA256 = sum(content)
		l = append(l, e)
	}
	l.sort()
	return l
}

var (
	libc  = Entry{Scope: ScopeImage, Name: "libc6", Version: "2.36-9+deb12u14", Arch: "amd64"}
	libcI = Entry{Scope: ScopeInitrd, Name: "libc6", Version: "2.36-9+deb12u14", Arch: "amd64"}
	bsd   = Entry{Scope: ScopeImage, Name: "bsdutils", Version: "1:2.38.1-5+deb12u3", Arch: "amd64"}
	tz    = Entry{Scope: ScopeTools, Name: "tzdata", Version: "2026c-0+deb13u1", Arch: "all"}
)

func TestParseLock(t *testing.T) {
	good := "# header\n\ntools tzdata 2026c-0+deb13u1 all " + sum("a") + "\nimage bsdutils 1:2.38.1-5+deb12u3 amd64 " + sum("b") + "\n"
	testCases := map[string]struct {
		in      string
		wantErr string
		want    []string
	}{
		"sorted by scope and name": {in: good, want: []string{"image bsdutils", "tools tzdata"}},
		"old three-field format":   {in: "image adduser 3.134\n", wantErr: "want \"<scope> <name> <version> <arch> <sha256>\""},
		"unknown scope":            {in: "host adduser 3.134 all " + sum("a") + "\n", wantErr: "unknown scope"},
		"path in name":             {in: "image ../x 1 all " + sum("a") + "\n", wantErr: "invalid package name"},
		"upper-case hash":          {in: "image x 1 all " + strings.ToUpper(sum("a")) + "\n", wantErr: "lower-case"},
		"short hash":               {in: "image x 1 all abcd\n", wantErr: "64 lower-case hex"},
		"duplicate":                {in: "image x 1 all " + sum("a") + "\nimage x 2 all " + sum("b") + "\n", wantErr: "already listed on line 1"},
		"same name in two scopes":  {in: "image x 1 all " + sum("a") + "\ninitrd x 1 all " + sum("a") + "\n", want: []string{"image x", "initrd x"}},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			l, err := ParseLock(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				require.ErrorIs(t, err, ErrMalformed)
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			var keys []string
			for _, e := range l {
				keys = append(keys, e.key())
			}
			assert.Equal(t, tc.want, keys)
		})
	}
}

func TestLockRoundTrip(t *testing.T) {
	l := debDir(t, t.TempDir(), libc, bsd, tz)
	var b bytes.Buffer
	require.NoError(t, l.Write(&b, "a header"))
	assert.True(t, strings.HasPrefix(b.String(), "# a header\n"))
	back, err := ParseLock(&b)
	require.NoError(t, err)
	assert.Equal(t, l, back)
	assert.Equal(t, "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb", bsd.DebFileName())
}

func TestFromManifestAndStatus(t *testing.T) {
	inst, err := FromManifest([]byte(`{"packages":[{"type":"deb","name":"libc6","version":"2.36","architecture":"amd64","size":1}]}`))
	require.NoError(t, err)
	assert.Equal(t, []Installed{{Name: "libc6", Version: "2.36", Arch: "amd64"}}, inst)
	_, err = FromManifest([]byte(`{"packages":[]}`))
	assert.ErrorContains(t, err, "no packages")
	_, err = FromManifest([]byte(`{"packages":[{"type":"rpm","name":"x"}]}`))
	assert.ErrorContains(t, err, `"rpm"`)

	status := "Package: tzdata\nStatus: install ok installed\nVersion: 2026c\nArchitecture: all\nDescription: x\n more\n\n" +
		"Package: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n\n"
	inst, err = FromDpkgStatus([]byte(status))
	require.NoError(t, err)
	assert.Equal(t, []Installed{{Name: "tzdata", Version: "2026c", Arch: "all"}}, inst)
	_, err = FromDpkgStatus([]byte("Package: gone\nStatus: deinstall ok config-files\n"))
	assert.Error(t, err)
}

func TestRecord(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	want := debDir(t, dir1, libc)
	want = append(want, debDir(t, dir2, bsd)...)
	want.sort()
	l, files, err := Record(ScopeImage, []Installed{{"libc6", libc.Version, "amd64"}, {"bsdutils", bsd.Version, "amd64"}}, []string{dir1, dir2})
	require.NoError(t, err)
	assert.Equal(t, want, l)
	assert.Equal(t, filepath.Join(dir2, bsd.DebFileName()), files["image bsdutils"])

	_, _, err = Record(ScopeImage, []Installed{{"missing", "1", "amd64"}}, []string{dir1})
	require.ErrorIs(t, err, ErrMissingDeb)
	assert.ErrorContains(t, err, "missing_1_amd64.deb")
}

func TestCheck(t *testing.T) {
	pinned := debDir(t, t.TempDir(), libc, bsd, tz)
	newer := func(e Entry, v string) Entry { e.Version, e.SHA256 = v, sum(v); return e }
	find := func(l Lock, name, scope string) Entry {
		for _, e := range l {
			if e.Name == name && e.Scope == scope {
				return e
			}
		}
		t.Fatalf("no %s", name)
		return Entry{}
	}
	testCases := map[string]struct {
		got          Lock
		noticeHas    []string
		measured     bool
		otherFile    bool
		wantNoChange bool
	}{
		"identical": {got: pinned, wantNoChange: true},
		"image package moved": {
			got:       Lock{newer(find(pinned, "libc6", ScopeImage), "2.36-9+deb12u15"), find(pinned, "bsdutils", ScopeImage), find(pinned, "tzdata", ScopeTools)},
			noticeHas: []string{"libc6", "2.36-9+deb12u14 amd64", "2.36-9+deb12u15 amd64", "1 of them are in the image"},
			measured:  true,
		},
		"only tools moved": {
			got:       Lock{find(pinned, "libc6", ScopeImage), find(pinned, "bsdutils", ScopeImage), newer(find(pinned, "tzdata", ScopeTools), "2026f-0+deb13u1")},
			noticeHas: []string{"tzdata", "Only the tools tree differs"},
		},
		"added and removed": {
			got:       Lock{find(pinned, "libc6", ScopeImage), find(pinned, "tzdata", ScopeTools), {Scope: ScopeImage, Name: "new", Version: "1", Arch: "all", SHA256: sum("n")}},
			noticeHas: []string{"(not in the lock)", "(not installed)", "bsdutils", "new"},
			measured:  true,
		},
		"same version, other file": {
			got: Lock{func() Entry {
				e := find(pinned, "libc6", ScopeImage)
				e.SHA256 = sum("evil")
				return e
			}(), find(pinned, "bsdutils", ScopeImage), find(pinned, "tzdata", ScopeTools)},
			noticeHas: []string{"SAME VERSION, OTHER FILE", "Check the mirror"},
			measured:  true,
			otherFile: true,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			o := CheckOptions{LockName: "image/mkosi/packages.lock", Recorded: "/cache/img/packages.lock"}
			notice, err := Check(pinned, tc.got, o)
			require.NoError(t, err)
			if tc.wantNoChange {
				assert.Empty(t, notice)
				o.Locked = true
				_, err := Check(pinned, tc.got, o)
				assert.NoError(t, err)
				return
			}
			assert.Contains(t, notice, "NOTICE: Debian's archive has moved since image/mkosi/packages.lock")
			assert.Contains(t, notice, "/cache/img/packages.lock")
			assert.Contains(t, notice, "--update-lock")
			for _, s := range tc.noticeHas {
				assert.Contains(t, notice, s)
			}
			assert.Equal(t, tc.measured, strings.Contains(notice, "measurements (PCRs) differ"))

			o.Locked = true
			notice, err = Check(pinned, tc.got, o)
			assert.Empty(t, notice)
			require.ErrorIs(t, err, ErrDrift)
			assert.ErrorContains(t, err, "--bundle")
			for _, s := range tc.noticeHas {
				if !strings.HasPrefix(s, "Only") && !strings.HasPrefix(s, "1 of them") {
					assert.ErrorContains(t, err, s)
				}
			}
		})
	}
}

func TestBundleRoundTrip(t *testing.T) {
	for _, format := range []string{"dir", "tar"} {
		t.Run(format, func(t *testing.T) {
			cache := t.TempDir()
			tools := t.TempDir()
			l := debDir(t, cache, libc, bsd)
			initrd := libcI
			initrd.SHA256 = l[1].SHA256 // the initrd uses the image's libc6 file
			l = append(l, initrd)
			l = append(l, debDir(t, tools, tz)...)
			l.sort()

			out := filepath.Join(t.TempDir(), "bundle")
			if format == "tar" {
				out += ".tar"
			}
			require.NoError(t, SaveBundle(l, []string{cache, tools}, out))
			got, debs, err := OpenBundle(out, t.TempDir())
			require.NoError(t, err)
			assert.Equal(t, l, got)
			entries, err := os.ReadDir(debs)
			require.NoError(t, err)
			assert.Len(t, entries, 3, "one file per distinct .deb")

			if format == "tar" {
				// Saving again gives the same bytes: a bundle can be published with a checksum.
				again := filepath.Join(t.TempDir(), "again.tar")
				require.NoError(t, SaveBundle(l, []string{cache, tools}, again))
				a, _ := os.ReadFile(out)
				b, _ := os.ReadFile(again)
				assert.Equal(t, a, b)
			}
		})
	}
}

func TestSaveBundleRefusesChangedCache(t *testing.T) {
	cache := t.TempDir()
	l := debDir(t, cache, libc)
	require.NoError(t, os.WriteFile(filepath.Join(cache, libc.DebFileName()), []byte("changed"), 0o644))
	err := SaveBundle(l, []string{cache}, filepath.Join(t.TempDir(), "b"))
	require.ErrorIs(t, err, ErrBundle)
	assert.ErrorContains(t, err, "the lock says")

	err = SaveBundle(l, []string{t.TempDir()}, filepath.Join(t.TempDir(), "b"))
	require.ErrorIs(t, err, ErrMissingDeb)
	assert.ErrorContains(t, err, "--no-cache")
}

func TestOpenBundleRefuses(t *testing.T) {
	testCases := map[string]struct {
		tamper  func(t *testing.T, dir string)
		wantErr string
	}{
		"changed package": {
			tamper:  func(t *testing.T, dir string) { write(t, filepath.Join(dir, BundleDebs, libc.DebFileName()), "evil") },
			wantErr: "its lock says",
		},
		"missing package": {
			tamper: func(t *testing.T, dir string) {
				require.NoError(t, os.Remove(filepath.Join(dir, BundleDebs, bsd.DebFileName())))
			},
			wantErr: "missing: " + bsd.DebFileName(),
		},
		"unlisted package": {
			tamper:  func(t *testing.T, dir string) { write(t, filepath.Join(dir, BundleDebs, "x_1_all.deb"), "x") },
			wantErr: "does not list: x_1_all.deb",
		},
		"no lock": {
			tamper:  func(t *testing.T, dir string) { require.NoError(t, os.Remove(filepath.Join(dir, BundleLock))) },
			wantErr: "no such file",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			cache := t.TempDir()
			l := debDir(t, cache, libc, bsd)
			out := filepath.Join(t.TempDir(), "bundle")
			require.NoError(t, SaveBundle(l, []string{cache}, out))
			tc.tamper(t, out)
			_, _, err := OpenBundle(out, t.TempDir())
			require.ErrorIs(t, err, ErrBundle)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) { // a hard link: replace, never write through
		require.NoError(t, err)
	}
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

func TestOpenBundleTarRefusesOtherEntries(t *testing.T) {
	lock := "image x 1 all " + sum("x") + "\n"
	testCases := map[string]struct {
		entries []*tar.Header
		wantErr string
	}{
		"path traversal": {entries: []*tar.Header{{Name: "debs/../../evil.deb", Typeflag: tar.TypeReg}}, wantErr: "unexpected entry"},
		"symlink":        {entries: []*tar.Header{{Name: "debs/x_1_all.deb", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}}, wantErr: "not a regular file"},
		"other file":     {entries: []*tar.Header{{Name: "run.sh", Typeflag: tar.TypeReg}}, wantErr: "unexpected entry"},
		"nested":         {entries: []*tar.Header{{Name: "debs/a/x.deb", Typeflag: tar.TypeReg}}, wantErr: "unexpected entry"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "b.tar")
			f, err := os.Create(path)
			require.NoError(t, err)
			tw := tar.NewWriter(f)
			require.NoError(t, tw.WriteHeader(&tar.Header{Name: BundleLock, Typeflag: tar.TypeReg, Size: int64(len(lock)), Mode: 0o644}))
			_, err = io.WriteString(tw, lock)
			require.NoError(t, err)
			for _, h := range tc.entries {
				h.Mode = 0o644
				require.NoError(t, tw.WriteHeader(h))
			}
			require.NoError(t, tw.Close())
			require.NoError(t, f.Close())
			_, _, err = OpenBundle(path, t.TempDir())
			require.ErrorIs(t, err, ErrBundle)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestWriteRepo(t *testing.T) {
	debs := t.TempDir()
	l := debDir(t, debs, libc, bsd)
	l = append(l, libcI)
	l[len(l)-1].SHA256 = l[1].SHA256
	l.sort()
	control := func(deb string) ([]byte, error) {
		name := strings.SplitN(filepath.Base(deb), "_", 2)[0]
		return []byte("Package: " + name + "\nDescription: d\n more\n"), nil
	}
	dir := t.TempDir()
	require.NoError(t, WriteRepo(l, debs, dir, "bookworm", control))

	pkgs, err := os.ReadFile(filepath.Join(dir, "dists/bookworm/main/binary-amd64/Packages"))
	require.NoError(t, err)
	assert.Equal(t, 2, strings.Count(string(pkgs), "Package: "), "one stanza per file")
	assert.Contains(t, string(pkgs), "Package: libc6\nDescription: d\n more\nFilename: pool/"+libc.DebFileName()+"\nSize: ")
	clash := append(Lock{}, l...)
	clash = append(clash, Entry{Scope: ScopeTools, Name: "bsdutils", Version: "2:2.38.1-5+deb12u3", Arch: "amd64", SHA256: sum("x")})
	require.NoError(t, os.WriteFile(filepath.Join(debs, clash[len(clash)-1].DebFileName()), []byte("x"), 0o644))
	assert.ErrorContains(t, WriteRepo(clash, debs, t.TempDir(), "bookworm", control), "two packages of the repository would be pool/bsdutils_2.38.1-5+deb12u3_amd64.deb")
	assert.Contains(t, string(pkgs), "SHA256: "+l[1].SHA256)

	gz, err := os.ReadFile(filepath.Join(dir, "dists/bookworm/main/binary-amd64/Packages.gz"))
	require.NoError(t, err)
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	require.NoError(t, err)
	unz, err := io.ReadAll(zr)
	require.NoError(t, err)
	assert.Equal(t, pkgs, unz)

	rel, err := os.ReadFile(filepath.Join(dir, "dists/bookworm/Release"))
	require.NoError(t, err)
	assert.Contains(t, string(rel), "Suite: bookworm\nCodename: bookworm\n")
	assert.Contains(t, string(rel), fmt.Sprintf(" %s %d main/binary-amd64/Packages\n", sum(string(pkgs)), len(pkgs)))
	// The pool has Debian's names, without the epoch: no ":" or "%" in a URL.
	assert.Contains(t, string(pkgs), "Filename: pool/bsdutils_2.38.1-5+deb12u3_amd64.deb\n")
	_, err = os.Stat(filepath.Join(dir, "pool", "bsdutils_2.38.1-5+deb12u3_amd64.deb"))
	assert.NoError(t, err)

	failing := func(string) ([]byte, error) { return nil, errors.New("broken deb") }
	assert.ErrorContains(t, WriteRepo(l, debs, t.TempDir(), "bookworm", failing), "broken deb")
}

// TestDpkgDebControl builds a real package with dpkg-deb and reads it back.
func TestDpkgDebControl(t *testing.T) {
	testenv.Need(t, "apt-get install dpkg", "dpkg-deb")
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "pkg/DEBIAN"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "pkg/DEBIAN/control"),
		[]byte("Package: hello\nVersion: 1:1.0-1\nArchitecture: all\nMaintainer: m <m@example.org>\nDescription: a test\n second line\n"), 0o644))
	deb := filepath.Join(root, "hello.deb")
	out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", filepath.Join(root, "pkg"), deb).CombinedOutput()
	require.NoError(t, err, string(out))
	fields, err := DpkgDebControl(deb)
	require.NoError(t, err)
	assert.Contains(t, string(fields), "Package: hello\nVersion: 1:1.0-1\n")
	assert.Contains(t, string(fields), "Description: a test\n second line\n")

	_, err = DpkgDebControl(filepath.Join(root, "pkg/DEBIAN/control"))
	assert.ErrorContains(t, err, "dpkg-deb --field")
}

func TestServeRepo(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Release"), []byte("hello"), 0o644))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeRepo(ctx, dir, ln) }()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + ln.Addr().String() + "/Release")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "hello", string(body))
	cancel()
	assert.NoError(t, <-done)
}

// FuzzParseLock: any input either parses into entries that survive a round trip or is refused; no panic.
func FuzzParseLock(f *testing.F) {
	f.Add("image libc6 2.36-9+deb12u14 amd64 " + sum("a") + "\n")
	f.Add("# c\ntools tzdata 2026c all " + sum("b") + "\nimage x 1 all " + sum("c"))
	f.Add("image ../x 1 all " + sum("a"))
	f.Fuzz(func(t *testing.T, in string) {
		l, err := ParseLock(strings.NewReader(in))
		if err != nil {
			return
		}
		var b bytes.Buffer
		require.NoError(t, l.Write(&b))
		back, err := ParseLock(&b)
		require.NoError(t, err)
		require.Equal(t, l, back)
		for _, e := range l {
			require.NotContains(t, e.DebFileName(), "/", "a lock entry names a file outside the bundle")
		}
	})
}
