// Package agentapi is the contract between a node's agent (the bootstrapper, once the node is a member of a
// cluster) and whatever rolls a Kubernetes upgrade out (the CLI's `apply`): the instruction and the node's
// report are two annotations on the node's own Node object.
//
// Why annotations on the Node: the node reads and writes them with its own kubelet credentials, which the
// API server's node authorizer and NodeRestriction limit to that one Node object, so the agent needs no
// listening port and no credentials of its own, and a node can neither read nor write another node's
// instruction. Setting an instruction takes the right to patch Nodes, which is the cluster administrator's:
// the trust chains to the cluster's own RBAC, and the node still installs only files whose sha256 the
// instruction pins (checked before a file becomes visible, as at init). A roll-out does not depend on its
// caller staying connected: the node carries out and reports its step on its own, and a caller that comes
// back reads where it stands.
//
// The steps of a Kubernetes upgrade, in the caller's order:
//
//  1. Every node gets a Target with StepStage: it downloads, verifies and installs the new kubeadm, kubectl
//     and container images (the kubelet binary waits), so that the new kube-proxy and CoreDNS images are on
//     every node before `kubeadm upgrade apply` switches their DaemonSet and Deployment to them.
//  2. One control plane gets StepApply: `kubeadm upgrade apply <version>` moves the cluster's control plane
//     (its own static pods, etcd, the cluster's kubeadm and kubelet configuration, the add-ons).
//  3. Every other node gets StepNode (control planes first; the caller cordons and drains each node first):
//     `kubeadm upgrade node`.
//
// After StepApply or StepNode the node installs the new kubelet, restarts it, and records the new
// components on its state disk, so that a node that restarts later installs the new version again.
package agentapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/constellation-go/constellation/internal/versions/components"
)

const (
	// TargetAnnotation holds the instruction (Target, JSON), set by the caller.
	TargetAnnotation = "constellation.io/kubernetes-target"
	// StatusAnnotation holds the node's report (Status, JSON), set by the node.
	StatusAnnotation = "constellation.io/kubernetes-status"
)

// Step is what a Target asks of a node.
type Step string

// Steps, in the order of a roll-out (see the package documentation).
const (
	StepStage Step = "stage"
	StepApply Step = "apply"
	StepNode  Step = "node"
)

func (s Step) valid() bool {
	return s == StepStage || s == StepApply || s == StepNode
}

// Target is an instruction: move this node to Version with Components, as far as Step.
type Target struct {
	Version    string
	Step       Step
	Components []*components.Component
}

type targetJSON struct {
	Version    string          `json:"version"`
	Step       Step            `json:"step"`
	Components json.RawMessage `json:"components"`
}

// Encode returns the annotation's value.
func (t Target) Encode() (string, error) {
	comps, err := components.MarshalList(t.Components)
	if err != nil {
		return "", err
	}
	data, err := json.Marshal(targetJSON{Version: t.Version, Step: t.Step, Components: comps})
	return string(data), err
}

// ErrNoTarget is returned by ReadTarget for a node without an instruction.
var ErrNoTarget = errors.New("no Kubernetes upgrade instruction")

// ReadTarget returns the node's instruction.
func ReadTarget(node *corev1.Node) (Target, error) {
	value, ok := node.Annotations[TargetAnnotation]
	if !ok {
		return Target{}, ErrNoTarget
	}
	var raw targetJSON
	if err := json.Unmarshal([]byte(value), &raw); err != nil {
		return Target{}, fmt.Errorf("annotation %s: %w", TargetAnnotation, err)
	}
	if raw.Version == "" || !raw.Step.valid() {
		return Target{}, fmt.Errorf("annotation %s: needs a version and a step (%s, %s or %s), got version %q, step %q",
			TargetAnnotation, StepStage, StepApply, StepNode, raw.Version, raw.Step)
	}
	comps, err := components.UnmarshalList(raw.Components)
	if err != nil {
		return Target{}, fmt.Errorf("annotation %s: %w", TargetAnnotation, err)
	}
	return Target{Version: raw.Version, Step: raw.Step, Components: comps}, nil
}

// Phase is how far a node got with its Target.
type Phase string

// Phases. A node reports Working while it carries a step out, then Done or Failed for that step.
const (
	PhaseWorking Phase = "working"
	PhaseDone    Phase = "done"
	PhaseFailed  Phase = "failed"
)

// Status is a node's report on its Target.
type Status struct {
	Version string `json:"version"`
	Step    Step   `json:"step"`
	Phase   Phase  `json:"phase"`
	// Message says what the node does or, for PhaseFailed, why it failed and what its log says.
	Message string    `json:"message,omitempty"`
	Time    time.Time `json:"time"`
}

// Encode returns the annotation's value.
func (s Status) Encode() (string, error) {
	data, err := json.Marshal(s)
	return string(data), err
}

// ReadStatus returns the node's report; ok is false if there is none (or it cannot be parsed, which only a
// node of another release would write).
func ReadStatus(node *corev1.Node) (s Status, ok bool) {
	value, found := node.Annotations[StatusAnnotation]
	if !found || json.Unmarshal([]byte(value), &s) != nil {
		return Status{}, false
	}
	return s, true
}

// AnnotationsPatch returns a JSON merge patch of a Node that sets the given annotations; a nil value removes
// one. The caller writes its target with it, the node its status.
func AnnotationsPatch(annotations map[string]*string) ([]byte, error) {
	return json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
}

// Reached tells whether the report says the node finished step for version: a later step includes the
// earlier ones (StepApply and StepNode include StepStage).
func (s Status) Reached(version string, step Step) bool {
	if s.Version != version || s.Phase != PhaseDone {
		return false
	}
	return s.Step == step || step == StepStage
}
