package upgrade

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/measurements"
)

func TestCheckKubernetes(t *testing.T) {
	tests := map[string]struct {
		from, to string
		wantErr  error
		wantMsg  string
	}{
		"same version":                   {from: "v1.33.13", to: "v1.33.13"},
		"newer patch":                    {from: "v1.33.10", to: "v1.33.13"},
		"next minor":                     {from: "v1.33.13", to: "v1.34.10"},
		"next minor, older patch number": {from: "v1.33.13", to: "v1.34.1"},
		"older patch":                    {from: "v1.33.13", to: "v1.33.12", wantErr: ErrDowngrade, wantMsg: "the cluster runs v1.33.13, the target is v1.33.12"},
		"older minor":                    {from: "v1.34.10", to: "v1.33.13", wantErr: ErrDowngrade},
		"skips a minor":                  {from: "v1.33.13", to: "v1.35.0", wantErr: ErrSkipsMinor, wantMsg: "upgrade to v1.34 first"},
		"not a version":                  {from: "1.33", to: "v1.33.13", wantMsg: `"1.33" is not a Kubernetes version`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckKubernetes(tc.from, tc.to)
			if tc.wantErr == nil && tc.wantMsg == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			if tc.wantErr != nil {
				assert.ErrorIs(t, err, tc.wantErr)
			}
			assert.ErrorContains(t, err, tc.wantMsg)
		})
	}
}

func TestKubernetesTargets(t *testing.T) {
	supported := []string{"v1.33.12", "v1.33.13", "v1.34.10", "v1.35.2"}
	tests := map[string]struct {
		current string
		want    []KubernetesTarget
	}{
		"an older patch":    {current: "v1.33.12", want: []KubernetesTarget{{"v1.33.13", KindPatch}, {"v1.34.10", KindMinor}}},
		"the newest patch":  {current: "v1.33.13", want: []KubernetesTarget{{"v1.34.10", KindMinor}}},
		"the newest":        {current: "v1.35.2"},
		"newer than pinned": {current: "v1.36.0"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := KubernetesTargets(tc.current, supported)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	_, err := KubernetesTargets("latest", supported)
	require.Error(t, err)
}

func TestChangedPCRs(t *testing.T) {
	d := func(b byte) measurements.Measurement {
		return measurements.Measurement{Expected: bytes.Repeat([]byte{b}, 32)}
	}
	trusted := measurements.M{4: d(1), 9: d(2), 11: d(3), 15: d(0)}
	assert.Empty(t, ChangedPCRs(trusted, measurements.M{4: d(1), 9: d(2), 11: d(3), 15: d(0)}))
	assert.Equal(t, []uint32{4, 11}, ChangedPCRs(trusted, measurements.M{4: d(7), 9: d(2), 11: d(8), 15: d(0)}))
	assert.Equal(t, []uint32{9, 12}, ChangedPCRs(trusted, measurements.M{4: d(1), 11: d(3), 12: d(5), 15: d(0)}), "added and dropped PCRs count")
}
