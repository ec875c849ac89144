// Package vtpmtest boots measured test nodes on real swtpm vTPMs: it extends PCRs as firmware would and
// records the matching event log, and computes the reference values such a boot must produce.
package vtpmtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm/swtpmtest"
)

// Event is one measurement of a test boot; its digest is SHA-256 of Data.
type Event struct {
	PCR  uint32
	Type eventlog.EventType
	Data string
}

// Boot is a typical boot: the firmware's boot-chain events, the kernel command line and two UKI sections.
var Boot = []Event{
	{4, eventlog.EvEFIAction, "Calling EFI Application from Boot Option"},
	{4, eventlog.EvSeparator, "\x00\x00\x00\x00"},
	{4, eventlog.EvEFIBootServicesApp, "uki.efi"},
	{9, eventlog.EvIPL, "console=ttyS0 root=/dev/vda2"},
	{11, eventlog.EvIPL, ".linux"},
	{11, eventlog.EvIPL, ".initrd"},
}

// WithEvent returns a copy of events where the event at index i is replaced.
func WithEvent(events []Event, i int, ev Event) []Event {
	out := append([]Event(nil), events...)
	out[i] = ev
	return out
}

// Node is a measured swtpm.
type Node struct {
	TPM transport.TPMCloser
	// Address is the TPM's address for tpm.Open.
	Address string
	// EventLog records the boot's extends.
	EventLog []byte
}

// NodeName is the name the platform CA certifies the vTPMs of NewNode and NewNodeWithCA for (a node's name
// is in its AK certificate; the JoinService gives a node a ticket for that name only).
const NodeName = "test-node"

// NewNode starts an swtpm that the test platform CA (PlatformCA) certifies for NodeName and measures events
// into it.
func NewNode(t testing.TB, events []Event) *Node {
	t.Helper()
	return newNode(t, NodeName, events, PlatformCA(t))
}

// NewNamedNode is NewNode with a vTPM certified for the node name.
func NewNamedNode(t testing.TB, name string, events []Event) *Node {
	t.Helper()
	return newNode(t, name, events, PlatformCA(t))
}

// NewNodeWithCA is NewNode with a vTPM certified by ca: a node of another platform.
func NewNodeWithCA(t testing.TB, events []Event, ca *manufacturer.CA) *Node {
	t.Helper()
	return newNode(t, NodeName, events, ca)
}

func newNode(t testing.TB, name string, events []Event, ca *manufacturer.CA) *Node {
	t.Helper()
	p, tp := certifiedTPM(t, ca, name)
	b := eventlog.NewBuilder()
	measured := make([]precompute.Event, len(events))
	for i, ev := range events {
		measured[i] = precompute.Event{PCR: ev.PCR, Type: ev.Type, Digest: sha256.Sum256([]byte(ev.Data)), Data: []byte(ev.Data)}
	}
	// The local provider's launcher measures real nodes the same way.
	if err := precompute.Measure(tp, b, measured...); err != nil {
		t.Fatalf("measuring test boot: %v", err)
	}
	return &Node{TPM: tp, Address: p.Address(), EventLog: b.Bytes()}
}

// certifiedTPM starts an swtpm and has ca certify it, before anything runs on it, as the local provider does.
func certifiedTPM(t testing.TB, ca *manufacturer.CA, name string, opts ...swtpm.Option) (*swtpm.Process, transport.TPMCloser) {
	t.Helper()
	p := swtpmtest.Start(t, opts...)
	tp, err := tpm.Open(p.Address())
	if err != nil {
		t.Fatalf("opening swtpm: %v", err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	if err := ca.Manufacture(tp, name); err != nil {
		t.Fatalf("certifying the test vTPM: %v", err)
	}
	return p, tp
}

// platformCA is the platform CA of every test node. Its key is fixed, so that a test binary trusts the
// nodes its child processes made (each makes its own CA object, of the same key).
var platformCA = sync.OnceValues(func() (*manufacturer.CA, error) {
	scalar := sha256.Sum256([]byte("vtpmtest platform CA key; for tests only"))
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), scalar[:])
	if err != nil {
		return nil, err
	}
	return manufacturer.NewCAWithKey("vtpmtest platform CA", key)
})

// PlatformCAForProcess returns the CA that certifies every NewNode's vTPM, outside a test function.
func PlatformCAForProcess() (*manufacturer.CA, error) { return platformCA() }

// PlatformCA returns the CA that certified every NewNode's vTPM.
func PlatformCA(t testing.TB) *manufacturer.CA {
	t.Helper()
	ca, err := platformCA()
	if err != nil {
		t.Fatalf("creating the test platform CA: %v", err)
	}
	return ca
}

// AKRoots returns the roots a validator needs to trust NewNode's attestation keys.
func AKRoots(t testing.TB) []*x509.Certificate {
	t.Helper()
	return []*x509.Certificate{PlatformCA(t).Certificate()}
}

// ReferenceValues returns what a node that measured events shows in the default enforced PCRs (PCR 15 as on
// a fresh node), computed from the events alone, as an admin's precomputation would.
func ReferenceValues(events []Event) measurements.M {
	pcrs := map[uint32][]byte{}
	for _, idx := range measurements.DefaultEnforced {
		pcrs[idx] = make([]byte, sha256.Size)
	}
	for _, ev := range events {
		digest := sha256.Sum256([]byte(ev.Data))
		pcrs[ev.PCR] = eventlog.ExtendSHA256(pcrs[ev.PCR], digest[:])
	}
	m := measurements.M{}
	for _, idx := range measurements.DefaultEnforced {
		m[idx] = measurements.Measurement{Expected: pcrs[idx]}
	}
	return m
}

// NewNodeFromLog starts an swtpm that the test platform CA certifies and brings its SHA-256 PCRs to what the
// real TCG event log raw records (started from the log's startup locality, every event's SHA-256 digest
// extended), so that raw is that node's genuine event log. It returns the node and the reference values of
// the default enforced PCRs for it, as replaying the log gives them (PCRs the log does not touch are zero).
func NewNodeFromLog(t testing.TB, raw []byte) (*Node, measurements.M) {
	t.Helper()
	log, err := eventlog.Parse(raw)
	if err != nil {
		t.Fatalf("parsing the event log: %v", err)
	}
	locality, _, err := log.StartupLocality()
	if err != nil {
		t.Fatalf("reading the log's startup locality: %v", err)
	}
	p, tp := certifiedTPM(t, PlatformCA(t), NodeName, swtpm.StartupLocality(locality))
	for _, ev := range log.Events[1:] { // Events[0] is the Spec ID header
		if ev.Type == eventlog.EvNoAction {
			continue
		}
		digest, ok := ev.Digests[eventlog.AlgSHA256]
		if !ok {
			t.Fatalf("event %d has no SHA-256 digest", ev.Index)
		}
		if err := tpm.Extend(tp, ev.PCR, digest); err != nil {
			t.Fatalf("extending event %d into PCR %d: %v", ev.Index, ev.PCR, err)
		}
	}
	replayed, err := log.Replay(eventlog.AlgSHA256)
	if err != nil {
		t.Fatalf("replaying the log: %v", err)
	}
	refs := measurements.M{}
	for _, idx := range measurements.DefaultEnforced {
		value, ok := replayed[idx]
		if !ok {
			value = make([]byte, sha256.Size)
		}
		refs[idx] = measurements.Measurement{Expected: value}
	}
	return &Node{TPM: tp, Address: p.Address(), EventLog: raw}, refs
}
