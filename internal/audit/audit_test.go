package audit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeLog appends n entries to a new log and returns its path.
func writeLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit", "joinservice.log")
	l, err := Open(path)
	require.NoError(t, err)
	for i := range n {
		result := "ok"
		if i%3 == 2 {
			result = "refused"
		}
		require.NoError(t, l.Append(Entry{Kind: KindJoin, Node: fmt.Sprintf("worker-%d", i), Result: result}))
	}
	require.NoError(t, l.Close())
	return path
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return strings.SplitAfter(strings.TrimSuffix(string(data), "\n"), "\n")
}

func TestVerify(t *testing.T) {
	path := writeLog(t, 6)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	orig := lines(t, path)
	require.Len(t, orig, 6)
	sum, err := Verify(strings.NewReader(strings.Join(orig, "")), nil)
	require.NoError(t, err)
	assert.Equal(t, 6, sum.Entries)
	assert.Equal(t, map[string]int{"ok": 4, "refused": 2}, sum.Results)
	anchor := &Anchor{Seq: sum.Last.Seq, Hash: sum.Last.Hash}
	mid := &Anchor{Seq: 3, Hash: ""}
	{
		s, err := Verify(strings.NewReader(strings.Join(orig[:3], "")), nil)
		require.NoError(t, err)
		mid.Hash = s.Last.Hash
	}

	testCases := map[string]struct {
		log     []string
		anchor  *Anchor
		wantErr string
	}{
		"the whole log, anchored at its end": {log: orig, anchor: anchor},
		"grown since the anchor":             {log: orig, anchor: mid},
		"an entry altered": {
			log: append(append(clone(orig[:2]), strings.Replace(orig[2], `"result":"refused"`, `"result":"ok"`, 1)), orig[3:]...), wantErr: "entry 3 (line 3) was altered",
		},
		"an entry deleted":    {log: append(clone(orig[:2]), orig[3:]...), wantErr: "entry 4 (line 3) does not follow entry 2"},
		"two entries swapped": {log: append(append(clone(orig[:2]), orig[3], orig[2]), orig[4:]...), wantErr: "does not follow"},
		"the tail cut off":    {log: orig[:4], anchor: anchor, wantErr: "the log was cut short"},
		"replaced by a new log": {
			log: lines(t, writeLog(t, 6)), anchor: anchor, wantErr: "the log was replaced",
		},
		"not an entry": {log: append(clone(orig[:1]), "garbage\n"), wantErr: "line 2 is not an entry"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := Verify(strings.NewReader(strings.Join(tc.log, "")), tc.anchor)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrBroken)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func clone(s []string) []string { return append([]string(nil), s...) }

// A reopened log continues the chain; a broken one is still appended to, and says where it breaks.
func TestOpenContinues(t *testing.T) {
	path := writeLog(t, 3)
	l, err := Open(path)
	require.NoError(t, err)
	require.NoError(t, l.Append(Entry{Kind: KindRejoin, Node: "worker-0", Result: "ok"}))
	require.NoError(t, l.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	sum, err := Verify(bytes.NewReader(data), nil)
	require.NoError(t, err)
	assert.Equal(t, 4, sum.Entries)
	assert.Equal(t, KindRejoin, sum.Last.Kind)

	orig := lines(t, path)
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(append(clone(orig[:1]), orig[2:]...), "")), 0o600))
	l, err = Open(path)
	require.ErrorIs(t, err, ErrBroken)
	require.NotNil(t, l, "decisions are still recorded")
	require.NoError(t, l.Append(Entry{Kind: KindReattestation, Node: "cp-0", Result: "ok"}))
	require.NoError(t, l.Close())
}

// A log replaced under its path (deleted, or rewritten by an editor) is followed: new entries land in the
// file a verifier reads, and the replacement shows as a break.
func TestReplacedFileIsFollowed(t *testing.T) {
	path := writeLog(t, 3)
	l, err := Open(path)
	require.NoError(t, err)
	defer l.Close()
	orig := lines(t, path)
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(orig[0]+orig[2]+"\n"), 0o600)) // entry 2 deleted, as sed -i would
	require.NoError(t, os.Rename(tmp, path))
	require.NoError(t, l.Append(Entry{Kind: KindJoin, Node: "worker-9", Result: "ok"}))
	got := lines(t, path)
	require.Len(t, got, 3)
	assert.Contains(t, got[2], "worker-9")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	_, err = Verify(bytes.NewReader(data), nil)
	require.ErrorIs(t, err, ErrBroken)
}

// A long detail is cut to maxDetail; the entry still verifies.
func TestLongDetail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	l, err := Open(path)
	require.NoError(t, err)
	require.NoError(t, l.Append(Entry{Kind: KindHandshake, Result: "refused", Detail: strings.Repeat("PCR 9 differs; ", 1000)}))
	require.NoError(t, l.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	sum, err := Verify(bytes.NewReader(data), nil)
	require.NoError(t, err)
	assert.Len(t, sum.Last.Detail, maxDetail)
	assert.True(t, strings.HasSuffix(sum.Last.Detail, "..."))
}

func FuzzVerify(f *testing.F) {
	path := filepath.Join(f.TempDir(), "a.log")
	l, err := Open(path)
	require.NoError(f, err)
	require.NoError(f, l.Append(Entry{Kind: KindJoin, Node: "w", Result: "ok"}))
	require.NoError(f, l.Close())
	data, err := os.ReadFile(path)
	require.NoError(f, err)
	f.Add(data)
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, _ = Verify(bytes.NewReader(in), &Anchor{Seq: 1, Hash: "x"})
	})
}
