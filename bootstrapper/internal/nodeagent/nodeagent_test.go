package nodeagent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/internal/versions/components"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type fakeInstaller struct {
	staged [][]string
	err    error
}

func (f *fakeInstaller) Stage(_ context.Context, comps []*components.Component) error {
	var names []string
	for _, c := range comps {
		names = append(names, c.GetName())
	}
	f.staged = append(f.staged, names)
	return f.err
}

type fakeRecorder struct{ data, before []byte }

func (f *fakeRecorder) SaveComponents(data []byte) error {
	f.data = data
	return nil
}

func (f *fakeRecorder) LoadComponents() ([]byte, error) {
	if f.before == nil {
		return nil, os.ErrNotExist
	}
	return f.before, nil
}

type fakeKubeadm struct {
	calls []string
	err   error
}

func (f *fakeKubeadm) UpgradeApply(_ context.Context, version string) error {
	f.calls = append(f.calls, "apply "+version)
	return f.err
}

func (f *fakeKubeadm) UpgradeNode(context.Context) error {
	f.calls = append(f.calls, "node")
	return f.err
}

// fakeKubelet records what ran while the kubelet was stopped.
type fakeKubelet struct {
	stopped bool
	during  int
	in      *fakeInstaller
}

func (f *fakeKubelet) WhileStopped(ctx context.Context, fn func(context.Context) error) error {
	f.stopped = true
	defer func() { f.stopped = false }()
	before := len(f.in.staged)
	err := fn(ctx)
	f.during += len(f.in.staged) - before
	return err
}

// testComponents are the pinned kubeadm, kubelet and kube-proxy image of v1.34.10, as the CLI sends them.
var testComponents = pinned("v1.34.10", "kubeadm", "kubelet", "kube-proxy.tar")

func pinned(version string, names ...string) []*components.Component {
	set, err := versions.Components(version)
	if err != nil {
		panic(err)
	}
	var out []*components.Component
	for _, c := range set.Proto("http://10.42.0.1:9081", set.NodeComponents(true)) {
		if slices.Contains(names, c.GetName()) {
			out = append(out, c)
		}
	}
	return out
}

// tampered returns testComponents with f applied to a copy of the named one.
func tampered(name string, f func(c *components.Component)) []*components.Component {
	var out []*components.Component
	for _, c := range testComponents {
		c = proto.Clone(c).(*components.Component)
		if c.GetName() == name {
			f(c)
		}
		out = append(out, c)
	}
	return out
}

func node(name, kubelet string, controlPlane bool, target *agentapi.Target, status *agentapi.Status) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}, Annotations: map[string]string{}},
		Status:     corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{KubeletVersion: kubelet}},
	}
	if controlPlane {
		n.Labels["node-role.kubernetes.io/control-plane"] = ""
	}
	if target != nil {
		v, err := target.Encode()
		if err != nil {
			panic(err)
		}
		n.Annotations[agentapi.TargetAnnotation] = v
	}
	if status != nil {
		v, err := status.Encode()
		if err != nil {
			panic(err)
		}
		n.Annotations[agentapi.StatusAnnotation] = v
	}
	return n
}

type harness struct {
	agent   *Agent
	k8s     *k8sfake.Clientset
	in      *fakeInstaller
	rec     *fakeRecorder
	kubeadm *fakeKubeadm
	kubelet *fakeKubelet
}

