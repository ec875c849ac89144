package controller

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/constellation-go/constellation/bootstrapper/agentapi"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/kubeupgradetest"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/kubetest"
	"github.com/constellation-go/constellation/internal/versions/components"
	"github.com/constellation-go/constellation/joinservice/joinproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// client-go's and controller-runtime's process-wide workers.
		goleak.IgnoreTopFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"),
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		goleak.IgnoreAnyFunction("k8s.io/apimachinery/pkg/watch.(*Broadcaster).loop"),
	)
}

const (
	oldVersion = "v1.33.13"
	newVersion = "v1.34.10"
)

// TestController: on a real API server, the controller carries a KubernetesUpgrade out to the end with no
// CLI around (the nodes' agents played by kubeupgradetest), reports in its status, stops at a failed step
// with the node's reason, and goes on when spec.retry is raised. The CRD is the one deployed.
func TestController(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := context.Background()
	installCRD(ctx, t, cluster)
	k8s := cluster.Client

	for _, obj := range kubeupgradetest.JoinService(oldVersion) {
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			_, err := k8s.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			require.NoError(t, err)
		case *appsv1.DaemonSet:
			o.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "joinservice"}}
			o.Spec.Template.Labels = map[string]string{"app": "joinservice"}
			o.Spec.Template.Spec.Containers[0].Image = "joinservice:test"
			_, err := k8s.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
			require.NoError(t, err)
		}
	}
	for _, n := range []*corev1.Node{kubeupgradetest.Node("cp-0", oldVersion, true), kubeupgradetest.Node("worker-0", oldVersion, false)} {
		created, err := k8s.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		require.NoError(t, err)
		created.Status = n.Status
		_, err = k8s.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
		require.NoError(t, err)
	}
	for _, obj := range kubeupgradetest.ControlPlanePods("cp-0", newVersion) {
		pod := obj.(*corev1.Pod)
		created, err := k8s.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		require.NoError(t, err)
		created.Status = pod.Status
		_, err = k8s.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		require.NoError(t, err)
	}

	agents := &kubeupgradetest.Agents{K8s: k8s, Delay: 50 * time.Millisecond}
	agents.FailOn("worker-0", agentapi.StepNode)
	agents.Start(t)
	c := startManager(t, cluster)

	comps, err := components.MarshalList([]*components.Component{
		{Name: "kubeadm", Url: "http://10.42.0.1:9081/v1.34.10/kubeadm", Hash: "sha256:aa", InstallPath: "/var/lib/constellation/bin/kubeadm"},
	})
	require.NoError(t, err)
	u := &v1alpha1.KubernetesUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name},
		Spec:       v1alpha1.KubernetesUpgradeSpec{Version: newVersion, Components: string(comps), JoinComponents: string(comps)},
	}
	require.NoError(t, c.Create(ctx, u))

	// The worker fails its step: the status says so, with its reason, and nothing else moves.
	status := waitPhase(ctx, t, c, "Failed")
	assert.Equal(t, "worker-0", status.Node)
	assert.Equal(t, "node", status.Step)
	assert.Contains(t, status.Waiting, "etcd did not come up")
	assert.Equal(t, []string{"cp-0"}, status.Finished)
	ds, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, joinproto.DaemonSetName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.NotEmpty(t, ds.Spec.Template.Annotations[joinproto.RestartAnnotation], "the JoinService is restarted for its new config")
	cm, err := k8s.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, joinproto.ConfigMapName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, newVersion, cm.Data[joinproto.KubernetesVersionKey])

	// Raising spec.retry makes the node try again; the upgrade ends.
	agents.FailOn("worker-0", "")
	require.NoError(t, c.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, u))
	u.Spec.Retry = 1
	require.NoError(t, c.Update(ctx, u))
	status = waitPhase(ctx, t, c, "Done")
	assert.Equal(t, int64(1), status.Retried)
	assert.Equal(t, []string{"cp-0", "worker-0"}, status.Finished)
	assert.Empty(t, status.Error)
	steps := agents.CarriedOut()
	require.Len(t, steps, 5)
	assert.ElementsMatch(t, []string{"cp-0 stage", "worker-0 stage"}, steps[:2])
	assert.Equal(t, []string{"cp-0 apply", "worker-0 node", "worker-0 node"}, steps[2:])
	for _, name := range []string{"cp-0", "worker-0"} {
		node, err := k8s.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, newVersion, node.Status.NodeInfo.KubeletVersion)
		assert.False(t, node.Spec.Unschedulable, name)
	}
}

// TestControllerRefusesBadSpec: the API server refuses a spec the CRD's schema does not allow, and the
// controller reports one it cannot decode instead of acting on it.
func TestControllerRefusesBadSpec(t *testing.T) {
	cluster := kubetest.Start(t)
	ctx := context.Background()
	installCRD(ctx, t, cluster)
	c := startManager(t, cluster)

	bad := &v1alpha1.KubernetesUpgrade{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name},
		Spec:       v1alpha1.KubernetesUpgradeSpec{Version: "latest", Components: "{}", JoinComponents: "{}"},
	}
	err := c.Create(ctx, bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "spec.version")

	bad.Spec.Version = newVersion
	bad.Spec.Components = "not JSON"
	require.NoError(t, c.Create(ctx, bad))
	status := waitPhase(ctx, t, c, "Failed")
	assert.Contains(t, status.Error, "spec.components")
}

func installCRD(ctx context.Context, t *testing.T, cluster *kubetest.Cluster) {
	t.Helper()
	var crd apiextensionsv1.CustomResourceDefinition
	require.NoError(t, yaml.Unmarshal(v1alpha1.CRD, &crd))
	ext, err := apiextensions.NewForConfig(cluster.Config)
	require.NoError(t, err)
	_, err = ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true
			}
		}
		return false
	}, 30*time.Second, 100*time.Millisecond, "the CRD is never established")
}

// startManager runs the controller in a manager until the test ends and returns a client.
func startManager(t *testing.T, cluster *kubetest.Cluster) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(scheme))
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	mgr, err := ctrl.NewManager(cluster.Config, ctrl.Options{
		Scheme: scheme, Logger: logr.Discard(), Metrics: metricsserver.Options{BindAddress: "0"},
		// Each test runs its own manager with the same controller in this process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	require.NoError(t, err)
	r := &Reconciler{Client: mgr.GetClient(), Kube: cluster.Client, Interval: 50 * time.Millisecond, IdleInterval: 200 * time.Millisecond}
	require.NoError(t, r.SetupWithManager(mgr))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	c, err := client.New(cluster.Config, client.Options{Scheme: scheme})
	require.NoError(t, err)
	return c
}

func waitPhase(ctx context.Context, t *testing.T, c client.Client, phase string) v1alpha1.KubernetesUpgradeStatus {
	t.Helper()
	var u v1alpha1.KubernetesUpgrade
	// WithT: a failure shows the last status seen, not the one before the wait.
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		require.NoError(ct, c.Get(ctx, client.ObjectKey{Name: v1alpha1.Name}, &u))
		assert.Equal(ct, phase, u.Status.Phase, "the KubernetesUpgrade's status: %+v", u.Status)
	}, 60*time.Second, 50*time.Millisecond, "the KubernetesUpgrade never reached %s", phase)
	return u.Status
}
