// Package reattest re-checks running nodes: on an interval it asks each node's VerificationService for a
// fresh attestation bound to its own nonce and validates it as a node of this cluster (the configured
// measurements, PCR 15 = the cluster ID). A joined node is otherwise trusted until someone runs `verify`;
// with this, a node whose measurements change at runtime (a PCR extended behind its back) is flagged within
// one interval: a node condition and an Event that name the PCR and what the node's log says was measured,
// a Prometheus counter, and the node is cordoned (unless told not to). A node that verifies again is
// uncordoned if re-attestation was what cordoned it; a cordon the admin set stays.
package reattest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/vtpm"
	"github.com/constellation-go/constellation/internal/audit"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/verify/verifyproto"
)

const (
	// ConditionType is the node condition re-attestation sets.
	ConditionType corev1.NodeConditionType = joinproto.AttestedCondition
	// CordonAnnotation marks a node re-attestation cordoned (and may uncordon).
	CordonAnnotation = joinproto.CordonedByAnnotation
	cordonedBy       = "reattestation"
	// Component is the Events' source.
	Component = "constellation-reattestation"
)

// Reasons of the condition and the metric.
const (
	ReasonVerified = "Verified"
	ReasonMismatch = "MeasurementsDiffer"
	// ReasonUnlogged: a PCR holds a value its own event log does not explain, i.e. it was extended at
	// runtime without a logged event (behind the node's back).
	ReasonUnlogged = "UnloggedMeasurement"
	ReasonInvalid  = "AttestationInvalid"
	ReasonNotBound = "AnswerNotBound"
	// ReasonCannotAttest: the node's VerificationService answered, but could not issue an attestation (its
	// vTPM failed or was replaced): a node that cannot prove its state is not trusted.
	ReasonCannotAttest = "CannotAttest"
	ReasonUnreachable  = "Unreachable"
	ReasonNoAddress    = "NoAddress"
)

// Attester asks a VerificationService for an attestation bound to nonce (clusterclient.GRPC-like).
type Attester interface {
	GetAttestation(ctx context.Context, endpoint string, nonce []byte) (doc []byte, node string, err error)
}

// Config tunes the loop. The zero value of every option is the strict one.
type Config struct {
	// Interval between rounds (default one minute).
	Interval time.Duration
	// NoCordon leaves a node that fails schedulable (the condition, Event and metric still report it).
	NoCordon bool
	// Endpoint returns the VerificationService address of a node (default: its InternalIP and
	// verifyproto.Port).
	Endpoint func(*corev1.Node) (string, bool)
	// Timeout bounds one node's attestation (default 20 s).
	Timeout time.Duration
	// Audit, if set, records every outcome.
	Audit interface{ Append(audit.Entry) error }
}

// Result is one node's outcome in a round.
type Result struct {
	Node    string
	Reason  string
	Message string
}

// Failed tells whether the node's attestation was refused (an unreachable node is not: it may be restarting).
func (r Result) Failed() bool {
	return r.Reason != ReasonVerified && r.Reason != ReasonUnreachable && r.Reason != ReasonNoAddress
}

// Reattester runs the rounds.
type Reattester struct {
	k8s       kubernetes.Interface
	attester  Attester
	validator attestation.Validator
	cfg       Config
	log       *slog.Logger
	counter   *prometheus.CounterVec
	now       func() time.Time
}

// New returns a Reattester that validates with validator (nodes of this cluster); metrics go to reg.
func New(k8s kubernetes.Interface, attester Attester, validator attestation.Validator, cfg Config, log *slog.Logger, reg prometheus.Registerer) *Reattester {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 20 * time.Second
	}
	if cfg.Endpoint == nil {
		cfg.Endpoint = internalEndpoint
	}
	counter := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "constellation_reattestations_total",
		Help: "Re-attestations of running nodes by node, result (verified, failed, unreachable) and reason.",
	}, []string{"node", "result", "reason"})
	reg.MustRegister(counter)
	return &Reattester{k8s: k8s, attester: attester, validator: validator, cfg: cfg, log: log, counter: counter, now: time.Now}
}

func internalEndpoint(n *corev1.Node) (string, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return net.JoinHostPort(a.Address, strconv.Itoa(verifyproto.Port)), true
		}
	}
	return "", false
}

