package cni

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	require.NoError(t, Write(dir, netip.MustParsePrefix("10.244.3.0/24")))
	raw, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	require.NoError(t, err)
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type   string `json:"type"`
			IPMasq *bool  `json:"ipMasq"`
			IPAM   struct {
				Type   string                `json:"type"`
				Ranges [][]map[string]string `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	require.NoError(t, json.Unmarshal(raw, &conf))
	assert.Equal(t, "1.0.0", conf.CNIVersion)
	require.Len(t, conf.Plugins, 2)
	assert.Equal(t, "bridge", conf.Plugins[0].Type)
	assert.Equal(t, "host-local", conf.Plugins[0].IPAM.Type)
	assert.Equal(t, "10.244.3.0/24", conf.Plugins[0].IPAM.Ranges[0][0]["subnet"])
	require.NotNil(t, conf.Plugins[0].IPMasq)
	assert.False(t, *conf.Plugins[0].IPMasq, "pod-to-pod traffic is routed, not masqueraded")
	assert.Equal(t, "portmap", conf.Plugins[1].Type)

	// Rewriting is fine (a restarted bootstrapper).
	require.NoError(t, Write(dir, netip.MustParsePrefix("10.244.3.0/24")))
}

func TestBadPrefix(t *testing.T) {
	for _, p := range []netip.Prefix{{}, netip.MustParsePrefix("10.244.3.1/24"), netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("10.0.0.0/31")} {
		_, err := Config(p)
		assert.Error(t, err, p.String())
	}
}
