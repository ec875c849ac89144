package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHAControlPlane is a local cluster with two control planes and a worker (`make ha-test`): the second
// control plane joins through the JoinService (it gets the cluster's CA keys and becomes an etcd member),
// every node verifies, and an upgrade moves the first control plane with `kubeadm upgrade apply`, the
// second with `kubeadm upgrade node` (its own static pods and etcd member), then the worker, after which
// every control-plane component on both control planes runs the new version.
func TestHAControlPlane(t *testing.T) {
	c, ctx := newCLI(t, "ha-test")
	start := time.Now()
	code, stdout, stderr := c.run(ctx, "mini", "up", "--control-planes", "2", "--workers", "1")
	cluster := clusterName(t, c.ws)
	c.downAtEnd(cluster)
	require.Zero(t, code, "mini up --control-planes 2 failed:\n%s\n%s", stdout, stderr)
	kubeconfig := c.ws + "/constellation-admin.conf"

	var nodes string
	require.Eventually(t, func() bool {
		nodes = kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json")
		return readyNodes(nodes) == 3
	}, 10*time.Minute, 2*time.Second, "the 3 nodes are not Ready:\n%s", nodes)
	var verifyOut string
	require.Eventually(t, func() bool {
		code, verifyOut, _ = c.run(ctx, "verify")
		return code == 0
	}, 5*time.Minute, 3*time.Second, "verify does not accept every node:\n%s", verifyOut)
	assert.Contains(t, verifyOut, "All 3 nodes verified.")
	t.Logf("FIGURES mini up with 2 control planes and a worker: 3 nodes Ready and verified %s after it started",
		time.Since(start).Round(100*time.Millisecond))
	assert.Equal(t, "cp-0 cp-1", strings.TrimSpace(kubectl(ctx, t, kubeconfig, "-n", "kube-system", "get", "pods", "-l", "component=etcd",
		"-o", "jsonpath={range .items[*]}{.spec.nodeName} {end}")), "both control planes run an etcd member")

	next, built := builtNextKubernetes(t, "ha-test")
	if !built {
		t.Skipf("the components of Kubernetes %s are not built (make kubernetes-next)", next)
	}
	code, stdout, stderr = c.run(ctx, "upgrade", "check", "--update-config", "--kubernetes", next)
	require.Zero(t, code, "upgrade check failed:\n%s\n%s", stdout, stderr)
	start = time.Now()
	code, stdout, stderr = c.run(ctx, "upgrade", "apply")
	require.Zero(t, code, "upgrade apply failed:\n%s\n%s", stdout, stderr)
	t.Logf("FIGURES upgrade of 2 control planes and a worker to Kubernetes %s: %s", next, time.Since(start).Round(100*time.Millisecond))
	for _, step := range []string{
		"Node cp-0 (1 of 3): kubeadm upgrade apply to " + next,
		"Node cp-1 (2 of 3): kubeadm upgrade node to " + next,
		"Node worker-0 (3 of 3): kubeadm upgrade node to " + next,
	} {
		assert.Contains(t, stderr, step)
	}

	kubelets := kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.nodeInfo.kubeletVersion} {end}")
	assert.Equal(t, "cp-0="+next+" cp-1="+next+" worker-0="+next, strings.TrimSpace(kubelets))
	for _, component := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		images := kubectl(ctx, t, kubeconfig, "-n", "kube-system", "get", "pods", "-l", "component="+component,
			"-o", "jsonpath={range .items[*]}{.spec.nodeName}={.spec.containers[0].image} {end}")
		want := "cp-0=registry.k8s.io/" + component + ":" + next + " cp-1=registry.k8s.io/" + component + ":" + next
		assert.Equal(t, want, strings.TrimSpace(images), "%s on both control planes", component)
	}
	require.Eventually(t, func() bool {
		code, verifyOut, _ = c.run(ctx, "verify")
		return code == 0
	}, 5*time.Minute, 3*time.Second, "verify does not accept every node after the upgrade:\n%s", verifyOut)
	code, stdout, _ = c.run(ctx, "status")
	require.Zero(t, code)
	assert.Contains(t, stdout, "Kubernetes target "+next+" (constellation-conf.yaml): 3 of 3 nodes at target")
}
