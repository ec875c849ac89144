package components

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
)

func TestListRoundTrip(t *testing.T) {
	in := []*Component{
		{Url: "http://10.42.0.1:9081/v1.33.13/kubelet", Hash: "sha256:ab", InstallPath: "/var/lib/constellation/bin/kubelet"},
		{Url: "http://10.42.0.1:9081/services/joinservice.tar", Hash: "sha256:cd", InstallPath: "/var/lib/constellation/images/joinservice.tar"},
	}
	data, err := MarshalList(in)
	require.NoError(t, err)
	assert.Contains(t, string(data), `"installPath"`, "the API's field names")
	out, err := UnmarshalList(data)
	require.NoError(t, err)
	require.Len(t, out, len(in))
	for i := range in {
		assert.True(t, proto.Equal(in[i], out[i]), "component %d", i)
	}

	for name, bad := range map[string]string{
		"not JSON":      `{`,
		"unknown field": `{"components":[{"colour":"red"}]}`,
		"wrong kind":    `{"components":[42]}`,
	} {
		_, err := UnmarshalList([]byte(bad))
		assert.Error(t, err, name)
	}
}
