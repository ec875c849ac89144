package buildinfo

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestGet(t *testing.T) {
	info := Get()
	assert.Equal(t, Version, info.Version)
	assert.Equal(t, runtime.Version(), info.GoVersion)
	assert.Equal(t, runtime.GOOS+"/"+runtime.GOARCH, info.Platform)
}

func TestLinkerSetCommitWins(t *testing.T) {
	old := Commit
	t.Cleanup(func() { Commit = old })
	Commit = "0123abc"
	assert.Equal(t, "0123abc", Get().Commit)
	assert.False(t, Get().Modified)
}
