package cmd

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/kubeupgradetest"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions/components"
)

// TestPlanKubernetes: what apply decides from the configuration's Kubernetes version, the API server's and
// the kubelets', before anything changes.
func TestPlanKubernetes(t *testing.T) {
	testCases := map[string]struct {
		configured, apiServer string
		kubelets              []string
		built                 bool
		wantPlan              bool
		wantErr               []string
	}{
		"up to date": {
			configured: "v1.33.13", apiServer: "v1.33.13", kubelets: []string{"v1.33.13", "v1.33.13"},
		},
		"the next minor version": {
			configured: "v1.34.10", apiServer: "v1.33.13", kubelets: []string{"v1.33.13", "v1.33.13"}, built: true, wantPlan: true,
		},
		"a minor version given as 1.34": {
			configured: "1.34", apiServer: "v1.33.13", kubelets: []string{"v1.33.13"}, built: true, wantPlan: true,
		},
		"an interrupted upgrade continues: the control plane moved, a kubelet did not": {
			configured: "v1.34.10", apiServer: "v1.34.10", kubelets: []string{"v1.34.10", "v1.33.13"}, built: true, wantPlan: true,
		},
		"a downgrade is refused with the way back": {
			configured: "v1.33.13", apiServer: "v1.34.10", kubelets: []string{"v1.34.10"},
			wantErr: []string{"downgrades are not supported", "back to v1.34.10"},
		},
		"a kubelet newer than the target is refused": {
			configured: "v1.33.13", apiServer: "v1.33.13", kubelets: []string{"v1.33.13", "v1.34.10"},
			wantErr: []string{"the kubelet of node-1", "downgrades are not supported"},
		},
		"components not built here are refused with the command that builds them": {
			configured: "v1.34.10", apiServer: "v1.33.13", kubelets: []string{"v1.33.13"},
			wantErr: []string{"not built on this machine", "build.sh --version v1.34.10 all"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			cache := t.TempDir()
			t.Setenv("CONSTELLATION_CACHE", cache)
			if tc.built {
				dir := filepath.Join(cache, "kubernetes", "v1.34.10")
				require.NoError(t, os.MkdirAll(dir, 0o755))
				require.NoError(t, os.WriteFile(filepath.Join(dir, "components.json"), []byte("{}"), 0o644))
			}
			k8s := k8sfake.NewClientset()
			for i, v := range tc.kubelets {
				_, err := k8s.CoreV1().Nodes().Create(context.Background(), kubeupgradetest.Node("node-"+string(rune('0'+i)), v, i == 0), metav1.CreateOptions{})
				require.NoError(t, err)
			}
			k8s.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: tc.apiServer}
			fs := afero.NewMemMapFs()
			writeCreatedConfig(t, fs, measurements.M{})
			e, _, _ := testEnv(t, fs, &fakeInfra{}, nil, nil)
			e.deps.kube = func([]byte) (kubernetes.Interface, error) { return k8s, nil }
			e.files = file.NewHandler(fs)
			require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("apiVersion: v1\nkind: Config\n"), 0o600))
			cfg, err := e.loadConfig()
			require.NoError(t, err)
			cfg.KubernetesVersion = tc.configured

			u, err := e.planKubernetes(context.Background(), cfg)
			if len(tc.wantErr) > 0 {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantPlan, u != nil)
			if u != nil {
				assert.Equal(t, tc.apiServer, u.from)
				assert.Equal(t, "v1.34.10", u.to)
			}
		})
	}
}

