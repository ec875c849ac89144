package nodelog

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestBuffer(t *testing.T) {
	b := NewBuffer(32)
	_, _ = b.Write([]byte("line one\n"))
	assert.Equal(t, "line one\n", string(b.Bytes()))
	_, _ = b.Write([]byte("line two\nline three\nline four\n"))
	got := string(b.Bytes())
	assert.LessOrEqual(t, len(got), 32)
	assert.True(t, strings.HasSuffix(got, "line four\n"))
	assert.False(t, strings.HasPrefix(got, "ine"), "the buffer starts at a line: %q", got)

	// A single line longer than the buffer is cut.
	_, _ = b.Write(bytes.Repeat([]byte("x"), 100))
	assert.Len(t, b.Bytes(), 32)
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubelet.log")
	require.NoError(t, os.WriteFile(path, []byte("first\nsecond\nthird\n"), 0o644))
	assert.Equal(t, "first\nsecond\nthird\n", string(Tail(path, 100)))
	assert.Equal(t, "third\n", string(Tail(path, 8)), "starts at a line")
	assert.Nil(t, Tail(filepath.Join(t.TempDir(), "missing"), 10))
}

func TestLineLogger(t *testing.T) {
	var out bytes.Buffer
	l := &LineLogger{Log: slog.New(slog.NewTextHandler(&out, nil)), Msg: "kubeadm"}
	_, _ = l.Write([]byte("[init] Using Kubernetes version\n[preflight] Run"))
	_, _ = l.Write([]byte("ning checks\r\n\n   \nlast"))
	l.Flush()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3)
	assert.Contains(t, lines[0], `line="[init] Using Kubernetes version"`)
	assert.Contains(t, lines[1], `line="[preflight] Running checks"`)
	assert.Contains(t, lines[2], "line=last")
}
