// Package e2e runs the built CLI the way a user does: mini up, kubectl, verify, a tampered node, mini down.
// `make e2e-test` runs it (as root, after `make build`); it sets CONSTELLATION_E2E_CLI to the CLI.
package e2e

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/internal/testenv"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/versions"
	"github.com/constellation-go/constellation/localprovider/cluster"
	"github.com/constellation-go/constellation/localprovider/daemon"
	"github.com/constellation-go/constellation/localprovider/network"
	"github.com/constellation-go/constellation/localprovider/node"
)

const (
	cliEnv = "CONSTELLATION_E2E_CLI"
	// imageBEnv names a second node image (make image-b) the roll-out test moves the cluster to.
	imageBEnv = "CONSTELLATION_E2E_IMAGE_B"
	// workloadEnv names the workload's image archive (//cli/e2e/workload:image) that runs through it.
	workloadEnv = "CONSTELLATION_E2E_WORKLOAD"
)

func TestMain(m *testing.M) {
	// The test restarts a node itself, and this binary becomes the node's init.
	node.InitMain()
	os.Exit(m.Run())
}

// restartNode stops and starts a node as a reboot would: the image it runs (or image, if set) and its state
// disk, a fresh vTPM.
func restartNode(ctx context.Context, t *testing.T, ws, clusterName, name string, index int, image string) {
	t.Helper()
	spec, err := daemon.ReadSpec(clusterName)
	require.NoError(t, err)
	nw, err := spec.Network()
	require.NoError(t, err)
	if image == "" {
		image = nodeImages(t, ws)[name]
	}
	// The vTPM keeps its state (the provider certified it when it was new), so the platform CA only checks.
	ca, err := daemon.PlatformCA(clusterName, false)
	require.NoError(t, err)
	_, err = node.Restart(ctx, node.Config{
		Cluster: clusterName, Name: name, Index: index, Network: nw, ImageDir: image,
		MetadataURL: cluster.MetadataURL(nw.BridgeAddr()), PlatformCA: ca,
	})
	require.NoError(t, err)
}

// builtNextKubernetes is the newest Kubernetes version this release pins, and whether its components are
// built here; a strict run fails without them (makeTarget builds them).
func builtNextKubernetes(t *testing.T, makeTarget string) (string, bool) {
	t.Helper()
	supported := versions.SupportedKubernetes()
	next := supported[len(supported)-1]
	if versions.Built(next) {
		return next, true
	}
	if testenv.Strict() {
		t.Fatalf("the components of Kubernetes %s are not built: 'make %s' builds them", next, makeTarget)
	}
	return next, false
}

// nodeImages is the image directory each node runs, as the CLI last rendered the Terraform variables.
func nodeImages(t *testing.T, ws string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(ws, "constellation-terraform", "terraform.tfvars.json"))
	require.NoError(t, err)
	var vars struct {
		Image string `json:"image"`
		Nodes map[string]struct {
			Image string `json:"image"`
		} `json:"nodes"`
	}
	require.NoError(t, json.Unmarshal(data, &vars))
	out := map[string]string{}
	for name, n := range vars.Nodes {
		out[name] = cmp.Or(n.Image, vars.Image)
	}
	return out
}

// newCLI is the CLI that cliEnv names, in a new workspace, and a context that bounds the test; the test is
// skipped when cliEnv is not set (makeTarget sets it). The CLI's transcript is logged at the end if the test
// failed or runs verbosely.
func newCLI(t *testing.T, makeTarget string) (*cli, context.Context) {
	t.Helper()
	bin := os.Getenv(cliEnv)
	if bin == "" {
		t.Skipf("%s is not set: run 'make %s' (as root, after 'make build')", cliEnv, makeTarget)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	t.Cleanup(cancel)
	c := &cli{t: t, bin: bin, ws: t.TempDir(), logs: &bytes.Buffer{}}
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("CLI transcript:\n%s", c.logs.String())
		}
		// Last, so that the end of the output (all a CI summary may show) says what went wrong.
		if t.Failed() {
			t.Logf("What failed, in short:\n%s%s", c.nodeLogs, c.failures.String())
		}
	})
	return c, ctx
}

