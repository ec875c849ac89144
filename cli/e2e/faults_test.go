package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/localprovider/daemon"
	"github.com/constellation-go/constellation/localprovider/node"
)

// TestFaults is the reliability issue's fault suite on a real local cluster (`make fault-test`): the first
// control plane loses power in the middle of `kubeadm init`, the worker in the middle of its join, the
// worker's swtpm restarts under it, the provider daemon dies while the worker reboots, and the worker's
// state disk fills up. After each, the cluster is whole again (every node Ready and verified), each node
// still opens its state disk with the key it had from the start (its data written before the faults is
// readable; a new key would not open it), the master secret is unchanged, the audit log's chain is intact,
// and each fault was reported where a user looks: the CLI's error, a node condition, an Event, a log line.
// The JoinService, KeyService, kube-apiserver and etcd crashes under a burst of joins are
// joinservice/internal/server's TestJoinsSurviveFaults.
func TestFaults(t *testing.T) {
	c, ctx := newCLI(t, "fault-test")
	defer func() {
		// The node's logs of a failed init, as the CLI saved them.
		if data, err := os.ReadFile(filepath.Join(c.ws, "constellation-cluster.log")); err == nil && t.Failed() {
			var kubeadm []string
			for _, line := range strings.Split(string(data), "\n") {
				if strings.Contains(line, "kubeadm") {
					kubeadm = append(kubeadm, line)
				}
			}
			t.Logf("constellation-cluster.log, kubeadm's lines:\n%s", strings.Join(kubeadm[max(0, len(kubeadm)-80):], "\n"))
		}
	}()

	// 1. Power cut of the first control plane during kubeadm init. mini up fails and says how to go on; run
	// again, it starts the node on its state disk and initializes the cluster.
	cutCtx, stopWatching := context.WithCancel(ctx)
	cut := powerCutAt(cutCtx, t, func() (string, error) {
		name, err := readClusterName(c.ws)
		return node.StateDirFor(name, "cp-0"), err
	},
		"running kubeadm init", 3*time.Second)
	code, stdout, stderr := c.run(ctx, "mini", "up")
	stopWatching()
	cluster := clusterName(t, c.ws)
	cpDir, workerDir := node.StateDirFor(cluster, "cp-0"), node.StateDirFor(cluster, "worker-0")
	c.downAtEnd(cluster)
	require.NoError(t, <-cut, "the control plane was not power-cut during kubeadm init")
	require.NotZero(t, code, "mini up must fail when the control plane loses power during init:\n%s\n%s", stdout, stderr)
	t.Logf("mini up after the power cut of cp-0 during init:\n%s", stderr)
	assert.Contains(t, stderr, "Re-run 'constellation apply'", "the error says how to continue")

	// 2. Power cut of the worker during its join (the JoinService gave it its ticket and disk key; kubeadm
	// join runs). mini up itself completes: it waits for the control plane only.
	cutCtx, stopWatching = context.WithCancel(ctx)
	cut = powerCutAt(cutCtx, t, func() (string, error) { return workerDir, nil }, "node lock taken for join", 3*time.Second)
	code, stdout, stderr = c.run(ctx, "mini", "up")
	// The worker joins after the control plane is initialized: give it the time it needs.
	time.AfterFunc(3*time.Minute, stopWatching)
	require.Zero(t, code, "mini up after the power cut during init failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, "is initialized")
	require.NoError(t, <-cut, "the worker was not power-cut during its join")
	masterBefore := masterKey(t, c.ws)
	// The platform powers the worker on again: apply starts the stopped node.
	code, stdout, stderr = c.run(ctx, "apply")
	require.Zero(t, code, "apply after the worker's power cut failed:\n%s\n%s", stdout, stderr)
	kubeconfig := filepath.Join(c.ws, "constellation-admin.conf")
	waitHealthy(ctx, t, c, kubeconfig, "after the power cuts during init and join")
	// The data each node keeps on its state disk from now on must survive every fault below.
	diskUUIDs := map[string]string{}
	for name, dir := range map[string]string{"cp-0": cpDir, "worker-0": workerDir} {
		_, err := node.Output(ctx, dir, "sh", "-c", "echo kept > /var/lib/kubelet/fault-marker")
		require.NoError(t, err)
		uuid, err := node.Output(ctx, dir, "cat", filepath.Join(node.StateDiskPath, "disk-uuid"))
		require.NoError(t, err)
		diskUUIDs[name] = string(uuid)
	}

	// 3. The worker's swtpm restarts: the node's vTPM is gone, and with it the measurements of its boot.
	// Re-attestation flags and cordons it; verify names the node; a reboot brings it back.
	require.NoError(t, node.RestartVTPM(ctx, workerDir))
	var attested nodeAttestation
	require.Eventually(t, func() bool {
		attested = nodeAttested(ctx, t, kubeconfig, "worker-0")
		return attested.Status == "False" && attested.Cordoned
	}, reattestInterval+30*time.Second, time.Second, "re-attestation did not flag the worker whose vTPM restarted: %+v", attested)
	t.Logf("re-attestation after the worker's vTPM restarted: %s: %s", attested.Reason, attested.Message)
	code, stdout, _ = c.run(ctx, "verify", "--node", "worker-0")
	assert.Equal(t, 1, code, "a node without its vTPM must not verify:\n%s", stdout)
	assert.Contains(t, stdout, "✗ worker-0")
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, "")
	waitHealthy(ctx, t, c, kubeconfig, "after the worker's vTPM restarted and the worker rebooted")

	// 4. The provider daemon (metadata API, component server) dies, and the worker reboots during the
	// outage: it cannot find the cluster and says so in its log, retrying; apply restarts the daemon and
	// the worker rejoins.
	d, running := daemon.Running(cluster)
	require.True(t, running)
	require.NoError(t, d.Signal(syscall.SIGKILL))
	require.NoError(t, d.Wait(ctx))
	logOffset := bootLogSize(workerDir)
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, "")
	require.Eventually(t, func() bool {
		return metadataDown.MatchString(bootLogSince(workerDir, logOffset))
	}, 2*time.Minute, time.Second, "the worker does not report that it cannot reach the provider's metadata")
	code, stdout, stderr = c.run(ctx, "apply")
	require.Zero(t, code, "apply with the provider daemon down failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout+stderr, "Restarted the local provider daemon")
	waitHealthy(ctx, t, c, kubeconfig, "after the provider daemon was restarted")

	// 5. The worker's state disk fills up: the kubelet reports DiskPressure; a reboot with the disk full
	// still rejoins; once the space is free, the node is healthy again.
	// fallocate takes the blocks without writing them: the host's sparse state.img stays small.
	df, err := node.Output(ctx, workerDir, "sh", "-c", "set -e; avail=$(df --output=avail -B1 /var/lib/kubelet | tail -1); "+
		"fallocate -l $((avail - (1 << 20))) /var/lib/kubelet/fill; df -h /var/lib/kubelet")
	require.NoError(t, err, "%s", df)
	t.Logf("the worker's state disk, filled:\n%s", df)
	require.Eventually(t, func() bool {
		return nodeCondition(ctx, t, kubeconfig, "worker-0", "DiskPressure") == "True"
	}, 3*time.Minute, 2*time.Second, "the kubelet does not report DiskPressure on the full state disk")
	logOffset = bootLogSize(workerDir)
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, "")
	require.Eventually(t, func() bool {
		return strings.Contains(bootLogSince(workerDir, logOffset), "rejoined the cluster")
	}, 3*time.Minute, time.Second, "the worker with a full state disk did not rejoin")
	_, err = node.Output(ctx, workerDir, "rm", "/var/lib/kubelet/fill")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return nodeCondition(ctx, t, kubeconfig, "worker-0", "DiskPressure") == "False"
	}, 3*time.Minute, 2*time.Second, "DiskPressure does not clear once the state disk has space")
	waitHealthy(ctx, t, c, kubeconfig, "after the worker's state disk was full")

	// Nothing was lost: each disk has its UUID (so its key) and its data, the master secret is unchanged, and
	// every decision is in the audit log's intact chain.
	for name, dir := range map[string]string{"cp-0": cpDir, "worker-0": workerDir} {
		uuid, err := node.Output(ctx, dir, "cat", filepath.Join(node.StateDiskPath, "disk-uuid"))
		require.NoError(t, err)
		assert.Equal(t, diskUUIDs[name], string(uuid), "%s has its state disk", name)
		marker, err := node.Output(ctx, dir, "cat", "/var/lib/kubelet/fault-marker")
		require.NoError(t, err)
		assert.Equal(t, "kept\n", string(marker), "%s's state disk kept its data", name)
	}
	assert.Equal(t, masterBefore, masterKey(t, c.ws), "the master secret is unchanged")
	code, stdout, stderr = c.run(ctx, "audit", "verify")
	assert.Zero(t, code, "audit verify:\n%s\n%s", stdout, stderr)
}

