package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/localprovider/node"

	"github.com/spf13/afero"
)

// TestUserManagedKeys is a local cluster in user-managed mode (`make kms-test`): `mini up --kms local-kms`
// has the local provider run local-kms on the bridge, and every disk key comes from it. The test checks
// that each node keeps only its wrapped key beside its disk and the KeyService only wrapped keys; that
// `recover` after every control plane restarted unwraps the control plane's key with the admin's KMS
// access; that a refusing KMS (the key disabled) stops a rejoin with the KMS named and the rejoin completes
// once the key is enabled; and that moving to another KMS key (apply) re-wraps every key, after which the
// old key can be disabled and every node still opens its disk after a restart.
func TestUserManagedKeys(t *testing.T) {
	c, ctx := newCLI(t, "kms-test")
	start := time.Now()
	code, stdout, stderr := c.run(ctx, "mini", "up", "--kms", "local-kms")
	cluster := clusterName(t, c.ws)
	c.downAtEnd(cluster)
	require.Zero(t, code, "mini up --kms local-kms failed:\n%s\n%s", stdout, stderr)
	kubeconfig := filepath.Join(c.ws, "constellation-admin.conf")
	waitHealthy(ctx, t, c, kubeconfig, "after mini up with user-managed keys")
	t.Logf("FIGURES user-managed mini up: both nodes Ready and verified %s after it started", time.Since(start).Round(100*time.Millisecond))
	code, stdout, _ = c.run(ctx, "status")
	require.Zero(t, code)
	assert.Contains(t, stdout, "user-managed: aws-kms")

	var cfg config.Config
	require.NoError(t, file.NewHandler(afero.NewOsFs()).ReadYAML(filepath.Join(c.ws, config.FileName), &cfg))
	require.NotNil(t, cfg.KMS.AWSKMS)
	kmsAPI := localkms.Client(cfg.KMS.AWSKMS.Endpoint)
	firstKey := describeKey(ctx, t, kmsAPI, cfg.KMS.AWSKMS.KeyID)
	cpDir, workerDir := node.StateDirFor(cluster, "cp-0"), node.StateDirFor(cluster, "worker-0")
	dirs := map[string]string{"cp-0": cpDir, "worker-0": workerDir}

	// Each node keeps its key wrapped by the KMS key beside its disk; the KeyService keeps the same ones.
	wrappedInCluster := wrappedKeys(ctx, t, kubeconfig)
	diskKeys, diskUUIDs := map[string][]byte{}, map[string]string{}
	for name, dir := range dirs {
		uuid, blob := besideDisk(ctx, t, dir)
		key, err := awskms.Unwrap(ctx, kmsAPI, firstKey, uuid, joinproto.StateDiskKeyLength, blob)
		require.NoError(t, err, "%s's wrapped key is its disk key wrapped by the KMS key", name)
		diskKeys[name], diskUUIDs[name] = key, uuid
		require.Contains(t, wrappedInCluster, uuid+".64", "the KeyService keeps %s's wrapped key", name)
		_, err = node.Output(ctx, dir, "sh", "-c", "echo kept > /var/lib/kubelet/kms-marker")
		require.NoError(t, err)
	}

	// Every control plane restarts: recover unwraps cp-0's key with the KMS and unlocks it.
	restartNode(ctx, t, c.ws, cluster, "cp-0", 0, "")
	recoverStart := time.Now()
	code, stdout, stderr = c.run(ctx, "recover")
	require.Zero(t, code, "recover failed:\n%s\n%s", stdout, stderr)
	assert.Contains(t, stdout, "Recovered 1 control plane")
	waitHealthy(ctx, t, c, kubeconfig, "after recover with user-managed keys")
	t.Logf("FIGURES user-managed recover: healthy %s after recover started", time.Since(recoverStart).Round(100*time.Millisecond))

	// The KMS refuses (the key is disabled) while the worker restarts: its rejoin fails with the KMS and the
	// reason named, and it keeps trying; once the key is enabled, it rejoins with the same disk.
	_, err := kmsAPI.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(firstKey)})
	require.NoError(t, err)
	logOffset := bootLogSize(workerDir)
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, "")
	require.Eventually(t, func() bool {
		log := bootLogSince(workerDir, logOffset)
		return strings.Contains(log, "aws-kms: the KMS") && strings.Contains(log, "did not unwrap data key "+diskUUIDs["worker-0"])
	}, 3*time.Minute, time.Second, "the worker's log does not name the refusing KMS:\n%s", bootLogSince(workerDir, logOffset))
	t.Logf("the worker's rejoin while the KMS key is disabled: %s", lastLine(bootLogSince(workerDir, logOffset), "aws-kms"))
	_, err = kmsAPI.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(firstKey)})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return strings.Contains(bootLogSince(workerDir, logOffset), "rejoined the cluster")
	}, 3*time.Minute, time.Second, "the worker did not rejoin once the KMS key was enabled")
	waitHealthy(ctx, t, c, kubeconfig, "after the KMS key was enabled again")

	// Rotation: the configuration moves to another KMS key; apply has the KeyService re-wrap every key.
	secondKey, err := localkms.EnsureKey(ctx, cfg.KMS.AWSKMS.Endpoint, "alias/constellation-rotated")
	require.NoError(t, err)
	cfgPath := filepath.Join(c.ws, config.FileName)
	cfgText, err := os.ReadFile(cfgPath)
	require.NoError(t, err)
	cfgText = []byte(strings.Replace(string(cfgText), "keyID: "+cfg.KMS.AWSKMS.KeyID, "keyID: alias/constellation-rotated", 1))
	require.NoError(t, os.WriteFile(cfgPath, cfgText, 0o644))
	moveStart := time.Now()
	code, stdout, stderr = c.run(ctx, "apply")
	require.Zero(t, code, "apply with a new KMS key failed:\n%s\n%s", stdout, stderr)
	t.Logf("FIGURES key move: apply (KeyService restarted, every stored key re-wrapped) took %s", time.Since(moveStart).Round(100*time.Millisecond))
	assert.Contains(t, stderr, "Moving the cluster's keys to KMS key alias/constellation-rotated")
	for uuid, blob := range wrappedKeys(ctx, t, kubeconfig) {
		_, err := awskms.Unwrap(ctx, kmsAPI, secondKey, strings.TrimSuffix(uuid, ".64"), joinproto.StateDiskKeyLength, blob)
		require.NoError(t, err, "the KeyService's %s is wrapped by the new key", uuid)
	}
	code, stdout, _ = c.run(ctx, "status")
	require.Zero(t, code)
	assert.Contains(t, stdout, "key-id=alias/constellation-rotated")
	assert.Contains(t, stdout, "(revision 2, deployed)", "the new key is a value of the services' release")

	// Each node moves its own copy at its next recover or restart (the old key still enabled)...
	restartNode(ctx, t, c.ws, cluster, "cp-0", 0, "")
	code, stdout, stderr = c.run(ctx, "recover")
	require.Zero(t, code, "recover after the key moved failed:\n%s\n%s", stdout, stderr)
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, "")
	waitHealthy(ctx, t, c, kubeconfig, "after each node restarted once following the key move")
	// ...after which the old key can go: every node still opens its disk after a restart.
	_, err = kmsAPI.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(firstKey)})
	require.NoError(t, err)
	for name, dir := range dirs {
		uuid, blob := besideDisk(ctx, t, dir)
		key, err := awskms.Unwrap(ctx, kmsAPI, secondKey, uuid, joinproto.StateDiskKeyLength, blob)
		require.NoError(t, err, "%s's own copy is wrapped by the new key", name)
		assert.Equal(t, diskKeys[name], key, "%s's disk key did not change", name)
	}
	restartNode(ctx, t, c.ws, cluster, "cp-0", 0, "")
	code, stdout, stderr = c.run(ctx, "recover")
	require.Zero(t, code, "recover with the old KMS key disabled failed:\n%s\n%s", stdout, stderr)
	restartNode(ctx, t, c.ws, cluster, "worker-0", 1, "")
	waitHealthy(ctx, t, c, kubeconfig, "after restarts with the old KMS key disabled")

	// Nothing was lost: the same disks with their data.
	for name, dir := range dirs {
		uuid, _ := besideDisk(ctx, t, dir)
		assert.Equal(t, diskUUIDs[name], uuid)
		marker, err := node.Output(ctx, dir, "cat", "/var/lib/kubelet/kms-marker")
		require.NoError(t, err)
		assert.Equal(t, "kept\n", string(marker), "%s's state disk kept its data", name)
	}
}