// TestRollKubernetes: on a cluster without the upgrade controller, apply runs the upgrade's passes itself to
// the end and says where it stands; a failed step stops it with the node's reason, and a re-run retries that
// node.
func TestRollKubernetes(t *testing.T) {
	oldPoll := kubernetesPoll
	kubernetesPoll = 5 * time.Millisecond
	t.Cleanup(func() { kubernetesPoll = oldPoll })
	comps := []*components.Component{
		{Name: "kubeadm", Url: "http://10.42.0.1:9081/v1.34.10/kubeadm", Hash: "sha256:aa", InstallPath: "/var/lib/constellation/bin/kubeadm"},
		{Name: "kubelet", Url: "http://10.42.0.1:9081/v1.34.10/kubelet", Hash: "sha256:bb", InstallPath: "/var/lib/constellation/bin/kubelet"},
	}
	spec := kubeupgrade.Spec{Version: "v1.34.10", Components: comps, JoinComponents: comps}
	newCluster := func() *k8sfake.Clientset {
		objs := kubeupgradetest.JoinService("v1.33.13")
		objs = append(objs, kubeupgradetest.Node("cp-0", "v1.33.13", true), kubeupgradetest.Node("worker-0", "v1.33.13", false))
		objs = append(objs, kubeupgradetest.ControlPlanePods("cp-0", "v1.34.10")...)
		return k8sfake.NewClientset(objs...)
	}
	t.Run("to the end, saying where it stands", func(t *testing.T) {
		k8s := newCluster()
		(&kubeupgradetest.Agents{K8s: k8s}).Start(t)
		e, _, errOut := upgradeEnv(t, nil)
		require.NoError(t, e.rollKubernetes(context.Background(), k8s, spec, e.progress()))
		assert.Contains(t, errOut.String(), "the cluster has no upgrade controller")
		for _, want := range []string{
			"Kubernetes v1.34.10: verifying and installing its components on the nodes",
			"Node cp-0 (1 of 2): kubeadm upgrade apply to v1.34.10",
			"the JoinService hands joining nodes Kubernetes v1.34.10",
			"Node worker-0 (2 of 2): kubeadm upgrade node to v1.34.10",
			"cordoned worker-0",
			// The end-to-end test interrupts the CLI here, while the node runs its step.
			"asked worker-0 for 'kubeadm upgrade node' to v1.34.10",
			"worker-0 runs the kubelet of v1.34.10 and is Ready",
		} {
			assert.Contains(t, errOut.String(), want)
		}
	})

	t.Run("a failed step stops it with the node's reason; a re-run retries", func(t *testing.T) {
		k8s := newCluster()
		agents := &kubeupgradetest.Agents{K8s: k8s}
		agents.FailOn("worker-0", agentapi.StepNode)
		agents.Start(t)
		e, _, errOut := upgradeEnv(t, nil)
		err := e.rollKubernetes(context.Background(), k8s, spec, e.progress())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "worker-0 failed 'kubeadm upgrade node' to v1.34.10")
		assert.Contains(t, err.Error(), "etcd did not come up")
		assert.Contains(t, err.Error(), "re-run 'constellation apply' to retry")

		agents.FailOn("worker-0", "")
		require.NoError(t, e.rollKubernetes(context.Background(), k8s, spec, e.progress()))
		assert.Contains(t, errOut.String(), "worker-0 failed its step of the Kubernetes v1.34.10 upgrade before; it tries again")
		steps := agents.CarriedOut()
		require.Len(t, steps, 5)
		assert.ElementsMatch(t, []string{"cp-0 stage", "worker-0 stage"}, steps[:2])
		assert.Equal(t, []string{"cp-0 apply", "worker-0 node", "worker-0 node"}, steps[2:])
	})
}

// upgradeEnv is a test environment with an admin kubeconfig whose upgrade client is cr; nil is a cluster
// without the upgrade controller (its resource type is unknown).
func upgradeEnv(t *testing.T, cr client.Client) (*env, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	fs := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("apiVersion: v1\nkind: Config\n"), 0o600))
	e, out, errOut := testEnv(t, fs, &fakeInfra{}, nil, nil)
	e.files = file.NewHandler(fs)
	if cr == nil {
		scheme := runtime.NewScheme()
		require.NoError(t, v1alpha1.AddToScheme(scheme))
		noKind := func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
			return &meta.NoKindMatchError{GroupKind: v1alpha1.GroupVersion.WithKind("KubernetesUpgrade").GroupKind()}
		}
		cr = crfake.NewClientBuilder().WithScheme(scheme).WithInterceptorFuncs(interceptor.Funcs{Get: noKind}).Build()
	}
	e.deps.upgrades = func([]byte) (client.Client, error) { return cr, nil }
	return e, out, errOut
}

