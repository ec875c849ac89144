package cloudcmd

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/config"
)

func TestArtifactsImageDir(t *testing.T) {
	dir := t.TempDir()
	a := Artifacts{Dir: dir}

	// Nothing built yet: the error says how to build it.
	_, err := a.ImageDir(&config.Config{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "make image")

	// A directory that is not a node image.
	require.NoError(t, os.MkdirAll(a.InstalledImageDir(), 0o755))
	_, err = a.ImageDir(&config.Config{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is not a node image")

	require.NoError(t, os.WriteFile(filepath.Join(a.InstalledImageDir(), "constellation.efi"), []byte("uki"), 0o644))
	got, err := a.ImageDir(&config.Config{})
	require.NoError(t, err)
	assert.Equal(t, a.InstalledImageDir(), got)

	// The configuration's image wins over the installed one.
	other := t.TempDir()
	assert.Equal(t, other, a.ConfiguredImageDir(&config.Config{Image: other}))
}

func TestFindArtifactsFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(ArtifactsEnv, dir)
	a, err := FindArtifacts()
	require.NoError(t, err)
	assert.Equal(t, dir, a.Dir)
	assert.Equal(t, filepath.Join(dir, "terraform-provider-constellation"), a.ProviderBinary())
}

func TestIdentityWithoutWorkspace(t *testing.T) {
	_, _, err := (&Terraform{Workspace: t.TempDir()}).Identity()
	require.Error(t, err)
}
