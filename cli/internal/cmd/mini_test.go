package cmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/cli/internal/cloudcmd"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
	"github.com/constellation-go/constellation/internal/state"
)

func TestMiniUpWritesAMeasuredConfig(t *testing.T) {
	// The artifacts live on the real file system (the CLI reads its image beside its binary); the
	// workspace is in memory.
	dir := servicesFixture(t)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "image"), 0o755))
	uki := precomputetest.UKI()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "image", "constellation.efi"), uki, 0o644))
	parsed, err := precompute.ParseUKI(uki)
	require.NoError(t, err)
	res, err := precompute.Precompute(parsed, precompute.Options{})
	require.NoError(t, err)

	ws := afero.NewMemMapFs()
	// The node is not booted from the test UKI, so its attestation fails: mini up must stop before init.
	in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}
	e, out, errOut := testEnv(t, layered(ws), &fakeInfra{}, in, nil)
	e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: dir}, nil }
	code := execute(context.Background(), []string{"mini", "up"}, e)
	assert.Equal(t, 1, code, "stdout: %s\nstderr: %s", out, errOut)
	assert.Nil(t, in.sent, "a node that does not show the image's PCRs gets nothing")
	assert.Contains(t, errOut.String(), "PCR 11")

	cfg, err := config.Load(e.files, config.FileName)
	require.NoError(t, err)
	assert.Equal(t, cloudprovider.Local, cfg.GetProvider())
	want := res.Measurements(true)
	for idx, m := range want {
		assert.Equal(t, m.Expected, cfg.Attestation.Measurements[idx].Expected, "PCR %d", idx)
	}
	assert.Equal(t, make(measurements.Digest, measurements.DigestSize), cfg.Attestation.Measurements[measurements.PCRClusterID].Expected,
		"a fresh node must show PCR 15 zero")
}

// TestMiniUpSize: --workers and --control-planes size the groups of the configuration mini up writes; an
// existing configuration with another size is not overridden, and an impossible size is refused before
// anything.
func TestMiniUpSize(t *testing.T) {
	dir := servicesFixture(t)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "image"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "image", "constellation.efi"), precomputetest.UKI(), 0o644))
	count := func(e *env, group string) int {
		cfg, err := config.Load(e.files, config.FileName)
		require.NoError(t, err)
		return cfg.NodeGroups[group].InitialCount
	}
	workers := func(e *env) int { return count(e, config.DefaultWorkerGroup) }
	newEnv := miniEnv(t, dir)

	ws := afero.NewMemMapFs()
	e, _, infra := newEnv(ws)
	// The fake node does not boot the test UKI, so apply stops at attestation; the configuration is written.
	execute(context.Background(), []string{"mini", "up", "--workers", "4"}, e)
	assert.Equal(t, 4, workers(e))
	assert.Equal(t, 1, infra.applied)

	e, errOut, infra := newEnv(ws)
	assert.Equal(t, 1, execute(context.Background(), []string{"mini", "up", "--workers", "2"}, e))
	assert.Contains(t, errOut.String(), "has 4 workers")
	assert.Zero(t, infra.applied)
	assert.Equal(t, 4, workers(e), "the workspace's configuration stays as it is")

	for _, n := range []string{"-1", "21"} {
		e, errOut, infra := newEnv(afero.NewMemMapFs())
		assert.Equal(t, 1, execute(context.Background(), []string{"mini", "up", "--workers", n}, e))
		assert.Contains(t, errOut.String(), "0 to 20 workers")
		assert.Zero(t, infra.applied)
	}

	ws = afero.NewMemMapFs()
	e, _, _ = newEnv(ws)
	execute(context.Background(), []string{"mini", "up", "--control-planes", "3", "--workers", "0"}, e)
	assert.Equal(t, 3, count(e, config.DefaultControlPlaneGroup))
	assert.Equal(t, 0, workers(e))
	e, errOut, infra = newEnv(ws)
	assert.Equal(t, 1, execute(context.Background(), []string{"mini", "up", "--control-planes", "1"}, e))
	assert.Contains(t, errOut.String(), "has 3 control planes")
	assert.Zero(t, infra.applied)
	e, _, infra = newEnv(ws)
	execute(context.Background(), []string{"mini", "up"}, e)
	assert.Equal(t, 1, infra.applied, "without size flags the workspace's size is used")
	for _, n := range []string{"0", "6"} {
		e, errOut, infra := newEnv(afero.NewMemMapFs())
		assert.Equal(t, 1, execute(context.Background(), []string{"mini", "up", "--control-planes", n}, e))
		assert.Contains(t, errOut.String(), "1 to 5 control planes")
		assert.Zero(t, infra.applied)
	}
}