// TestRollKubernetesWithController: apply writes the target into the cluster's KubernetesUpgrade and follows
// what the upgrade controller reports; after a failed step, a re-run raises spec.retry.
func TestRollKubernetesWithController(t *testing.T) {
	oldPoll := kubernetesPoll
	kubernetesPoll = 5 * time.Millisecond
	t.Cleanup(func() { kubernetesPoll = oldPoll })
	comps := []*components.Component{{Name: "kubeadm", Url: "http://10.42.0.1:9081/v1.34.10/kubeadm", Hash: "sha256:aa", InstallPath: "/var/lib/constellation/bin/kubeadm"}}
	spec := kubeupgrade.Spec{Version: "v1.34.10", Components: comps, JoinComponents: comps}
	scheme := runtime.NewScheme()
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	newClient := func() client.Client {
		// As the API server does, a changed spec is a new generation.
		bump := func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
			obj.SetGeneration(obj.GetGeneration() + 1)
			return c.Update(ctx, obj, opts...)
		}
		return crfake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&v1alpha1.KubernetesUpgrade{}).
			WithInterceptorFuncs(interceptor.Funcs{Update: bump}).Build()
	}
	// controller plays the upgrade controller: once it sees a target that retries at least retry times, it
	// reports the given progresses.
	controller := func(ctx context.Context, cr client.Client, retry int64, reports ...kubeupgrade.Progress) {
		for _, prog := range reports {
			for ctx.Err() == nil {
				var u v1alpha1.KubernetesUpgrade
				if err := cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u); err == nil && u.Spec.Retry >= retry {
					u.Status.ObservedGeneration = u.Generation
					u.Status.Retried = u.Spec.Retry
					u.Status.SetProgress(prog)
					if cr.Status().Update(ctx, &u) == nil {
						break
					}
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	t.Run("it follows the controller to the end", func(t *testing.T) {
		cr := newClient()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go controller(ctx, cr, 0,
			kubeupgrade.Progress{Phase: kubeupgrade.PhaseStaging, Staging: 2, Reports: []string{"cp-0: installing the components of v1.34.10"}},
			kubeupgrade.Progress{Phase: kubeupgrade.PhaseUpgrading, Node: "worker-0", Index: 2, Total: 2, Step: agentapi.StepNode,
				Did: []string{"asked worker-0 for 'kubeadm upgrade node' to v1.34.10"}},
			kubeupgrade.Progress{Phase: kubeupgrade.PhaseDone, Finished: []string{"cp-0", "worker-0"}},
		)
		e, _, errOut := upgradeEnv(t, cr)
		require.NoError(t, e.rollKubernetes(ctx, nil, spec, e.progress()))
		for _, want := range []string{
			"cp-0: installing the components of v1.34.10",
			"Node worker-0 (2 of 2): kubeadm upgrade node to v1.34.10",
			"asked worker-0 for 'kubeadm upgrade node' to v1.34.10",
		} {
			assert.Contains(t, errOut.String(), want)
		}
		var u v1alpha1.KubernetesUpgrade
		require.NoError(t, cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u))
		decoded, err := u.Spec.Decode()
		require.NoError(t, err)
		assert.Equal(t, "v1.34.10", decoded.Version)
		assert.Len(t, decoded.Components, 1)
	})

	t.Run("a failed step: the node's reason, and a re-run asks for a retry", func(t *testing.T) {
		cr := newClient()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go controller(ctx, cr, 0, kubeupgrade.Progress{Phase: kubeupgrade.PhaseFailed, Node: "worker-0", Index: 2, Total: 2,
			Step: agentapi.StepNode, Waiting: "kubeadm upgrade: exit status 1"})
		e, _, _ := upgradeEnv(t, cr)
		err := e.rollKubernetes(ctx, nil, spec, e.progress())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "worker-0 failed 'kubeadm upgrade node' to v1.34.10: kubeadm upgrade: exit status 1")
		assert.Contains(t, err.Error(), "re-run 'constellation apply' to retry")

		go controller(ctx, cr, 1, kubeupgrade.Progress{Phase: kubeupgrade.PhaseDone})
		require.NoError(t, e.rollKubernetes(ctx, nil, spec, e.progress()))
		var u v1alpha1.KubernetesUpgrade
		require.NoError(t, cr.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u))
		assert.Equal(t, int64(1), u.Spec.Retry)
	})
}