func newHarness(n *corev1.Node) *harness {
	h := &harness{k8s: k8sfake.NewClientset(n), in: &fakeInstaller{}, rec: &fakeRecorder{}, kubeadm: &fakeKubeadm{}}
	h.kubelet = &fakeKubelet{in: h.in}
	h.agent = &Agent{
		NodeName: n.Name, Client: func() (kubernetes.Interface, error) { return h.k8s, nil },
		Installer: h.in, Recorder: h.rec, Kubeadm: h.kubeadm, Kubelet: h.kubelet,
		KubeadmTail: func() string { return "[ERROR CoreDNSUnsupportedPlugins]: there are unsupported plugins\n" },
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	return h
}

func (h *harness) status(t *testing.T) (agentapi.Status, bool) {
	t.Helper()
	n, err := h.k8s.CoreV1().Nodes().Get(context.Background(), h.agent.NodeName, metav1.GetOptions{})
	require.NoError(t, err)
	return agentapi.ReadStatus(n)
}

func TestReconcile(t *testing.T) {
	stage := &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepStage, Components: testComponents}
	apply := &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepApply, Components: testComponents}
	upgradeNode := &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepNode, Components: testComponents}
	testCases := map[string]struct {
		node         *corev1.Node
		kubeadmErr   error
		wantPhase    agentapi.Phase
		wantNoStatus bool
		wantMessage  []string
		wantStaged   [][]string
		wantKubeadm  []string
		wantKubelet  bool
	}{
		"no instruction: nothing happens": {
			node: node("cp-0", "v1.33.13", true, nil, nil), wantNoStatus: true,
		},
		"staging installs everything but the kubelet and records nothing": {
			node: node("worker-0", "v1.33.13", false, stage, nil), wantPhase: agentapi.PhaseDone,
			wantStaged: [][]string{{"kubeadm", "kube-proxy.tar"}},
		},
		"apply on a control plane: kubeadm upgrade apply, then the kubelet while it is stopped": {
			node: node("cp-0", "v1.33.13", true, apply, nil), wantPhase: agentapi.PhaseDone,
			wantStaged: [][]string{{"kubeadm", "kube-proxy.tar"}, {"kubelet"}}, wantKubeadm: []string{"apply v1.34.10"}, wantKubelet: true,
		},
		"node step on a worker: kubeadm upgrade node": {
			node: node("worker-0", "v1.33.13", false, upgradeNode, nil), wantPhase: agentapi.PhaseDone,
			wantStaged: [][]string{{"kubeadm", "kube-proxy.tar"}, {"kubelet"}}, wantKubeadm: []string{"node"}, wantKubelet: true,
		},
		"a step already done is not repeated": {
			node: node("worker-0", "v1.34.10", false, upgradeNode,
				&agentapi.Status{Version: "v1.34.10", Step: agentapi.StepNode, Phase: agentapi.PhaseDone}),
			wantPhase: agentapi.PhaseDone,
		},
		"apply on a worker is refused": {
			node: node("worker-0", "v1.33.13", false, apply, nil), wantPhase: agentapi.PhaseFailed,
			wantMessage: []string{"runs on a control plane"},
		},
		"a version this image does not pin is refused": {
			node:      node("worker-0", "v1.33.13", false, &agentapi.Target{Version: "v1.34.99", Step: agentapi.StepNode, Components: testComponents}, nil),
			wantPhase: agentapi.PhaseFailed, wantMessage: []string{"does not support Kubernetes v1.34.99", "v1.33.13"},
		},
		"a downgrade is refused": {
			node:      node("worker-0", "v1.34.10", false, &agentapi.Target{Version: "v1.33.13", Step: agentapi.StepNode, Components: testComponents}, nil),
			wantPhase: agentapi.PhaseFailed, wantMessage: []string{"downgrades are not supported"},
		},
		"components without a kubelet are refused": {
			node:      node("worker-0", "v1.33.13", false, &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepNode, Components: testComponents[:1]}, nil),
			wantPhase: agentapi.PhaseFailed, wantMessage: []string{"lack kubeadm or the kubelet"},
		},
		"a kubelet that is not the pinned one is refused": {
			node: node("worker-0", "v1.33.13", false, &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepNode,
				Components: tampered("kubelet", func(c *components.Component) { c.Hash = "sha256:" + strings.Repeat("ab", 32) })}, nil),
			wantPhase: agentapi.PhaseFailed, wantMessage: []string{"component kubelet: sha256", "is not the pinned"},
		},
		"a file outside the component directories is refused": {
			node: node("worker-0", "v1.33.13", false, &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepStage,
				Components: tampered("kubeadm", func(c *components.Component) { c.InstallPath = "/usr/bin/kubeadm" })}, nil),
			wantPhase: agentapi.PhaseFailed, wantMessage: []string{"install path \"/usr/bin/kubeadm\""},
		},
		"a component that is not Kubernetes' is refused": {
			node: node("worker-0", "v1.33.13", false, &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepStage,
				Components: append(pinned("v1.34.10", "kubeadm", "kubelet"), &components.Component{
					Name: "joinservice.tar", Hash: "sha256:" + strings.Repeat("cd", 32), InstallPath: "/var/lib/constellation/images/joinservice.tar",
				})}, nil),
			wantPhase: agentapi.PhaseFailed, wantMessage: []string{`component "joinservice.tar" is not one a node installs`},
		},
		"a locally rebuilt kube-proxy image is accepted (Debian's archive moved)": {
			node: node("worker-0", "v1.33.13", false, &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepStage,
				Components: tampered("kube-proxy.tar", func(c *components.Component) { c.Hash = "sha256:" + strings.Repeat("ef", 32) })}, nil),
			wantPhase: agentapi.PhaseDone, wantStaged: [][]string{{"kubeadm", "kube-proxy.tar"}},
		},
		"a failing kubeadm is reported with its last output; the kubelet stays": {
			node: node("cp-0", "v1.33.13", true, apply, nil), kubeadmErr: errors.New("kubeadm upgrade apply: exit status 1"),
			wantPhase: agentapi.PhaseFailed, wantMessage: []string{"exit status 1", "kubeadm's last output", "CoreDNSUnsupportedPlugins"},
			wantStaged: [][]string{{"kubeadm", "kube-proxy.tar"}}, wantKubeadm: []string{"apply v1.34.10"},
		},
		"a failed step is not retried on its own": {
			node:      node("cp-0", "v1.33.13", true, apply, &agentapi.Status{Version: "v1.34.10", Step: agentapi.StepApply, Phase: agentapi.PhaseFailed}),
			wantPhase: agentapi.PhaseFailed,
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(tc.node)
			h.kubeadm.err = tc.kubeadmErr
			require.NoError(t, h.agent.Reconcile(context.Background()))
			status, ok := h.status(t)
			if tc.wantNoStatus {
				assert.False(t, ok)
				return
			}
			require.True(t, ok)
			assert.Equal(t, tc.wantPhase, status.Phase, status.Message)
			for _, m := range tc.wantMessage {
				assert.Contains(t, status.Message, m)
			}
			assert.Equal(t, tc.wantStaged, h.in.staged)
			assert.Equal(t, tc.wantKubeadm, h.kubeadm.calls)
			if tc.wantKubelet {
				assert.Equal(t, 1, h.kubelet.during, "the kubelet is installed while it is stopped")
				list, err := components.UnmarshalList(h.rec.data)
				require.NoError(t, err)
				assert.Len(t, list, len(testComponents), "every component is recorded for the next restart")
			} else {
				assert.Nil(t, h.rec.data, "nothing is recorded")
			}
		})
	}
}

