// Package localtest holds what the local provider's tests share: unique names and free prefixes, and
// polling for leftovers (which internal/remains finds). Whether a test can run here (root, the node image,
// tools) is internal/testenv's decision.
package localtest

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"testing"
	"time"
)

// ClusterName returns a unique cluster name for a test: short, so that paths of Unix sockets stay short.
func ClusterName(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return "t" + hex.EncodeToString(b)
}

// BridgeCIDR returns a /26 from 10.211.0.0/16 chosen at random, so that concurrent tests (and clusters
// with the default 10.42.0.0/24) do not collide; callers retry on a conflict.
func BridgeCIDR(tb testing.TB) netip.Prefix {
	tb.Helper()
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 211, b[0], b[1] & 0xc0}), 26)
}

// Eventually polls cond until it returns nothing (then it returns nil) or timeout passes (then it returns
// the last findings).
func Eventually(timeout time.Duration, cond func() []string) []string {
	deadline := time.Now().Add(timeout)
	for {
		left := cond()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}
