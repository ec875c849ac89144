package reattest

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/audit"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/verify/verifyproto"
	"github.com/constellation-go/constellation/verify/verifytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func node(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.42.0.9"}}}}
}

// bootValidator accepts nodes that booted vtpmtest.Boot, as the cluster's JoinService does.
func bootValidator(t *testing.T) *vtpm.Validator {
	t.Helper()
	validator, err := vtpm.NewValidator(variant.QEMUVTPM, vtpm.ValidatorConfig{
		Measurements: vtpmtest.ReferenceValues(vtpmtest.Boot).WithFreshNode(), AKRoots: vtpmtest.AKRoots(t),
	})
	require.NoError(t, err)
	return validator
}

func condition(t *testing.T, client *fake.Clientset, name string) corev1.NodeCondition {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	require.NoError(t, err)
	c := findCondition(n)
	require.NotNil(t, c, "%s has no %s condition", name, ConditionType)
	return *c
}

func getNode(t *testing.T, client *fake.Clientset, name string) *corev1.Node {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	require.NoError(t, err)
	return n
}

func warnings(t *testing.T, client *fake.Clientset) []corev1.Event {
	t.Helper()
	evs, err := client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	var out []corev1.Event
	for _, e := range evs.Items {
		if e.Type == corev1.EventTypeWarning {
			out = append(out, e)
		}
	}
	return out
}

