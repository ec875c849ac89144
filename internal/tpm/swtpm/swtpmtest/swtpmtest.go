// Package swtpmtest starts real swtpm vTPMs for tests.
package swtpmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/constellation-go/constellation/internal/testenv"

	"github.com/constellation-go/constellation/internal/tpm/swtpm"
)

// Start runs an swtpm for the duration of the test. Without swtpm installed the test skips with the reason,
// or fails where testenv is strict.
func Start(t testing.TB, opts ...swtpm.Option) *swtpm.Process {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; Bazel's test directories are longer, so use /tmp.
	dir, err := os.MkdirTemp("", "swtpm-")
	if err != nil {
		t.Fatalf("creating swtpm directory: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p, err := swtpm.Start(context.Background(), dir, opts...)
	if errors.Is(err, swtpm.ErrNotInstalled) {
		testenv.SkipOrFail(t, fmt.Sprintf("%v (apt-get install swtpm swtpm-tools)", err))
	}
	if err != nil {
		t.Fatalf("starting swtpm: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stopping swtpm: %v", err)
		}
	})
	return p
}
