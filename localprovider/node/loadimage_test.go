package node

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestImportedRefs(t *testing.T) {
	testCases := map[string]struct {
		out  string
		want []string
	}{
		"one image": {
			out:  "unpacking docker.io/library/workload:v1 (sha256:0123abcd)...done\n",
			want: []string{"docker.io/library/workload:v1"},
		},
		"two images and noise": {
			out:  "ctr: some notice\nunpacking a/b:1 (sha256:01)...done\n  unpacking c/d:2 (sha256:02)...done\n",
			want: []string{"a/b:1", "c/d:2"},
		},
		"none":      {out: "ctr: content digest sha256:00: not found\n"},
		"truncated": {out: "unpacking \n"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, importedRefs(tc.out))
		})
	}
}
