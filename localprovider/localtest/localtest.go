// Package localtest holds what the local provider's tests share: unique names and free prefixes, and
// polling for leftovers (which internal/remains finds). Whether a test can run here (root, the node image,
// tools) is internal/testenv's decision.
package localtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
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

// Ping sends an ICMP echo request to dst from inside a node's network namespace (do runs a function there,
// as network.Node.Do does) and waits up to 3 s for the reply.
func Ping(do func(func() error) error, dst netip.Addr) error {
	return do(func() error {
		conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer conn.Close()
		id := os.Getpid() & 0xffff
		req, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("ping")}}).Marshal(nil)
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 1500)
		for {
			n, peer, err := conn.ReadFrom(buf)
			if err != nil {
				return fmt.Errorf("no echo reply from %s: %w", dst, err)
			}
			msg, err := icmp.ParseMessage(1, buf[:n]) // 1: ICMP for IPv4
			if err != nil || msg.Type != ipv4.ICMPTypeEchoReply || peer.String() != dst.String() {
				continue
			}
			if echo, ok := msg.Body.(*icmp.Echo); ok && echo.ID == id {
				return nil
			}
		}
	})
}
