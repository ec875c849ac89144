package role

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	testCases := map[string]struct {
		in      string
		want    Role
		wantErr bool
	}{
		"control plane":  {in: "control-plane", want: ControlPlane},
		"worker":         {in: "worker", want: Worker},
		"other spelling": {in: "controlplane", wantErr: true},
		"empty":          {in: "", wantErr: true},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr {
				require.Error(t, err)
				assert.Contains(t, err.Error(), `expected "control-plane" or "worker"`)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}
