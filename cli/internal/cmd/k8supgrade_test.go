package cmd

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func upgradeNode(name, kubelet string, controlPlane bool) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}},
		Status: corev1.NodeStatus{
			NodeInfo:   corev1.NodeSystemInfo{KubeletVersion: kubelet},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	if controlPlane {
		n.Labels["node-role.kubernetes.io/control-plane"] = ""
	}
	return n
}

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
				_, err := k8s.CoreV1().Nodes().Create(context.Background(), upgradeNode("node-"+string(rune('0'+i)), v, i == 0), metav1.CreateOptions{})
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

// fakeAgents plays the nodes' agents on a fake cluster: every instruction is done (the kubelet then runs the
// version) or, for failOn, fails.
type fakeAgents struct {
	k8s    kubernetes.Interface
	failOn map[string]agentapi.Step
	mu     sync.Mutex
	// steps are the steps carried out, as "node step".
	steps []string
}

func (f *fakeAgents) run(ctx context.Context) {
	for ctx.Err() == nil {
		nodes, err := f.k8s.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range nodes.Items {
				f.reconcile(ctx, &nodes.Items[i])
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fakeAgents) reconcile(ctx context.Context, node *corev1.Node) {
	target, err := agentapi.ReadTarget(node)
	if err != nil {
		return
	}
	if s, ok := agentapi.ReadStatus(node); ok && (s.Reached(target.Version, target.Step) || s.Phase == agentapi.PhaseFailed) {
		return
	}
	status := agentapi.Status{Version: target.Version, Step: target.Step, Phase: agentapi.PhaseDone}
	f.mu.Lock()
	fail := f.failOn[node.Name] == target.Step
	f.mu.Unlock()
	if fail {
		status.Phase, status.Message = agentapi.PhaseFailed, "kubeadm upgrade: exit status 1\nkubeadm's last output:\n[ERROR] etcd did not come up"
	} else if target.Step != agentapi.StepStage {
		node.Status.NodeInfo.KubeletVersion = target.Version
	}
	f.mu.Lock()
	f.steps = append(f.steps, node.Name+" "+string(target.Step))
	f.mu.Unlock()
	value, _ := status.Encode()
	node.Annotations[agentapi.StatusAnnotation] = value
	_, _ = f.k8s.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
}

func (f *fakeAgents) carriedOut() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.steps)
}

func joinServiceObjects(version string) (*corev1.ConfigMap, *appsv1.DaemonSet) {
	return &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: joinproto.ConfigMapName, Namespace: metav1.NamespaceSystem},
			Data:       map[string]string{joinproto.ComponentsKey: `{"components":[]}`},
		}, &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Name: joinproto.DaemonSetName, Namespace: metav1.NamespaceSystem},
			Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: joinproto.DaemonSetName, Args: []string{"--grpc-addr=:30090", joinproto.KubernetesVersionFlag + "=" + version},
			}}}}},
		}
}