// describeKey returns the ARN of the KMS key keyID names.
func describeKey(ctx context.Context, t *testing.T, api *kms.Client, keyID string) string {
	t.Helper()
	out, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(keyID)})
	require.NoError(t, err)
	return aws.ToString(out.KeyMetadata.Arn)
}

// besideDisk returns the UUID of a node's state disk and the wrapped key kept beside it.
func besideDisk(ctx context.Context, t *testing.T, dir string) (string, []byte) {
	t.Helper()
	uuid, err := node.Output(ctx, dir, "cat", filepath.Join(node.StateDiskPath, "disk-uuid"))
	require.NoError(t, err)
	blob, err := node.Output(ctx, dir, "cat", filepath.Join(node.StateDiskPath, "wrapped-disk-key"))
	require.NoError(t, err)
	require.NotEmpty(t, blob)
	return strings.TrimSpace(string(uuid)), blob
}

// wrappedKeys is the KeyService's Secret of wrapped keys.
func wrappedKeys(ctx context.Context, t *testing.T, kubeconfig string) map[string][]byte {
	t.Helper()
	var secret struct {
		Data map[string][]byte `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(kubectl(ctx, t, kubeconfig, "-n", "kube-system", "get", "secret", awskms.DefaultSecret, "-o", "json")), &secret))
	return secret.Data
}

// lastLine is the last line of log that contains s.
func lastLine(log, s string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}
