package versions

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/semver"
)

func TestResolveKubernetes(t *testing.T) {
	testCases := map[string]struct {
		in      string
		want    string
		wantErr string
	}{
		"full version":          {in: "v1.33.13", want: "v1.33.13"},
		"minor version":         {in: "v1.33", want: "v1.33.13"},
		"minor without v":       {in: "1.33", want: "v1.33.13"},
		"unsupported patch":     {in: "v1.33.1", wantErr: "not supported by this release"},
		"unsupported minor":     {in: "v1.29", wantErr: "not supported by this release"},
		"major only is refused": {in: "v1", wantErr: "not supported by this release"},
		"garbage":               {in: "latest", wantErr: "is not a version like v1.33"},
		"empty":                 {in: "", wantErr: "is not a version"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			got, err := ResolveKubernetes(tc.in)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.Contains(t, err.Error(), DefaultKubernetes, "the error must list what is supported")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestSupportedKubernetesIsSortedAndHasDefault(t *testing.T) {
	s := SupportedKubernetes()
	assert.Contains(t, s, DefaultKubernetes)
	for i := 1; i < len(s); i++ {
		assert.Equal(t, -1, semver.Compare(s[i-1], s[i]), "not sorted: %v", s)
	}
	for _, v := range s {
		assert.Equal(t, semver.Canonical(v), v, "not a full version: %s", v)
	}
	s[0] = "mutated"
	assert.NotEqual(t, "mutated", SupportedKubernetes()[0])
}