// Run re-attests every node each interval until ctx ends.
func (r *Reattester) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := r.Round(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("re-attestation round failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Round re-attests every node once and records the outcomes.
func (r *Reattester) Round(ctx context.Context) ([]Result, error) {
	nodes, err := r.k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	results := make([]Result, 0, len(nodes.Items))
	var errs []error
	for i := range nodes.Items {
		node := &nodes.Items[i]
		res := r.check(ctx, node)
		results = append(results, res)
		if err := r.record(ctx, node, res); err != nil {
			errs = append(errs, fmt.Errorf("recording %s's re-attestation: %w", node.Name, err))
		}
	}
	return results, errors.Join(errs...)
}

// check attests one node.
func (r *Reattester) check(ctx context.Context, node *corev1.Node) Result {
	res := Result{Node: node.Name}
	endpoint, ok := r.cfg.Endpoint(node)
	if !ok {
		res.Reason, res.Message = ReasonNoAddress, "the node has no internal address"
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		res.Reason, res.Message = ReasonUnreachable, err.Error()
		return res
	}
	doc, answered, err := r.attester.GetAttestation(ctx, endpoint, nonce)
	if status.Code(err) == codes.Internal {
		res.Reason, res.Message = ReasonCannotAttest, fmt.Sprintf("the VerificationService at %s answered, but could not "+
			"issue an attestation (is the node's vTPM working? a reboot gives the node its vTPM again): %v", endpoint, err)
		return res
	}
	if err != nil {
		res.Reason, res.Message = ReasonUnreachable, fmt.Sprintf("the VerificationService at %s did not answer: %v", endpoint, err)
		return res
	}
	err = verifyproto.CheckAnswer(ctx, r.validator, doc, nonce, node.Name, answered)
	var verr *attestation.ValidationError
	switch {
	case err == nil:
		res.Reason, res.Message = ReasonVerified, "the node's attestation matches the cluster's measurements"
	case errors.As(err, &verr) && errors.Is(err, attestation.ErrMeasurementMismatch):
		res.Reason, res.Message = ReasonMismatch, mismatchMessage(verr)
	case errors.Is(err, vtpm.ErrEventLogMismatch):
		res.Reason, res.Message = ReasonUnlogged, err.Error()
	case errors.Is(err, verifyproto.ErrNotBound):
		res.Reason, res.Message = ReasonNotBound, "another node answered at this node's address: "+err.Error()
	default:
		res.Reason, res.Message = ReasonInvalid, err.Error()
	}
	return res
}

// mismatchMessage names each differing enforced PCR and what the node's log says was measured into it.
func mismatchMessage(verr *attestation.ValidationError) string {
	var parts []string
	for _, m := range verr.Mismatches {
		if !m.WarnOnly {
			parts = append(parts, m.String())
		}
	}
	msg := "measurements differ: " + strings.Join(parts, "; ")
	const limit = 1024 // a condition message, not a log
	if len(msg) > limit {
		msg = msg[:limit-3] + "..."
	}
	return msg
}

// record sets the node's condition, counts the result, and on a change of outcome emits an Event and
// cordons or uncordons.
func (r *Reattester) record(ctx context.Context, node *corev1.Node, res Result) error {
	result := "verified"
	status := corev1.ConditionTrue
	switch {
	case res.Failed():
		result, status = "failed", corev1.ConditionFalse
	case res.Reason != ReasonVerified:
		result, status = "unreachable", corev1.ConditionUnknown
	}
	r.counter.WithLabelValues(node.Name, result, res.Reason).Inc()
	if r.cfg.Audit != nil {
		if err := r.cfg.Audit.Append(audit.Entry{Kind: audit.KindReattestation, Node: node.Name, Result: result, Reason: res.Reason, Detail: res.Message}); err != nil {
			r.log.Error("could not record a re-attestation in the audit log", "node", node.Name, "error", err)
		}
	}

	previous := findCondition(node)
	now := metav1.NewTime(r.now())
	cond := corev1.NodeCondition{
		Type: ConditionType, Status: status, Reason: res.Reason, Message: res.Message,
		LastHeartbeatTime: now, LastTransitionTime: now,
	}
	changed := previous == nil || previous.Status != status || previous.Reason != res.Reason || previous.Message != res.Message
	if previous != nil && previous.Status == status {
		cond.LastTransitionTime = previous.LastTransitionTime
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	if _, err := r.k8s.CoreV1().Nodes().PatchStatus(ctx, node.Name, patch); err != nil {
		return fmt.Errorf("setting condition %s: %w", ConditionType, err)
	}
	if res.Failed() {
		r.log.Warn("node failed re-attestation", "node", node.Name, "reason", res.Reason, "message", res.Message)
	}
	if changed && status != corev1.ConditionUnknown {
		if err := r.event(ctx, node, res); err != nil {
			return err
		}
	}
	switch {
	case res.Failed() && !r.cfg.NoCordon && !node.Spec.Unschedulable:
		r.log.Warn("cordoning a node that failed re-attestation", "node", node.Name)
		return r.setCordon(ctx, node.Name, true)
	case status == corev1.ConditionTrue && node.Spec.Unschedulable && node.Annotations[CordonAnnotation] == cordonedBy:
		r.log.Info("uncordoning a node that verifies again", "node", node.Name)
		return r.setCordon(ctx, node.Name, false)
	}
	return nil
}

func findCondition(node *corev1.Node) *corev1.NodeCondition {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == ConditionType {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// setCordon marks the node (un)schedulable, with the annotation that says who did it.
func (r *Reattester) setCordon(ctx context.Context, name string, cordon bool) error {
	var annotation any // nil removes it
	if cordon {
		annotation = cordonedBy
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]any{CordonAnnotation: annotation}},
		"spec":     map[string]any{"unschedulable": cordon},
	})
	if err != nil {
		return err
	}
	if _, err := r.k8s.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("cordon=%t: %w", cordon, err)
	}
	return nil
}

// event records the outcome on the node (kubectl describe node shows it).
func (r *Reattester) event(ctx context.Context, node *corev1.Node, res Result) error {
	typ := corev1.EventTypeNormal
	if res.Failed() {
		typ = corev1.EventTypeWarning
	}
	now := metav1.NewTime(r.now())
	ev := &corev1.Event{
		// Named as client-go's event recorder names them: unique per node and time.
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", node.Name, now.UnixNano()), Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{
			Kind: "Node", APIVersion: "v1", Name: node.Name, UID: node.UID,
		},
		Reason: res.Reason, Message: res.Message, Type: typ,
		Source:         corev1.EventSource{Component: Component},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	if _, err := r.k8s.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("recording an Event: %w", err)
	}
	return nil
}
