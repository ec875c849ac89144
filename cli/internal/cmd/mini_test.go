package cmd

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
)

func TestMiniUpWritesAMeasuredConfig(t *testing.T) {
	// The artifacts live on the real file system (the CLI reads its image beside its binary); the
	// workspace is in memory.
	dir := servicesFixture(t)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "image"), 0o755))
	uki := testUKI()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "image", "constellation.efi"), uki, 0o644))
	parsed, err := precompute.ParseUKI(uki)
	require.NoError(t, err)
	res, err := precompute.Precompute(parsed, precompute.Options{})
	require.NoError(t, err)

	ws := afero.NewMemMapFs()
	// The node is not booted from the test UKI, so its attestation fails: mini up must stop before init.
	in := &fakeIniter{t: t, node: vtpmtest.NewNode(t, vtpmtest.Boot)}
	e, out, errOut := testEnv(t, layered(ws), &fakeInfra{}, in, nil)
	e.deps.artifacts = func() (artifacts, error) { return artifacts{dir: dir}, nil }
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