// A node whose PCR is extended behind its back is flagged, named and cordoned in the next round; the others
// stay as they are; a node re-attestation cordoned is uncordoned once it verifies again; an admin's cordon
// stays.
func TestRound(t *testing.T) {
	addrs := map[string]string{}
	var vtpms = map[string]*vtpmtest.Node{}
	for _, name := range []string{"cp-0", "worker-0", "worker-1"} {
		addrs[name], vtpms[name] = verifytest.ServeNode(t, name, vtpmtest.Boot)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addrs["worker-2"] = lis.Addr().String() // nothing answers: the node restarts
	require.NoError(t, lis.Close())
	addrs["impostor"] = addrs["worker-1"] // answers with worker-1's attestation

	admin := node("worker-1")
	admin.Spec.Unschedulable = true // the admin's cordon
	client := fake.NewClientset(node("cp-0"), node("worker-0"), admin, node("worker-2"), node("impostor"))
	validator := bootValidator(t)
	reg := prometheus.NewRegistry()
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	auditLog, err := audit.Open(auditPath)
	require.NoError(t, err)
	t.Cleanup(func() { _ = auditLog.Close() })
	r := New(client, verifyproto.Client{}, validator, Config{
		Endpoint: func(n *corev1.Node) (string, bool) { a, ok := addrs[n.Name]; return a, ok },
		Timeout:  5 * time.Second,
		Audit:    auditLog,
	}, slog.New(slog.DiscardHandler), reg)

	reasons := func(results []Result) map[string]string {
		out := map[string]string{}
		for _, res := range results {
			out[res.Node] = res.Reason
		}
		return out
	}
	results, err := r.Round(context.Background())
	require.NoError(t, err)
	assert.Equal(t, map[string]string{
		"cp-0": ReasonVerified, "worker-0": ReasonVerified, "worker-1": ReasonVerified,
		"worker-2": ReasonUnreachable, "impostor": ReasonNotBound,
	}, reasons(results))
	assert.Equal(t, corev1.ConditionTrue, condition(t, client, "worker-0").Status)
	assert.Equal(t, corev1.ConditionUnknown, condition(t, client, "worker-2").Status, "a restarting node is not flagged")
	assert.False(t, getNode(t, client, "worker-2").Spec.Unschedulable)
	assert.Equal(t, corev1.ConditionFalse, condition(t, client, "impostor").Status)
	assert.True(t, getNode(t, client, "impostor").Spec.Unschedulable)

	// Behind worker-0's back: PCR 12 extended (as a changed boot component would).
	require.NoError(t, tpm.Extend(vtpms["worker-0"].TPM, 12, make([]byte, 32)))
	results, err = r.Round(context.Background())
	require.NoError(t, err)
	assert.Equal(t, ReasonMismatch, reasons(results)["worker-0"])
	c := condition(t, client, "worker-0")
	assert.Equal(t, corev1.ConditionFalse, c.Status)
	assert.Equal(t, ReasonMismatch, c.Reason)
	assert.Contains(t, c.Message, "PCR 12", "the condition names the PCR")
	w := getNode(t, client, "worker-0")
	assert.True(t, w.Spec.Unschedulable, "cordoned")
	assert.Equal(t, cordonedBy, w.Annotations[CordonAnnotation])
	var named bool
	for _, e := range warnings(t, client) {
		if e.InvolvedObject.Name == "worker-0" && e.Reason == ReasonMismatch {
			named = true
			assert.Contains(t, e.Message, "PCR 12")
			assert.Equal(t, Component, e.Source.Component)
		}
	}
	assert.True(t, named, "a Warning Event on worker-0 names the PCR")
	assert.Equal(t, 1.0, testutil.ToFloat64(r.counter.WithLabelValues("worker-0", "failed", ReasonMismatch)))
	assert.Equal(t, 2.0, testutil.ToFloat64(r.counter.WithLabelValues("cp-0", "verified", ReasonVerified)))

	// A third round with nothing new: no second Event for the same failure.
	before := len(warnings(t, client))
	_, err = r.Round(context.Background())
	require.NoError(t, err)
	assert.Len(t, warnings(t, client), before)

	// worker-0 restarts (a fresh vTPM, booted as measured): it verifies again and is uncordoned; the
	// admin's cordon of worker-1 stays.
	addrs["worker-0"], _ = verifytest.ServeNode(t, "worker-0", vtpmtest.Boot)
	_, err = r.Round(context.Background())
	require.NoError(t, err)
	assert.Equal(t, corev1.ConditionTrue, condition(t, client, "worker-0").Status)
	w = getNode(t, client, "worker-0")
	assert.False(t, w.Spec.Unschedulable, "uncordoned")
	assert.NotContains(t, w.Annotations, CordonAnnotation)
	assert.True(t, getNode(t, client, "worker-1").Spec.Unschedulable, "the admin's cordon stays")

	// Every outcome of the four rounds is in the audit log, its chain intact.
	f, err := os.Open(auditPath)
	require.NoError(t, err)
	defer f.Close()
	sum, err := audit.Verify(f, nil)
	require.NoError(t, err)
	assert.Equal(t, 4*5, sum.Entries)
	assert.Equal(t, 6, sum.Results["failed"], "the impostor in each round, worker-0 in the second and third")
}

// With NoCordon the node is reported but stays schedulable. PCR 9 is extended without an event in the log.
func TestNoCordon(t *testing.T) {
	addr, n := verifytest.ServeNode(t, "worker-0", vtpmtest.Boot)
	require.NoError(t, tpm.Extend(n.TPM, 9, make([]byte, 32)))
	client := fake.NewClientset(node("worker-0"))
	validator := bootValidator(t)
	r := New(client, verifyproto.Client{}, validator, Config{
		NoCordon: true, Endpoint: func(*corev1.Node) (string, bool) { return addr, true },
	}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	results, err := r.Round(context.Background())
	require.NoError(t, err)
	require.Len(t, results, 1)
	// PCR 9 has logged events: its quoted value no longer replays from the log.
	assert.Equal(t, ReasonUnlogged, results[0].Reason, results[0].Message)
	assert.Contains(t, results[0].Message, "PCR 9")
	assert.False(t, getNode(t, client, "worker-0").Spec.Unschedulable)
	assert.Equal(t, corev1.ConditionFalse, condition(t, client, "worker-0").Status)
}

// brokenVTPM is a VerificationService whose node's vTPM fails: it answers as the real one does then.
type brokenVTPM struct{}

func (brokenVTPM) GetAttestation(context.Context, string, []byte) ([]byte, string, error) {
	return nil, "", status.Error(codes.Internal, "issuing the attestation failed")
}

// A node whose VerificationService answers but cannot attest (its vTPM is gone) is refused and cordoned,
// unlike one that does not answer at all.
func TestNodeThatCannotAttest(t *testing.T) {
	client := fake.NewClientset(node("worker-0"))
	validator := bootValidator(t)
	r := New(client, brokenVTPM{}, validator, Config{
		Endpoint: func(*corev1.Node) (string, bool) { return "10.42.0.9:9090", true },
	}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	results, err := r.Round(context.Background())
	require.NoError(t, err)
	require.Len(t, results, 1)
	assert.Equal(t, ReasonCannotAttest, results[0].Reason, results[0].Message)
	assert.Contains(t, results[0].Message, "vTPM")
	assert.Equal(t, corev1.ConditionFalse, condition(t, client, "worker-0").Status)
	assert.True(t, getNode(t, client, "worker-0").Spec.Unschedulable, "cordoned")
}
