// Package v1alpha1 is the KubernetesUpgrade custom resource: the cluster's Kubernetes target, which the CLI
// writes and the in-cluster upgrade controller carries out with kubeupgrade's passes, reporting in its
// status. There is one object, named Name.
package v1alpha1

import (
	_ "embed"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// Name is the name of the cluster's one KubernetesUpgrade.
const Name = "cluster"

// GroupVersion is the API group and version.
var GroupVersion = schema.GroupVersion{Group: "constellation.io", Version: "v1alpha1"}

// AddToScheme adds the types to a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &KubernetesUpgrade{}, &KubernetesUpgradeList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// CRD is the CustomResourceDefinition (apiextensions.k8s.io/v1, YAML).
//
//go:embed crd.yaml
var CRD []byte

// KubernetesUpgrade is the cluster's Kubernetes target and where the move to it stands.
type KubernetesUpgrade struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KubernetesUpgradeSpec   `json:"spec"`
	Status KubernetesUpgradeStatus `json:"status,omitempty"`
}

// KubernetesUpgradeSpec is the target.
type KubernetesUpgradeSpec struct {
	// Version is the Kubernetes version every node moves to.
	Version string `json:"version"`
	// Components are the version's components the nodes install, and JoinComponents what the JoinService
	// hands joining nodes once the control plane moved; both in components.MarshalList's JSON, the form the
	// nodes' agents read.
	Components     string `json:"components"`
	JoinComponents string `json:"joinComponents"`
	// Retry, raised above Status.Retried, makes the nodes whose step of Version failed try again.
	Retry int64 `json:"retry,omitempty"`
}

// KubernetesUpgradeStatus is the controller's report (kubeupgrade.Progress, and the pass's error).
type KubernetesUpgradeStatus struct {
	// ObservedGeneration is the spec generation the report is about.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase is Staging, Upgrading, Done or Failed.
	Phase   string `json:"phase,omitempty"`
	Staging int    `json:"staging,omitempty"`
	// Node is the node the upgrade is at, Index its place (from 1) of Total, Step its kubeadm step.
	Node  string `json:"node,omitempty"`
	Index int    `json:"index,omitempty"`
	Total int    `json:"total,omitempty"`
	Step  string `json:"step,omitempty"`
	// Waiting says what the upgrade waits for; for Failed, the node's reason.
	Waiting string `json:"waiting,omitempty"`
	// Reports are the nodes' reports of the step they work on ("<node>: <message>").
	Reports []string `json:"reports,omitempty"`
	// Did is what the last pass that changed something did.
	Did []string `json:"did,omitempty"`
	// Finished are the nodes at the target, in the upgrade's order.
	Finished []string `json:"finished,omitempty"`
	// Error is the last pass's error (the API server restarts during the control plane's step), if any.
	Error string `json:"error,omitempty"`
	// Retried is the Spec.Retry the controller acted on.
	Retried int64 `json:"retried,omitempty"`
	// UpdateTime is when the controller last wrote the report.
	UpdateTime metav1.Time `json:"updateTime,omitempty"`
}

// KubernetesUpgradeList is a list of KubernetesUpgrades.
type KubernetesUpgradeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KubernetesUpgrade `json:"items"`
}

// DeepCopyInto copies u into out.
func (u *KubernetesUpgrade) DeepCopyInto(out *KubernetesUpgrade) {
	*out = *u
	out.TypeMeta = u.TypeMeta
	u.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = u.Spec
	u.Status.DeepCopyInto(&out.Status)
}

// DeepCopy copies u.
func (u *KubernetesUpgrade) DeepCopy() *KubernetesUpgrade {
	if u == nil {
		return nil
	}
	out := new(KubernetesUpgrade)
	u.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (u *KubernetesUpgrade) DeepCopyObject() runtime.Object {
	if c := u.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies s into out.
func (s *KubernetesUpgradeStatus) DeepCopyInto(out *KubernetesUpgradeStatus) {
	*out = *s
	out.Reports = cloneStrings(s.Reports)
	out.Did = cloneStrings(s.Did)
	out.Finished = cloneStrings(s.Finished)
	s.UpdateTime.DeepCopyInto(&out.UpdateTime)
}

// DeepCopy copies s.
func (s *KubernetesUpgradeStatus) DeepCopy() *KubernetesUpgradeStatus {
	if s == nil {
		return nil
	}
	out := new(KubernetesUpgradeStatus)
	s.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies l into out.
func (l *KubernetesUpgradeList) DeepCopyInto(out *KubernetesUpgradeList) {
	*out = *l
	out.TypeMeta = l.TypeMeta
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]KubernetesUpgrade, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopyObject implements runtime.Object.
func (l *KubernetesUpgradeList) DeepCopyObject() runtime.Object {
	if l == nil {
		return nil
	}
	out := new(KubernetesUpgradeList)
	l.DeepCopyInto(out)
	return out
}

func cloneStrings(s []string) []string {
	if s == nil {
		return nil
	}
	return append([]string(nil), s...)
}

// EncodeSpec is the spec of an upgrade to s.
func EncodeSpec(s kubeupgrade.Spec) (KubernetesUpgradeSpec, error) {
	comps, err := components.MarshalList(s.Components)
	if err != nil {
		return KubernetesUpgradeSpec{}, err
	}
	join, err := components.MarshalList(s.JoinComponents)
	if err != nil {
		return KubernetesUpgradeSpec{}, err
	}
	return KubernetesUpgradeSpec{Version: s.Version, Components: string(comps), JoinComponents: string(join)}, nil
}

// Decode is the upgrade the spec describes.
func (s KubernetesUpgradeSpec) Decode() (kubeupgrade.Spec, error) {
	comps, err := components.UnmarshalList([]byte(s.Components))
	if err != nil {
		return kubeupgrade.Spec{}, fmt.Errorf("spec.components: %w", err)
	}
	join, err := components.UnmarshalList([]byte(s.JoinComponents))
	if err != nil {
		return kubeupgrade.Spec{}, fmt.Errorf("spec.joinComponents: %w", err)
	}
	return kubeupgrade.Spec{Version: s.Version, Components: comps, JoinComponents: join}, nil
}

// SetProgress records a pass's progress. Did is kept from the last pass that did something, so that a reader
// polling now and then sees the last action.
func (s *KubernetesUpgradeStatus) SetProgress(p kubeupgrade.Progress) {
	s.Phase, s.Staging = string(p.Phase), p.Staging
	s.Node, s.Index, s.Total, s.Step = p.Node, p.Index, p.Total, string(p.Step)
	s.Waiting, s.Reports, s.Finished, s.Error = p.Waiting, p.Reports, p.Finished, ""
	if len(p.Did) > 0 {
		s.Did = p.Did
	}
}

// Progress is the recorded progress.
func (s *KubernetesUpgradeStatus) Progress() kubeupgrade.Progress {
	return kubeupgrade.Progress{
		Phase: kubeupgrade.Phase(s.Phase), Staging: s.Staging, Node: s.Node, Index: s.Index, Total: s.Total,
		Step: agentapi.Step(s.Step), Waiting: s.Waiting, Reports: s.Reports, Did: s.Did, Finished: s.Finished,
	}
}