// TestRollKubernetes: every node stages first; then the first control plane runs kubeadm upgrade apply, the
// JoinService moves to the new version, and every other node (control planes first) runs kubeadm upgrade
// node; nodes end uncordoned. A re-run after it finished, or after a failed step, continues where it stands.
func TestRollKubernetes(t *testing.T) {
	oldPoll, oldDrainRetry := kubernetesPoll, kubernetesDrainRetry
	kubernetesPoll, kubernetesDrainRetry = 10*time.Millisecond, 0
	t.Cleanup(func() { kubernetesPoll, kubernetesDrainRetry = oldPoll, oldDrainRetry })
	comps := []*components.Component{
		{Name: "kubeadm", Url: "http://10.42.0.1:9081/v1.34.10/kubeadm", Hash: "sha256:aa", InstallPath: "/var/lib/constellation/bin/kubeadm"},
		{Name: "kubelet", Url: "http://10.42.0.1:9081/v1.34.10/kubelet", Hash: "sha256:bb", InstallPath: "/var/lib/constellation/bin/kubelet"},
	}
	nodes := []target{
		{name: "worker-0", role: config.RoleWorker}, {name: "cp-1", role: config.RoleControlPlane}, {name: "cp-0", role: config.RoleControlPlane},
	}
	newCluster := func() *k8sfake.Clientset {
		cm, ds := joinServiceObjects("v1.33.13")
		objs := []runtime.Object{cm, ds, upgradeNode("cp-0", "v1.33.13", true), upgradeNode("cp-1", "v1.33.13", true),
			upgradeNode("worker-0", "v1.33.13", false)}
		// The control planes' static pods, as they run after the upgrade.
		for _, n := range []string{"cp-0", "cp-1"} {
			for _, c := range controlPlaneComponents {
				objs = append(objs, &corev1.Pod{
					// Mirror pods, which a drain leaves alone.
					ObjectMeta: metav1.ObjectMeta{Name: c + "-" + n, Namespace: metav1.NamespaceSystem,
						Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "hash"}},
					Spec:   corev1.PodSpec{NodeName: n, Containers: []corev1.Container{{Name: c, Image: "registry.k8s.io/" + c + ":v1.34.10"}}},
					Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
				})
			}
		}
		return k8sfake.NewClientset(objs...)
	}
	u := &kubernetesUpgrade{from: "v1.33.13", to: "v1.34.10"}

	t.Run("in order, and the JoinService follows the control plane", func(t *testing.T) {
		k8s := newCluster()
		agents := &fakeAgents{k8s: k8s}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go agents.run(ctx)
		e, _, errOut := testEnv(t, afero.NewMemMapFs(), &fakeInfra{}, nil, nil)
		p := e.progress()

		require.NoError(t, e.rollKubernetes(ctx, k8s, slices.Clone(nodes), u, comps, comps, p))
		steps := agents.carriedOut()
		require.Len(t, steps, 6)
		assert.ElementsMatch(t, []string{"cp-0 stage", "cp-1 stage", "worker-0 stage"}, steps[:3])
		assert.Equal(t, []string{"cp-0 apply", "cp-1 node", "worker-0 node"}, steps[3:])
		for _, n := range []string{"cp-0", "cp-1", "worker-0"} {
			node, err := k8s.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
			require.NoError(t, err)
			assert.False(t, node.Spec.Unschedulable, n)
			assert.Equal(t, "v1.34.10", node.Status.NodeInfo.KubeletVersion)
		}
		ds, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, joinproto.DaemonSetName, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Contains(t, ds.Spec.Template.Spec.Containers[0].Args, joinproto.KubernetesVersionFlag+"=v1.34.10")
		cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, joinproto.ConfigMapName, metav1.GetOptions{})
		require.NoError(t, err)
		got, err := components.UnmarshalList([]byte(cm.Data[joinproto.ComponentsKey]))
		require.NoError(t, err)
		assert.Len(t, got, 2)
		assert.Contains(t, errOut.String(), "kubeadm upgrade apply to v1.34.10")

		// A re-run finds every step done and gives no node anything to do.
		require.NoError(t, e.rollKubernetes(ctx, k8s, slices.Clone(nodes), u, comps, comps, p))
		assert.Len(t, agents.carriedOut(), 6)
	})

	t.Run("a failed step stops the upgrade with the node's reason; a re-run retries it", func(t *testing.T) {
		k8s := newCluster()
		agents := &fakeAgents{k8s: k8s, failOn: map[string]agentapi.Step{"cp-1": agentapi.StepNode}}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go agents.run(ctx)
		e, _, _ := testEnv(t, afero.NewMemMapFs(), &fakeInfra{}, nil, nil)

		err := e.rollKubernetes(ctx, k8s, slices.Clone(nodes), u, comps, comps, e.progress())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "cp-1 failed 'kubeadm upgrade node' to v1.34.10")
		assert.Contains(t, err.Error(), "etcd did not come up")
		assert.Contains(t, err.Error(), "re-run 'constellation apply' to retry")
		assert.NotContains(t, agents.carriedOut(), "worker-0 node", "nothing moves past a failed node")

		agents.mu.Lock()
		agents.failOn = nil
		agents.mu.Unlock()
		require.NoError(t, e.rollKubernetes(ctx, k8s, slices.Clone(nodes), u, comps, comps, e.progress()))
		steps := agents.carriedOut()
		assert.Equal(t, []string{"cp-1 node", "worker-0 node"}, steps[len(steps)-2:])
		assert.Equal(t, 1, count(steps, "cp-0 apply"), "the control plane's apply is not repeated")
	})
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// TestKubernetesOnly: an upgrade instruction carries the version's components, not the services' images
// (a node's agent refuses what its image does not pin for the version).
func TestKubernetesOnly(t *testing.T) {
	comps := []*components.Component{{Name: "kubeadm"}, {Name: "joinservice.tar"}, {Name: "kube-proxy.tar"}, {Name: "kubelet"}}
	got, err := kubernetesOnly(comps, "v1.34.10")
	require.NoError(t, err)
	var names []string
	for _, c := range got {
		names = append(names, c.GetName())
	}
	assert.Equal(t, []string{"kubeadm", "kube-proxy.tar", "kubelet"}, names)
	_, err = kubernetesOnly(comps, "v1.99.0")
	assert.Error(t, err)
}

// TestWaitNodeReady: a roll-out's node counts as back only with a Ready heartbeat from after its reboot.
func TestWaitNodeReady(t *testing.T) {
	oldPoll, oldWait := kubernetesPoll, rolloutWait
	kubernetesPoll, rolloutWait = 10*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { kubernetesPoll, rolloutWait = oldPoll, oldWait })
	rebooted := time.Now()
	n := upgradeNode("worker-0", "v1.34.10", false)
	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(rebooted.Add(-time.Minute))
	k8s := k8sfake.NewClientset(n)
	ctx := context.Background()

	err := waitNodeReady(ctx, k8s, "worker-0", rebooted)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "worker-0 was not Ready again within 200ms: Ready=True")

	n.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(rebooted.Add(time.Second))
	_, err = k8s.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.NoError(t, waitNodeReady(ctx, k8s, "worker-0", rebooted))

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, waitNodeReady(canceled, k8s, "missing", rebooted), context.Canceled)
}
