package remains

import (
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMounts(t *testing.T) {
	all := Mounts()
	require.NotEmpty(t, all, "a mount namespace has at least its root")
	assert.Contains(t, all, "/")
	under := MountsUnder("/")
	assert.Len(t, under, len(all))
	assert.Equal(t, all[0], under[len(under)-1], "deepest first: the root comes last")
	assert.Empty(t, MountsUnder(t.TempDir()))
}

// TestProcessesWith finds a child whose working directory is a temporary directory, and stops finding it
// once it has exited; this process itself is never listed.
func TestProcessesWith(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("sleep", "30")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	found := ProcessesWith(dir)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.Len(t, found, 1)
	assert.Contains(t, found[0], "(sleep)")
	assert.Empty(t, ProcessesWith(dir))

	wd, err := os.Getwd()
	require.NoError(t, err)
	for _, p := range ProcessesWith(wd) {
		assert.NotContains(t, p, "process "+itoa(os.Getpid())+" ")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestLoopsBackedBy(t *testing.T) {
	assert.Empty(t, LoopsBackedBy(t.TempDir()), "no loop device is backed by a new directory")
}
