package clusterupgrade

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/kubeupgradetest"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/versions/components"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestPlanKubernetes(t *testing.T) {
	testCases := map[string]struct {
		apiServer string
		kubelets  []string
		to        string
		want      *Plan
		refused   string
	}{
		"up to date":       {apiServer: "v1.33.13", kubelets: []string{"v1.33.13", "v1.33.13"}, to: "v1.33.13"},
		"next minor":       {apiServer: "v1.33.13", kubelets: []string{"v1.33.13"}, to: "v1.34.10", want: &Plan{From: "v1.33.13", To: "v1.34.10"}},
		"a kubelet behind": {apiServer: "v1.34.10", kubelets: []string{"v1.34.10", "v1.33.13"}, to: "v1.34.10", want: &Plan{From: "v1.34.10", To: "v1.34.10"}},
		"a downgrade":      {apiServer: "v1.34.10", kubelets: []string{"v1.34.10"}, to: "v1.33.13", refused: "downgrades are not supported"},
		"a skipped minor":  {apiServer: "v1.32.1", kubelets: []string{"v1.32.1"}, to: "v1.34.10", refused: "minor"},
		"a kubelet two minors behind": {
			apiServer: "v1.33.13", kubelets: []string{"v1.33.13", "v1.32.1"}, to: "v1.34.10", refused: "the kubelet of node-1",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			var objs []runtime.Object
			for i, v := range tc.kubelets {
				n := kubeupgradetest.Node("node-"+string(rune('0'+i)), v, false)
				objs = append(objs, n)
			}
			k8s := k8sfake.NewClientset(objs...)
			k8s.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: tc.apiServer}
			got, err := PlanKubernetes(context.Background(), k8s, tc.to)
			if tc.refused != "" {
				var refused *RefusedError
				require.ErrorAs(t, err, &refused)
				assert.Equal(t, tc.apiServer, refused.From)
				assert.ErrorContains(t, err, tc.refused)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestKubernetesOnly: an upgrade instruction carries the version's components, not the services' images
// (a node's agent refuses what its image does not pin for the version).
func TestKubernetesOnly(t *testing.T) {
	comps := []*components.Component{{Name: "kubeadm"}, {Name: "joinservice.tar"}, {Name: "kube-proxy.tar"}, {Name: "kubelet"}}
	got, err := KubernetesOnly(comps, "v1.34.10")
	require.NoError(t, err)
	var names []string
	for _, c := range got {
		names = append(names, c.GetName())
	}
	assert.Equal(t, []string{"kubeadm", "kube-proxy.tar", "kubelet"}, names)
	_, err = KubernetesOnly(comps, "v1.99.0")
	assert.Error(t, err)
}

func TestSubmitWithoutController(t *testing.T) {
	scheme := runtime.NewScheme()
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	noKind := func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
		return &meta.NoKindMatchError{GroupKind: v1alpha1.GroupVersion.WithKind("KubernetesUpgrade").GroupKind()}
	}
	cr := crfake.NewClientBuilder().WithScheme(scheme).WithInterceptorFuncs(interceptor.Funcs{Get: noKind}).Build()
	err := Submit(context.Background(), cr, kubeupgrade.Spec{Version: "v1.34.10"})
	assert.ErrorIs(t, err, ErrNoController)
}

// TestFollow: what the controller reports ends the follow with the matching error, and a report about an
// older target or retry does not count.
func TestFollow(t *testing.T) {
	const version = "v1.34.10"
	testCases := map[string]struct {
		status  v1alpha1.KubernetesUpgradeStatus
		spec    func(*v1alpha1.KubernetesUpgradeSpec)
		check   func(t *testing.T, err error)
		reports int
	}{
		"done": {
			status: status(kubeupgrade.Progress{Phase: kubeupgrade.PhaseDone}),
			check:  func(t *testing.T, err error) { assert.NoError(t, err) }, reports: 1,
		},
		"a failed step": {
			status: status(kubeupgrade.Progress{Phase: kubeupgrade.PhaseFailed, Node: "worker-0", Step: agentapi.StepNode, Waiting: "exit status 1"}),
			check: func(t *testing.T, err error) {
				var failed *StepFailedError
				require.ErrorAs(t, err, &failed)
				assert.Equal(t, "worker-0", failed.Node)
				assert.EqualError(t, err, "worker-0 failed 'kubeadm upgrade node' to v1.34.10: exit status 1")
			},
			reports: 1,
		},
		"refused by the controller": {
			status: func() v1alpha1.KubernetesUpgradeStatus {
				s := status(kubeupgrade.Progress{Phase: kubeupgrade.PhaseFailed})
				s.Error = "downgrade"
				return s
			}(),
			check: func(t *testing.T, err error) {
				var refused *RefusedByControllerError
				require.ErrorAs(t, err, &refused)
				assert.Contains(t, err.Error(), "downgrade")
			},
			reports: 1,
		},
		"a report of another version stalls": {
			status: status(kubeupgrade.Progress{Phase: kubeupgrade.PhaseDone}),
			spec:   func(s *v1alpha1.KubernetesUpgradeSpec) { s.Version = "v1.33.13" },
			check: func(t *testing.T, err error) {
				var stalled *StalledError
				require.ErrorAs(t, err, &stalled)
				assert.Contains(t, err.Error(), "is its pod running?")
			},
		},
		"a report before the retry asked for stalls": {
			status: status(kubeupgrade.Progress{Phase: kubeupgrade.PhaseDone}),
			spec:   func(s *v1alpha1.KubernetesUpgradeSpec) { s.Retry = 1 },
			check: func(t *testing.T, err error) {
				var stalled *StalledError
				assert.ErrorAs(t, err, &stalled)
			},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			scheme := runtime.NewScheme()
			require.NoError(t, v1alpha1.AddToScheme(scheme))
			spec, err := v1alpha1.EncodeSpec(kubeupgrade.Spec{Version: version})
			require.NoError(t, err)
			if tc.spec != nil {
				tc.spec(&spec)
			}
			u := &v1alpha1.KubernetesUpgrade{Spec: spec, Status: tc.status}
			u.Name = v1alpha1.Name
			cr := crfake.NewClientBuilder().WithScheme(scheme).WithObjects(u).Build()
			reports := 0
			err = Follow(context.Background(), cr, version, Options{Poll: time.Millisecond, StepWait: 50 * time.Millisecond},
				func(_, _ kubeupgrade.Progress) { reports++ })
			tc.check(t, err)
			assert.Equal(t, tc.reports, reports)
		})
	}
}

func TestFollowCanceled(t *testing.T) {
	scheme := runtime.NewScheme()
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	cr := crfake.NewClientBuilder().WithScheme(scheme).Build()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Follow(ctx, cr, "v1.34.10", Options{Poll: time.Millisecond, StepWait: time.Hour}, func(_, _ kubeupgrade.Progress) {})
	assert.True(t, errors.Is(err, context.Canceled))
}

func status(p kubeupgrade.Progress) v1alpha1.KubernetesUpgradeStatus {
	var s v1alpha1.KubernetesUpgradeStatus
	s.SetProgress(p)
	return s
}
