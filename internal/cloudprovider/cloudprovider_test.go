package cloudprovider

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	testCases := map[string]struct {
		in      string
		want    Provider
		wantErr bool
	}{
		"local":             {in: "local", want: Local},
		"qemu":              {in: "qemu", want: QEMU},
		"aws":               {in: "aws", want: AWS},
		"gcp":               {in: "gcp", want: GCP},
		"azure":             {in: "azure", want: Azure},
		"upper case":        {in: "AWS", want: AWS},
		"surrounding space": {in: " gcp ", want: GCP},
		"unknown":           {in: "openstack", wantErr: true},
		"empty":             {in: "", wantErr: true},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "choose one of local, qemu, aws, gcp, azure")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestIsCloud(t *testing.T) {
	assert.False(t, Local.IsCloud())
	assert.False(t, QEMU.IsCloud())
	assert.True(t, AWS.IsCloud())
	assert.True(t, GCP.IsCloud())
	assert.True(t, Azure.IsCloud())
}
