package kmsuri

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	tests := map[string]struct {
		uri     string
		backend string
		wantErr string
	}{
		"default":                    {uri: Default, backend: ClusterKMS},
		"default with a slash":       {uri: "kms://cluster-kms/", backend: ClusterKMS},
		"user-managed with settings": {uri: "kms://aws-kms?region=eu-west-1", backend: "aws-kms"},
		"other scheme":               {uri: "https://kms.example", wantErr: "expected a URI like kms://cluster-kms"},
		"no backend":                 {uri: "kms://", wantErr: "expected a URI like"},
		"not a URI":                  {uri: "kms://%zz", wantErr: "expected a URI like"},
		"cluster-kms with a query":   {uri: "kms://cluster-kms?key=x", wantErr: "cluster-kms takes no parameters"},
		"cluster-kms with a path":    {uri: "kms://cluster-kms/other", wantErr: "cluster-kms takes no parameters"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u, err := Parse(tc.uri)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.backend, u.Host)
		})
	}
}