type cli struct {
	t    *testing.T
	bin  string
	ws   string
	logs *bytes.Buffer
	// failures is the end of each failed command's stderr; nodeLogs the end of each node's bootstrapper
	// log, taken before the cluster goes. Both are logged last when the test failed.
	failures bytes.Buffer
	nodeLogs string
}

// downAtEnd removes the cluster when the test ends, whatever happened, and checks that nothing of it
// remains; before that, if the test failed, it keeps the end of each node's bootstrapper log.
func (c *cli) downAtEnd(cluster string) {
	c.t.Cleanup(func() {
		if c.t.Failed() {
			c.nodeLogs = nodeLogTails(cluster, 25)
		}
		code, _, _ := c.run(context.Background(), "mini", "down")
		assert.Zero(c.t, code, "mini down")
		assertNothingLeft(c.t, cluster)
	})
}

// nodeLogTails is the last n lines of every node's bootstrapper log in the cluster.
func nodeLogTails(cluster string, n int) string {
	dirs, _ := os.ReadDir(filepath.Dir(node.StateDirFor(cluster, "x")))
	var b strings.Builder
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(node.StateDirFor(cluster, d.Name()), "logs", "bootstrapper.log"))
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "%s's bootstrapper log, its end:\n%s\n", d.Name(), lastLines(string(data), n))
	}
	return b.String()
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// run runs the CLI in the workspace and returns its exit code, stdout and stderr.
func (c *cli) run(ctx context.Context, args ...string) (int, string, string) {
	c.t.Helper()
	return c.runInterrupted(ctx, "", args...)
}