// TestRetryAfterFailure: a failed step stays failed until the caller clears the report; then it runs again.
func TestRetryAfterFailure(t *testing.T) {
	apply := &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepApply, Components: testComponents}
	h := newHarness(node("cp-0", "v1.33.13", true, apply, nil))
	h.kubeadm.err = errors.New("exit status 1")
	ctx := context.Background()
	require.NoError(t, h.agent.Reconcile(ctx))
	require.NoError(t, h.agent.Reconcile(ctx))
	assert.Len(t, h.kubeadm.calls, 1)

	n, err := h.k8s.CoreV1().Nodes().Get(ctx, "cp-0", metav1.GetOptions{})
	require.NoError(t, err)
	delete(n.Annotations, agentapi.StatusAnnotation)
	_, err = h.k8s.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	require.NoError(t, err)
	h.kubeadm.err = nil
	require.NoError(t, h.agent.Reconcile(ctx))
	assert.Len(t, h.kubeadm.calls, 2)
	status, ok := h.status(t)
	require.True(t, ok)
	assert.Equal(t, agentapi.PhaseDone, status.Phase)
	assert.True(t, status.Reached("v1.34.10", agentapi.StepApply))
}

// TestInvalidInstruction: an annotation that does not parse is reported once.
func TestInvalidInstruction(t *testing.T) {
	n := node("cp-0", "v1.33.13", true, nil, nil)
	n.Annotations[agentapi.TargetAnnotation] = `{"version":"v1.34.10","step":"everything"}`
	h := newHarness(n)
	require.NoError(t, h.agent.Reconcile(context.Background()))
	status, ok := h.status(t)
	require.True(t, ok)
	assert.Equal(t, agentapi.PhaseFailed, status.Phase)
	assert.Contains(t, status.Message, "needs a version and a step")
	assert.Empty(t, h.in.staged)
}

// TestRunStopsWithContext: Run ends when its context does, also while the node has not joined.
func TestRunStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{
		NodeName: "cp-0", Client: func() (kubernetes.Interface, error) { return nil, errors.New("no kubelet.conf yet") },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Interval: 1,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	cancel()
	<-done
}

// TestRecordKeepsWhatTheUpgradeDoesNotReplace: after an upgrade the node records the new version's components
// and keeps the services' images it recorded at its join, so a restart installs both.
func TestRecordKeepsWhatTheUpgradeDoesNotReplace(t *testing.T) {
	apply := &agentapi.Target{Version: "v1.34.10", Step: agentapi.StepApply, Components: testComponents}
	h := newHarness(node("cp-0", "v1.33.13", true, apply, nil))
	before := append(pinned("v1.33.13", "kubeadm", "kubelet"), &components.Component{
		Name: "joinservice.tar", Hash: "sha256:" + strings.Repeat("cd", 32), InstallPath: "/var/lib/constellation/images/joinservice.tar",
	})
	var err error
	h.rec.before, err = components.MarshalList(before)
	require.NoError(t, err)
	require.NoError(t, h.agent.Reconcile(context.Background()))
	recorded, err := components.UnmarshalList(h.rec.data)
	require.NoError(t, err)
	byName := map[string]string{}
	for _, c := range recorded {
		byName[c.GetName()] = c.GetUrl()
	}
	assert.Len(t, recorded, len(testComponents)+1)
	assert.Contains(t, byName["kubelet"], "/v1.34.10/", "the new kubelet replaces the old one")
	assert.Contains(t, byName, "joinservice.tar", "the service image stays recorded")
}