// TestReportKubernetesOrder: what finished a node (the JoinService's move, its uncordon) is printed under
// that node's heading, although the controller reports it in the pass that moves on to the next node.
func TestReportKubernetesOrder(t *testing.T) {
	var out bytes.Buffer
	p := &progress{w: &out}
	const version = "v1.34.10"
	last := kubeupgrade.Progress{Phase: kubeupgrade.PhaseUpgrading, Node: "cp-0", Index: 1, Total: 2, Step: "apply"}
	reportKubernetes(p, kubeupgrade.Progress{}, last, version)
	next := kubeupgrade.Progress{
		Phase: kubeupgrade.PhaseUpgrading, Node: "worker-0", Index: 2, Total: 2, Step: "node", Finished: []string{"cp-0"},
		Did: []string{"the JoinService hands joining nodes Kubernetes " + version, "uncordoned cp-0", "cordoned worker-0"},
	}
	reportKubernetes(p, last, next, version)
	text := out.String()
	order := []string{
		"Node cp-0 (1 of 2)", "cp-0 runs the kubelet of " + version, "the JoinService hands joining nodes", "uncordoned cp-0",
		"Node worker-0 (2 of 2)", "cordoned worker-0",
	}
	at := -1
	for _, s := range order {
		i := strings.Index(text, s)
		require.GreaterOrEqual(t, i, 0, "%q missing from:\n%s", s, text)
		assert.Greater(t, i, at, "%q out of order in:\n%s", s, text)
		at = i
	}
}

// TestWaitNodesJoined: an upgrade starts only once every node of the configuration is a Ready node of the
// cluster (mini up returns before its worker joined), and says what it waits for.
func TestWaitNodesJoined(t *testing.T) {
	node := func(name string, ready bool) *corev1.Node {
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}}}}
	}
	testCases := map[string]struct {
		nodes []*corev1.Node
		// joinAfter adds worker-0, Ready, after that many lists.
		joinAfter int
		listErr   bool
		wantErr   []string
		wantOut   string
	}{
		"every node Ready: no wait, nothing said": {nodes: []*corev1.Node{node("cp-0", true), node("worker-0", true)}},
		"the worker joins while the CLI waits":    {nodes: []*corev1.Node{node("cp-0", true)}, joinAfter: 2, wantOut: "Waiting until worker-0 is a Ready node"},
		"a node that stays NotReady stops the upgrade with the way on": {
			nodes:   []*corev1.Node{node("cp-0", true), node("worker-0", false)},
			wantErr: []string{"worker-0 did not become a Ready node", "re-run 'constellation apply'"}, wantOut: "Waiting until worker-0",
		},
		"the API does not answer": {listErr: true, wantErr: []string{"listing the cluster's nodes"}},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			k8s := k8sfake.NewClientset()
			for _, n := range tc.nodes {
				_, err := k8s.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{})
				require.NoError(t, err)
			}
			lists := 0
			k8s.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
				lists++
				if tc.listErr {
					return true, nil, errors.New("connection refused")
				}
				if tc.joinAfter > 0 && lists == tc.joinAfter {
					require.NoError(t, k8s.Tracker().Add(node("worker-0", true)))
				}
				return false, nil, nil
			})
			var out bytes.Buffer
			err := waitNodesJoined(context.Background(), k8s, []string{"cp-0", "worker-0"}, 50*time.Millisecond, time.Millisecond, &progress{w: &out})
			if len(tc.wantErr) > 0 {
				require.Error(t, err)
				for _, want := range tc.wantErr {
					assert.Contains(t, err.Error(), want)
				}
			} else {
				require.NoError(t, err)
			}
			if tc.wantOut == "" {
				assert.Empty(t, out.String())
			} else {
				assert.Contains(t, out.String(), tc.wantOut)
			}
		})
	}
}
