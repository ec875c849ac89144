package main

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunReapsOnSIGCHLDAndStopsOnTERM(t *testing.T) {
	for _, stop := range []os.Signal{syscall.SIGTERM, syscall.SIGINT} {
		sigs := make(chan os.Signal, 4)
		reaps := 0
		sigs <- syscall.SIGCHLD
		sigs <- syscall.SIGCHLD
		sigs <- stop
		var log bytes.Buffer
		code := run(sigs, func() int { reaps++; return 0 }, &log)
		assert.Equal(t, 0, code)
		assert.Equal(t, 2, reaps, "one reap per SIGCHLD")
		assert.Contains(t, log.String(), "Shutting down, got signal")
	}
}

// TestReapCollectsZombies starts children that exit without being waited for and checks that reap collects
// them (they are zombies until then).
func TestReapCollectsZombies(t *testing.T) {
	var pids []int
	for range 3 {
		pid, err := syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{})
		if err != nil {
			t.Skipf("cannot start /bin/true: %v", err)
		}
		pids = append(pids, pid)
	}
	collected := 0
	require.Eventually(t, func() bool {
		collected += reap()
		return collected >= len(pids)
	}, 10*time.Second, 10*time.Millisecond)
	for _, pid := range pids {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		assert.True(t, os.IsNotExist(err), "pid %d was reaped", pid)
	}
	assert.Equal(t, 0, reap(), "nothing left to reap")
}