// miniEnv returns a CLI environment over a workspace, with the artifacts in dir and a fake node that does
// not boot the test UKI (so apply stops at attestation, after the configuration is written).
func miniEnv(t *testing.T, dir string) func(ws afero.Fs) (*env, *bytes.Buffer, *fakeInfra) {
	return func(ws afero.Fs) (*env, *bytes.Buffer, *fakeInfra) {
		infra := &fakeInfra{}
		e, _, errOut := testEnv(t, layered(ws), infra, &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}, nil)
		e.deps.artifacts = func() (cloudcmd.Artifacts, error) { return cloudcmd.Artifacts{Dir: dir}, nil }
		return e, errOut, infra
	}
}

// TestMiniUpLocalKMS: --kms local-kms has the local provider run its KMS and points user-managed keys at it
// on the bridge, with credentials in a 0600 file (never in the configuration); a workspace configured
// without it keeps its backend; other backends are refused before anything happens.
func TestMiniUpLocalKMS(t *testing.T) {
	dir := servicesFixture(t)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "image"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "image", "constellation.efi"), precomputetest.UKI(), 0o644))
	newEnv := miniEnv(t, dir)

	ws := afero.NewMemMapFs()
	e, _, infra := newEnv(ws)
	// The fake node does not boot the test UKI, so apply stops at attestation; the configuration is written.
	execute(context.Background(), []string{"mini", "up", "--kms", "local-kms"}, e)
	assert.Equal(t, 1, infra.applied)
	cfg, err := config.Load(e.files, config.FileName)
	require.NoError(t, err)
	assert.True(t, cfg.Provider.Local.LocalKMS)
	require.NotNil(t, cfg.KMS.AWSKMS)
	assert.Equal(t, config.AWSKMSConfig{Region: "us-east-1", KeyID: "alias/constellation", Endpoint: "http://10.42.0.1:4599",
		CredentialsFile: "constellation-kms-credentials.json"}, *cfg.KMS.AWSKMS)
	creds, err := e.kmsCredentials(cfg)
	require.NoError(t, err)
	fi, err := ws.Stat("constellation-kms-credentials.json")
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	cfgText, err := afero.ReadFile(ws, config.FileName)
	require.NoError(t, err)
	assert.NotContains(t, string(cfgText), creds.SecretAccessKey)

	plain := afero.NewMemMapFs()
	e, _, _ = newEnv(plain)
	execute(context.Background(), []string{"mini", "up"}, e)
	e, errOut, infra := newEnv(plain)
	assert.Equal(t, 1, execute(context.Background(), []string{"mini", "up", "--kms", "local-kms"}, e))
	assert.Contains(t, errOut.String(), "has no local KMS")
	assert.Zero(t, infra.applied)

	e, errOut, infra = newEnv(afero.NewMemMapFs())
	assert.Equal(t, 1, execute(context.Background(), []string{"mini", "up", "--kms", "aws-kms"}, e))
	assert.Contains(t, errOut.String(), "mini up takes constellation-managed or local-kms")
	assert.Zero(t, infra.applied)
}