// runInterrupted is run, but sends the CLI SIGINT (as Ctrl-C does) once its stderr shows interruptAt.
func (c *cli) runInterrupted(ctx context.Context, interruptAt string, args ...string) (int, string, string) {
	c.t.Helper()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"-C", c.ws}, args...)...)
	var stdout bytes.Buffer
	stderr := &watchWriter{want: interruptAt, seen: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	if interruptAt != "" {
		go func() {
			select {
			case <-stderr.seen:
				time.Sleep(3 * time.Second)
				_ = cmd.Process.Signal(os.Interrupt)
			case <-ctx.Done():
			}
		}()
	}
	// The CLI must stop cleanly on Ctrl-C; a test timeout sends the same.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	start := time.Now()
	err := cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else {
		require.NoError(c.t, err)
	}
	fmt.Fprintf(c.logs, "$ constellation %s  (exit %d, %s)\n%s%s\n", strings.Join(args, " "), code,
		time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	if code != 0 {
		fmt.Fprintf(&c.failures, "$ constellation %s  (exit %d)\n%s\n", strings.Join(args, " "), code, lastLines(stderr.String(), 12))
	}
	return code, stdout.String(), stderr.String()
}

// watchWriter collects output and closes seen when want appears.
type watchWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if w.want != "" && strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return n, err
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestMiniUp is the CLI issue's end-to-end test: on this machine, `mini up` gives two Ready nodes that
// `verify` accepts; a node whose PCR changed fails `verify` with the PCR named; `mini down` leaves nothing.
func TestMiniUp(t *testing.T) {
	c, ctx := newCLI(t, "e2e-test")

	// Ctrl-C while the first control plane initializes: the CLI stops and says how to continue; the node
	// carries on. Running mini up again resumes.
	code, _, stderr := c.runInterrupted(ctx, "Initializing the first control plane", "mini", "up")
	cluster := clusterName(t, c.ws)
	c.downAtEnd(cluster)
	require.Equal(t, 1, code, "an interrupted mini up fails:\n%s", stderr)
	assert.Contains(t, stderr, "re-run")

	start := time.Now()
	code, stdout, stderr := c.run(ctx, "mini", "up")
	upTook := time.Since(start)
	require.Zero(t, code, "mini up failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, "is initialized")
	for _, f := range []string{"constellation-conf.yaml", "constellation-state.yaml", "constellation-admin.conf"} {
		assert.FileExists(t, filepath.Join(c.ws, f))
	}
	info, err := os.Stat(filepath.Join(c.ws, "constellation-mastersecret.json"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "the master secret must be private")
	assert.NotContains(t, stdout+stderr, masterKey(t, c.ws), "the master secret must never be printed")

	// kubectl, as the README tells users: both nodes Ready.
	readyStart := time.Now()
	kubeconfig := filepath.Join(c.ws, "constellation-admin.conf")
	var lastOut string
	require.Eventually(t, func() bool {
		lastOut = kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json")
		return readyNodes(lastOut) == 2
	}, 10*time.Minute, 2*time.Second, "kubectl get nodes does not show 2 Ready nodes:\n%s", lastOut)
	bothReady, readyAfterUp := time.Since(start), time.Since(readyStart)
	t.Logf("kubectl get nodes:\n%s", kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "wide"))

	// A second apply on the running cluster changes nothing.
	stateBefore, err := os.ReadFile(filepath.Join(c.ws, "constellation-state.yaml"))
	require.NoError(t, err)
	code, stdout, _ = c.run(ctx, "apply")
	assert.Zero(t, code)
	assert.Contains(t, stdout, "nothing to do")
	stateAfter, err := os.ReadFile(filepath.Join(c.ws, "constellation-state.yaml"))
	require.NoError(t, err)
	assert.Equal(t, string(stateBefore), string(stateAfter))

	// verify: both nodes, text and JSON. The VerificationService runs as a DaemonSet: wait for it.
	var verifyOut string
	require.Eventually(t, func() bool {
		code, verifyOut, _ = c.run(ctx, "verify")
		return code == 0
	}, 5*time.Minute, 3*time.Second, "verify never succeeded:\n%s", verifyOut)
	assert.Contains(t, verifyOut, "All 2 nodes verified")
	code, stdout, _ = c.run(ctx, "verify", "-o", "json")
	require.Zero(t, code)
	var res struct {
		Verified bool `json:"verified"`
		Nodes    []struct {
			Name     string `json:"name"`
			Verified bool   `json:"verified"`
		} `json:"nodes"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	assert.True(t, res.Verified)
	assert.Len(t, res.Nodes, 2)

	code, stdout, _ = c.run(ctx, "status")
	assert.Zero(t, code)
	assert.Contains(t, stdout, "cp-0")
	assert.Contains(t, stdout, "worker-0")
	assert.Contains(t, stdout, "Services: Helm release constellation-services "+versions.ServicesVersion+" (revision 1, deployed)",
		"init installs the services as a Helm release")

	// Tamper: extend PCR 12 of the worker's vTPM behind the node's back (as a changed boot component
	// would). verify must fail for that node, name the PCR, and still accept the other one.
	tp, err := tpm.OpenSocket(filepath.Join(node.StateDirFor(cluster, "worker-0"), "vtpm", "tpm.sock"))
	require.NoError(t, err)
	require.NoError(t, tpm.Extend(tp, 12, bytes.Repeat([]byte{0x42}, 32)))
	require.NoError(t, tp.Close())
	tampered := time.Now()
	code, stdout, stderr = c.run(ctx, "verify")
	assert.Equal(t, 1, code, "verify must fail for a tampered node")
	assert.Contains(t, stdout, "✓ cp-0")
	assert.Contains(t, stdout, "✗ worker-0")
	assert.Contains(t, stdout, "PCR 12", "verify must name the PCR that differs")
	assert.Contains(t, stderr, "1 of 2 nodes failed verification")
	// Nobody ran verify for the cluster: the JoinService's re-attestation flags the node within one
	// interval (the default 30 s, plus the round's own time), names the PCR, and cordons it.
	var attested nodeAttestation
	require.Eventually(t, func() bool {
		attested = nodeAttested(ctx, t, kubeconfig, "worker-0")
		return attested.Status == "False" && attested.Cordoned
	}, reattestInterval+15*time.Second, time.Second, "re-attestation did not flag and cordon the tampered worker: %+v", attested)
	t.Logf("FIGURES re-attestation: tampered worker flagged and cordoned %s after the tamper", time.Since(tampered).Round(100*time.Millisecond))
	assert.Contains(t, attested.Message, "PCR 12", "the condition names the PCR")
	assert.Equal(t, "True", nodeAttested(ctx, t, kubeconfig, "cp-0").Status, "the untouched control plane stays attested")
	code, stdout, _ = c.run(ctx, "status")
	assert.Zero(t, code)
	assert.Regexp(t, `worker-0\s+worker\s+\S+\s+yes\s+no \(cordoned\)`, stdout)
	assert.Contains(t, stdout, "worker-0 failed re-attestation")
	// Every decision so far is in cp-0's hash-chained audit log, the refusal of worker-0 among them.
	code, stdout, stderr = c.run(ctx, "audit", "verify")
	require.Zero(t, code, "audit verify failed:\n%s\n%s", stdout, stderr)
	assert.Regexp(t, `✓ cp-0 \(10\.42\.0\.2\): \d+ entries, chain intact`, stdout)
	assert.NotContains(t, stdout, " 0 failed)", "the refused re-attestation is recorded")

	// Every control plane restarts (the machine rebooted): its vTPM is fresh and its state disk locked;
	// only the master secret opens it again. recover must bring the Kubernetes API back.
	restartNode(ctx, t, c.ws, cluster, "cp-0", 0, "")
	code, _, _ = c.run(ctx, "verify", "--node", "cp-0")
	assert.Equal(t, 1, code, "a restarted control plane is not part of the cluster until recovered")
	recoverStart := time.Now()
	code, stdout, stderr = c.run(ctx, "recover")
	require.Zero(t, code, "recover failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, "Recovered 1 control plane")
	recoverTook := time.Since(recoverStart)
	require.Eventually(t, func() bool {
		lastOut = kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json")
		return readyNodes(lastOut) == 2
	}, 10*time.Minute, 2*time.Second, "the nodes are not Ready after recovery:\n%s", lastOut)
	require.Eventually(t, func() bool {
		code, verifyOut, _ = c.run(ctx, "verify", "--node", "cp-0")
		return code == 0
	}, 5*time.Minute, 3*time.Second, "the recovered control plane does not verify:\n%s", verifyOut)
	t.Logf("recovered: recover took %s; API and both nodes Ready %s after it started", recoverTook.Round(100*time.Millisecond),
		time.Since(recoverStart).Round(100*time.Millisecond))

	// A worker restarts (a reboot: fresh vTPM, so the tampering is gone; the same state disk). It rejoins on
	// its own through the JoinService (IssueRejoinTicket): the same node, its data kept, verified again.
	workerDir := node.StateDirFor(cluster, "worker-0")
	_, err = node.Output(ctx, workerDir, "sh", "-c", "echo kept > /var/lib/kubelet/e2e-marker")
	require.NoError(t, err)
	// Heartbeats are whole seconds: a report after this point is the restarted kubelet's.
	rejoinStart := time.Now().Truncate(time.Second).Add(time.Second)
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, "")
	require.Eventually(t, func() bool {
		lastOut = kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json")
		return slices.Contains(readySince(lastOut, rejoinStart), "worker-0")
	}, 10*time.Minute, 2*time.Second, "the restarted worker did not report Ready again:\n%s", lastOut)
	rejoinTook := time.Since(rejoinStart)
	marker, err := node.Output(ctx, workerDir, "cat", "/var/lib/kubelet/e2e-marker")
	require.NoError(t, err)
	assert.Equal(t, "kept\n", string(marker), "the rejoined worker's state disk kept its data")
	// The kubelet runs as soon as its binary is back; the rest of the recorded components follow.
	assert.Eventually(t, func() bool {
		bootLog, err := os.ReadFile(filepath.Join(workerDir, "logs", "bootstrapper.log"))
		return err == nil && strings.Contains(string(bootLog), "rejoined the cluster")
	}, 5*time.Minute, time.Second, "the worker's bootstrapper never finished rejoining")
	require.Eventually(t, func() bool {
		code, verifyOut, _ = c.run(ctx, "verify", "--node", "worker-0")
		return code == 0
	}, 5*time.Minute, 3*time.Second, "the rejoined worker does not verify:\n%s", verifyOut)
	t.Logf("FIGURES worker restart: Ready again %s after the restart began", rejoinTook.Round(100*time.Millisecond))
	// Booted afresh, it verifies again: re-attestation uncordons the node it cordoned.
	require.Eventually(t, func() bool {
		attested = nodeAttested(ctx, t, kubeconfig, "worker-0")
		return attested.Status == "True" && !attested.Cordoned
	}, reattestInterval+30*time.Second, time.Second, "re-attestation did not clear the rejoined worker: %+v", attested)

	// The figures bench/cli.sh prints.
	t.Logf("FIGURES mini up (resuming the interrupted one) %s; both nodes Ready %s after its start (%s after it returned)",
		upTook.Round(100*time.Millisecond), bothReady.Round(100*time.Millisecond), readyAfterUp.Round(100*time.Millisecond))

	testImageRollout(ctx, t, c, cluster, kubeconfig, workerDir)

	// Someone with root on cp-0 deletes an entry of its audit log: audit verify names the break.
	code, stdout, stderr = c.run(ctx, "audit", "verify")
	require.Zero(t, code, "audit verify failed before the tampering:\n%s\n%s", stdout, stderr)
	_, err = node.Output(ctx, node.StateDirFor(cluster, "cp-0"), "sed", "-i", "2d", "/etc/kubernetes/audit/joinservice.log")
	require.NoError(t, err)
	code, stdout, _ = c.run(ctx, "audit", "verify")
	assert.Equal(t, 1, code, "a deleted audit entry must be detected")
	assert.Contains(t, stdout, "✗ cp-0")
	assert.Contains(t, stdout, "does not follow entry 1")
}

// testImageRollout moves the running cluster to the newest pinned Kubernetes version and to image B (make
// image-b) with `upgrade check --update-config` and `upgrade apply`, while a workload (loaded with `mini image
// load`, its data on the nodes' encrypted state disks) is asked every 200 ms: `upgrade apply` is interrupted
// while the worker runs `kubeadm upgrade node`, the re-run while the worker moves to image B, and the third
// run completes; both nodes end on the new version and image B, Ready and verified, the workload answers with its data intact, and the cluster trusts only
// image B afterwards: a node that boots image A again does not verify and does not get back in.
func testImageRollout(ctx context.Context, t *testing.T, c *cli, cluster, kubeconfig, workerDir string) {
	imageB, workload := os.Getenv(imageBEnv), os.Getenv(workloadEnv)
	if imageB == "" || workload == "" {
		if testenv.Strict() {
			t.Fatalf("%s and %s must be set: 'make e2e-test' builds image B and the workload", imageBEnv, workloadEnv)
		}
		t.Logf("SKIPPED the image roll-out: %s or %s is not set (make e2e-test sets them)", imageBEnv, workloadEnv)
		return
	}
	imageA := nodeImages(t, c.ws)["worker-0"]
	require.NotEqual(t, imageA, imageB)
	cpDir := node.StateDirFor(cluster, "cp-0")

	// The workload: one replica per node, its data on the state disk.
	code, stdout, stderr := c.run(ctx, "mini", "image", "load", workload)
	require.Zero(t, code, "mini image load failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, workloadRef)
	manifest := filepath.Join(t.TempDir(), "workload.yaml")
	require.Contains(t, workloadManifest, "image: "+workloadRef, "workload.yaml runs the image the test loads")
	require.NoError(t, os.WriteFile(manifest, []byte(workloadManifest), 0o644))
	t.Log(kubectl(ctx, t, kubeconfig, "apply", "-f", manifest))
	waitWorkload := func(what string) {
		var out string
		require.Eventually(t, func() bool {
			out = kubectl(ctx, t, kubeconfig, "get", "deployment", "e2e-workload", "-o", "jsonpath={.status.readyReplicas}")
			return out == "2"
		}, 5*time.Minute, time.Second, "the workload does not have 2 ready replicas %s: %s\n%s", what, out,
			kubectl(ctx, t, kubeconfig, "get", "pods", "-o", "wide"))
	}
	waitWorkload("after it was deployed")
	dataBefore := map[string]string{}
	for name, dir := range map[string]string{"cp-0": cpDir, "worker-0": workerDir} {
		data, err := node.Output(ctx, dir, "cat", workloadData)
		require.NoError(t, err, "%s has no workload data", name)
		dataBefore[name] = string(data)
	}
	probe := startProbe(ctx, []string{"10.42.0.2", "10.42.0.3"})

	// The Kubernetes target: the newest version this release pins, when its components are built here.
	nextKubernetes, built := builtNextKubernetes(t, "e2e-test")
	if !built {
		t.Logf("SKIPPED the Kubernetes upgrade: the components of %s are not built (make kubernetes-next)", nextKubernetes)
		nextKubernetes = versions.DefaultKubernetes
	}
	code, stdout, stderr = c.run(ctx, "upgrade", "check", "--image", imageB, "--update-config", "--kubernetes", nextKubernetes)
	require.Zero(t, code, "upgrade check failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, "attestation.measurements")
	assert.Contains(t, stdout, "image")

	start := time.Now()
	if nextKubernetes != versions.DefaultKubernetes {
		// Ctrl-C while the worker runs `kubeadm upgrade node`: the node finishes its step on its own, and the
		// re-run below continues from there.
		code, _, stderr = c.runInterrupted(ctx, "asked worker-0 for 'kubeadm upgrade node'", "upgrade", "apply")
		require.Equal(t, 1, code, "an interrupted upgrade apply fails:\n%s", stderr)
		assert.Contains(t, stderr, "re-run 'constellation apply' to continue")
		assert.Contains(t, stderr, "kubeadm upgrade apply to "+nextKubernetes)
		// Without the CLI, the cluster's upgrade controller carries the upgrade to its end.
		var phase string
		require.Eventually(t, func() bool {
			phase = kubectl(ctx, t, kubeconfig, "get", "kubernetesupgrades", "cluster", "-o", "jsonpath={.status.phase}")
			return phase == "Done"
		}, 10*time.Minute, 3*time.Second, "the upgrade controller did not finish the upgrade without the CLI: %s", phase)
		t.Logf("FIGURES Kubernetes upgrade finished by the in-cluster controller %s after the upgrade started (the CLI stopped during the worker's step)",
			time.Since(start).Round(100*time.Millisecond))
		for _, line := range strings.Split(kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion}{\"\\n\"}{end}"), "\n") {
			if line != "" {
				assert.True(t, strings.HasSuffix(line, " "+nextKubernetes), "after the controller finished: %s", line)
			}
		}
	}
	// Ctrl-C while the worker moves to image B: the CLI stops and says how to continue; a re-run completes.
	code, _, stderr = c.runInterrupted(ctx, "rebooting worker-0", "upgrade", "apply")
	require.Equal(t, 1, code, "an interrupted upgrade apply fails:\n%s", stderr)
	assert.Contains(t, stderr, "re-run 'constellation apply' to continue")
	assert.Contains(t, stderr, "Roll-out started")
	code, stdout, stderr = c.run(ctx, "upgrade", "apply")
	took := time.Since(start)
	require.Zero(t, code, "the re-run of upgrade apply failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, "0 node(s) moved by this run", "the interrupted run moved both nodes; the re-run finished the roll-out")
	for name, img := range nodeImages(t, c.ws) {
		assert.Equal(t, imageB, img, "%s runs image B", name)
	}
	var lastOut string
	require.Eventually(t, func() bool {
		lastOut = kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json")
		return readyNodes(lastOut) == 2
	}, 5*time.Minute, 2*time.Second, "the nodes are not Ready after the roll-out:\n%s", lastOut)
	waitWorkload("after the roll-out")
	gap, answers := probe.stop()
	for name, dir := range map[string]string{"cp-0": cpDir, "worker-0": workerDir} {
		data, err := node.Output(ctx, dir, "cat", workloadData)
		require.NoError(t, err)
		assert.Equal(t, dataBefore[name], string(data), "%s's workload data survived the roll-out", name)
	}
	assert.Positive(t, answers, "the workload answered during the roll-out")
	marker, err := node.Output(ctx, workerDir, "cat", "/var/lib/kubelet/e2e-marker")
	require.NoError(t, err)
	assert.Equal(t, "kept\n", string(marker), "the worker's state disk kept its data through the roll-out")
	code, verifyOut, stderr := c.run(ctx, "verify")
	require.Zero(t, code, "verify after the roll-out:\n%s\n%s", verifyOut, stderr)
	assert.NotContains(t, stderr, "A roll-out", "the roll-out is over")
	code, stdout, _ = c.run(ctx, "apply")
	assert.Zero(t, code)
	assert.Contains(t, stdout, "nothing to do")
	code, stdout, _ = c.run(ctx, "status")
	assert.Zero(t, code)
	assert.Contains(t, stdout, "Node image target "+imageB+" (constellation-conf.yaml): 2 of 2 nodes run it")
	assert.Contains(t, stdout, "Kubernetes target "+nextKubernetes+" (constellation-conf.yaml): 2 of 2 nodes at target")
	if nextKubernetes != versions.DefaultKubernetes {
		assert.Contains(t, stdout, "Upgrade controller: Kubernetes "+nextKubernetes+", Done")
	}
	// The services were upgraded first, to the same chart: no new revision.
	assert.Contains(t, stdout, "Services: Helm release constellation-services "+versions.ServicesVersion+" (revision 1, deployed)")
	assert.Contains(t, stdout, ", Kubernetes "+nextKubernetes, "the API server runs it")
	t.Logf("FIGURES upgrade of 2 nodes to Kubernetes %s and image B (interrupted twice, then re-run): %s; the workload's "+
		"longest unanswered stretch %s (%d answers)", nextKubernetes, took.Round(100*time.Millisecond), gap.Round(100*time.Millisecond), answers)

	// Image A is no longer trusted: the worker rebooted into it neither verifies nor gets back in.
	retries := func() int {
		bootLog, _ := os.ReadFile(filepath.Join(workerDir, "logs", "bootstrapper.log"))
		return strings.Count(string(bootLog), "failed; retrying")
	}
	before := retries()
	since := time.Now().Truncate(time.Second).Add(time.Second)
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, imageA)
	require.Eventually(t, func() bool { return retries() > before }, 3*time.Minute, time.Second,
		"the worker on image A should fail to rejoin")
	// Outside the cluster it runs no VerificationService (a DaemonSet pod) either; that image A's PCRs no longer
	// verify is TestVerifyDuringRollout's part.
	code, verifyOut, _ = c.run(ctx, "verify", "--node", "worker-0")
	assert.Equal(t, 1, code, "a node on image A must not verify after the roll-out:\n%s", verifyOut)
	assert.NotContains(t, readySince(kubectl(ctx, t, kubeconfig, "get", "nodes", "-o", "json"), since), "worker-0")
}

// workloadManifest is the workload's Deployment, PodDisruptionBudget and Service (workload.yaml, which
// bench/k8supgrade.sh runs too).
//
//go:embed workload.yaml
var workloadManifest string

const (
	workloadRef  = "docker.io/constellation/e2e-workload:v1"
	workloadData = "/var/lib/kubelet/e2e-workload/workload.txt"
)

// probe asks the workload's NodePort on every node address every 200 ms; a round in which some node answers
// counts as answered.
type probe struct {
	cancel  context.CancelFunc
	done    chan struct{}
	longest time.Duration
	answers int
}

func startProbe(ctx context.Context, addrs []string) *probe {
	ctx, cancel := context.WithCancel(ctx)
	p := &probe{cancel: cancel, done: make(chan struct{})}
	client := &http.Client{Timeout: time.Second}
	go func() {
		defer close(p.done)
		last := time.Now()
		for ctx.Err() == nil {
			answered := false
			for _, a := range addrs {
				resp, err := client.Get("http://" + net.JoinHostPort(a, "31080") + "/")
				if err != nil {
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK && strings.HasPrefix(string(body), "written by") {
					answered = true
					break
				}
			}
			if answered {
				p.answers++
				last = time.Now()
			} else if gap := time.Since(last); gap > p.longest {
				p.longest = gap
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return p
}

// stop ends the probe and returns the longest time without an answer and the number of answered rounds.
func (p *probe) stop() (time.Duration, int) {
	p.cancel()
	<-p.done
	return p.longest, p.answers
}

func clusterName(t *testing.T, ws string) string {
	t.Helper()
	name, err := readClusterName(ws)
	require.NoError(t, err)
	return name
}

// readClusterName is the name in the workspace's configuration.
func readClusterName(ws string) (string, error) {
	data, err := os.ReadFile(filepath.Join(ws, "constellation-conf.yaml"))
	if err != nil {
		return "", err
	}
	var cfg struct {
		Name string `yaml:"name"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return "", err
	}
	if cfg.Name == "" {
		return "", errors.New("the configuration names no cluster")
	}
	return cfg.Name, nil
}

func masterKey(t *testing.T, ws string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(ws, "constellation-mastersecret.json"))
	require.NoError(t, err)
	var ms struct {
		Key string `json:"key"`
	}
	require.NoError(t, json.Unmarshal(data, &ms))
	require.NotEmpty(t, ms.Key)
	return ms.Key
}

func kubectl(ctx context.Context, t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	bin := filepath.Join(versions.CacheDir(versions.DefaultKubernetes), "bin", "kubectl")
	out, err := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kubeconfig, "--request-timeout", "10s"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// reattestInterval is the JoinService's default --reattest-interval.
const reattestInterval = 30 * time.Second

// nodeAttestation is a node's re-attestation condition and whether it is cordoned.
type nodeAttestation struct {
	Status, Reason, Message string
	Cordoned                bool
}

func nodeAttested(ctx context.Context, t *testing.T, kubeconfig, name string) nodeAttestation {
	t.Helper()
	n, ok := getNode(ctx, t, kubeconfig, name)
	if !ok {
		return nodeAttestation{}
	}
	out := nodeAttestation{Cordoned: n.Spec.Unschedulable}
	for _, c := range n.Status.Conditions {
		if c.Type == "ConstellationAttested" {
			out.Status, out.Reason, out.Message = c.Status, c.Reason, c.Message
		}
	}
	return out
}

// nodeCondition is the status of a node's condition of type typ ("" if it has none).
func nodeCondition(ctx context.Context, t *testing.T, kubeconfig, name, typ string) string {
	t.Helper()
	n, _ := getNode(ctx, t, kubeconfig, name)
	for _, c := range n.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return ""
}

type nodeObject struct {
	Spec struct {
		Unschedulable bool `json:"unschedulable"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type, Status, Reason, Message string
		} `json:"conditions"`
	} `json:"status"`
}

func getNode(ctx context.Context, t *testing.T, kubeconfig, name string) (nodeObject, bool) {
	t.Helper()
	var n nodeObject
	err := json.Unmarshal([]byte(kubectl(ctx, t, kubeconfig, "get", "node", name, "-o", "json")), &n)
	return n, err == nil
}

func readyNodes(listJSON string) int {
	return len(readySince(listJSON, time.Time{}))
}

// readySince returns the nodes whose kubelet reported them Ready after since (a node's status outlives its
// kubelet for a while: a stopped node still reads Ready until the node controller notices).
func readySince(listJSON string, since time.Time) []string {
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Conditions []struct {
					Type          string    `json:"type"`
					Status        string    `json:"status"`
					LastHeartbeat time.Time `json:"lastHeartbeatTime"`
				} `json:"conditions"`
			} `json:"status"`
		} `json:"items"`
	}
	if json.Unmarshal([]byte(listJSON), &list) != nil {
		return nil
	}
	var ready []string
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" && c.LastHeartbeat.After(since) {
				ready = append(ready, n.Metadata.Name)
			}
		}
	}
	return ready
}

func assertNothingLeft(t *testing.T, cluster string) {
	t.Helper()
	remains, err := network.Remains(cluster)
	assert.NoError(t, err)
	assert.Empty(t, remains, "network left behind")
	for _, n := range []string{"cp-0", "worker-0"} {
		assert.Empty(t, node.Remains(node.StateDirFor(cluster, n)), "node %s left something behind", n)
	}
	_, running := daemon.Running(cluster)
	assert.False(t, running, "the provider daemon still runs")
	assert.NoDirExists(t, daemon.Dir(cluster))
}