// bootLogSize is the size of the node's bootstrapper log: what a restarted node logs comes after it (the log
// is appended across boots).
func bootLogSize(stateDir string) int {
	data, _ := os.ReadFile(filepath.Join(stateDir, "logs", "bootstrapper.log"))
	return len(data)
}

// bootLogSince is what the node's bootstrapper logged after offset bytes (all of it if the start rotated the
// log).
func bootLogSince(stateDir string, offset int) string {
	data, _ := os.ReadFile(filepath.Join(stateDir, "logs", "bootstrapper.log"))
	if len(data) < offset {
		return string(data)
	}
	return string(data[offset:])
}

// metadataDown is the join client's log line while the provider's metadata API does not answer.
var metadataDown = regexp.MustCompile(`retrying.*metadata: .*connection refused`)

// powerCutAt power-cuts the node of stateDir() once its bootstrapper's log shows line, after delay; the
// channel gets the result (an error if the line did not come before ctx ended). stateDir is asked again
// while it fails: the cluster's name is known once mini up has written the configuration.
func powerCutAt(ctx context.Context, t *testing.T, stateDir func() (string, error), line string, delay time.Duration) <-chan error {
	t.Helper()
	out := make(chan error, 1)
	go func() {
		var dir string
		// Only lines written from now on count: the log is appended across boots.
		offset := -1
		for {
			if dir == "" {
				if d, err := stateDir(); err == nil {
					dir = d
				}
			}
			if dir != "" {
				if offset < 0 {
					offset = bootLogSize(dir)
				} else if strings.Contains(bootLogSince(dir, offset), line) {
					break
				}
			}
			select {
			case <-ctx.Done():
				out <- fmt.Errorf("%q never appeared in %s's bootstrapper log: %w", line, dir, ctx.Err())
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		time.Sleep(delay)
		t.Logf("power cut of %s (%q in its log %s before)", filepath.Base(dir), line, delay)
		out <- node.PowerCut(context.WithoutCancel(ctx), dir)
	}()
	return out
}

// waitHealthy waits until both nodes are Ready, attested and not cordoned, and verify accepts them.
func waitHealthy(ctx context.Context, t *testing.T, c *cli, kubeconfig, when string) {
	t.Helper()
	start := time.Now()
	var lastOut string
	require.Eventually(t, func() bool {
		lastOut = kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json")
		return readyNodes(lastOut) == 2
	}, 10*time.Minute, 2*time.Second, "the nodes are not Ready %s:\n%s", when, lastOut)
	var verifyOut string
	require.Eventually(t, func() bool {
		var code int
		code, verifyOut, _ = c.run(ctx, "verify")
		return code == 0
	}, 5*time.Minute, 3*time.Second, "verify does not accept every node %s:\n%s", when, verifyOut)
	for _, name := range []string{"cp-0", "worker-0"} {
		var a nodeAttestation
		require.Eventually(t, func() bool {
			a = nodeAttested(ctx, t, kubeconfig, name)
			return a.Status == "True" && !a.Cordoned
		}, reattestInterval+30*time.Second, time.Second, "%s is not attested and schedulable %s: %+v", name, when, a)
	}
	t.Logf("FIGURES healthy %s, %s after the wait began", when, time.Since(start).Round(100*time.Millisecond))
}