func TestMiniUpRefusesAnotherProvider(t *testing.T) {
	fs := afero.NewMemMapFs()
	cfg, err := config.Default(cloudprovider.QEMU)
	require.NoError(t, err)
	data, err := cfg.Marshal()
	require.NoError(t, err)
	require.NoError(t, afero.WriteFile(fs, config.FileName, data, 0o644))
	infra := &fakeInfra{}
	e, _, errOut := testEnv(t, fs, infra, nil, nil)
	assert.Equal(t, 1, execute(context.Background(), []string{"mini", "up"}, e))
	assert.Contains(t, errOut.String(), "mini up needs a local configuration")
	assert.Zero(t, infra.applied)
}

// layered reads what is not in the memory workspace from the real file system (the CLI's artifacts).
func layered(mem afero.Fs) afero.Fs {
	return afero.NewCopyOnWriteFs(afero.NewReadOnlyFs(afero.NewOsFs()), mem)
}

// TestMiniImageLoad: the archive goes into every node (or the named ones) and is recorded once in the state,
// by its absolute path and digest; a failing node says what to do.
func TestMiniImageLoad(t *testing.T) {
	testCases := map[string]struct {
		args       []string
		loadErr    error
		wantCode   int
		wantLoaded []string
		wantStderr string
	}{
		"every node":   {wantLoaded: []string{"cp-0<app.tar", "worker-0<app.tar"}},
		"one node":     {args: []string{"--node", "worker-0"}, wantLoaded: []string{"worker-0<app.tar"}},
		"unknown node": {args: []string{"--node", "worker-7"}, wantCode: 1},
		"a node that fails": {
			loadErr: errors.New("the node is not running"), wantCode: 1,
			wantStderr: "the node is not running",
		},
		"a missing archive": {args: []string{"--node", "cp-0"}, wantCode: 1, wantStderr: "reading the image archive"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			writeCreatedConfig(t, fs, vtpmtest.ReferenceValues(vtpmtest.Boot))
			writeInitializedState(t, fs, bytes.Repeat([]byte{3}, 32))
			archive := "/images/app.tar"
			if name != "a missing archive" {
				require.NoError(t, afero.WriteFile(fs, archive, []byte("image archive"), 0o644))
			}
			infra := &fakeInfra{loadErr: tc.loadErr}
			e, out, errOut := testEnv(t, fs, infra, nil, nil)
			args := append([]string{"mini", "image", "load", archive}, tc.args...)
			code := execute(context.Background(), args, e)
			assert.Equal(t, tc.wantCode, code, "stdout: %s\nstderr: %s", out, errOut)
			assert.Equal(t, tc.wantLoaded, infra.loaded)
			assert.Contains(t, errOut.String(), tc.wantStderr)
			st, err := state.Read(file.NewHandler(fs), state.FileName)
			require.NoError(t, err)
			if tc.wantCode != 0 {
				assert.Empty(t, st.LoadedImages, "nothing is recorded of a load that failed")
				return
			}
			assert.Contains(t, out.String(), "docker.io/library/workload:v1")
			require.Len(t, st.LoadedImages, 1)
			sum := sha256.Sum256([]byte("image archive"))
			assert.Equal(t, state.LoadedImage{Path: archive, SHA256: hex.EncodeToString(sum[:]), Refs: []string{"docker.io/library/workload:v1"}}, st.LoadedImages[0])

			// Loading it again records it once.
			require.Zero(t, execute(context.Background(), args, e))
			st, err = state.Read(file.NewHandler(fs), state.FileName)
			require.NoError(t, err)
			assert.Len(t, st.LoadedImages, 1)

			// A moved node gets the recorded archive again, unless the file changed.
			infra.loaded = nil
			cfg, err := e.loadConfig()
			require.NoError(t, err)
			e.reloadImages(context.Background(), cfg, st, infra, "cp-0", e.progress())
			assert.Equal(t, []string{"cp-0<app.tar"}, infra.loaded)
			require.NoError(t, afero.WriteFile(fs, archive, []byte("another image"), 0o644))
			infra.loaded = nil
			e.reloadImages(context.Background(), cfg, st, infra, "cp-0", e.progress())
			assert.Empty(t, infra.loaded)
			assert.Contains(t, errOut.String(), "its content changed")
		})
	}
}
