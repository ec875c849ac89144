package tfprovider

import (
	"context"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSchema(t *testing.T) {
	srv := providerserver.NewProtocol6(New())()
	resp, err := srv.GetProviderSchema(context.Background(), &tfprotov6.GetProviderSchemaRequest{})
	require.NoError(t, err)
	for _, d := range resp.Diagnostics {
		t.Errorf("diagnostic: %s: %s", d.Summary, d.Detail)
	}
	require.Contains(t, resp.ResourceSchemas, "constellation_local_network")
	require.Contains(t, resp.ResourceSchemas, "constellation_local_node")

	attrs := func(name string) map[string]*tfprotov6.SchemaAttribute {
		out := map[string]*tfprotov6.SchemaAttribute{}
		for _, a := range resp.ResourceSchemas[name].Block.Attributes {
			out[a.Name] = a
		}
		return out
	}
	network := attrs("constellation_local_network")
	require.Contains(t, network, "init_secret")
	assert.True(t, network["init_secret"].Sensitive, "the init secret must never show in plans")
	for _, a := range []string{"name", "bridge_cidr", "kubernetes_version", "services_dir"} {
		assert.True(t, network[a].Required, a)
	}
	for _, a := range []string{"bridge_address", "metadata_url", "component_url"} {
		assert.True(t, network[a].Computed, a)
	}
	node := attrs("constellation_local_node")
	for _, a := range []string{"network", "name", "role", "index", "image_dir"} {
		assert.True(t, node[a].Required, a)
	}
	assert.True(t, node["ip"].Computed)

	ca := attrs("constellation_platform_ca")
	for _, a := range []string{"name", "directory"} {
		assert.True(t, ca[a].Required, a)
	}
	assert.True(t, ca["certificate"].Computed)
	vtpm := attrs("constellation_qemu_vtpm")
	for _, a := range []string{"name", "directory", "ca_directory", "socket"} {
		assert.True(t, vtpm[a].Required, a)
	}
	assert.True(t, vtpm["socket_owner"].Optional)
}

func TestOneOf(t *testing.T) {
	v := oneOf{"control-plane", "worker"}
	for value, wantErr := range map[string]bool{"worker": false, "control-plane": false, "master": true, "": true} {
		resp := &validator.StringResponse{}
		v.ValidateString(context.Background(), validator.StringRequest{Path: path.Root("role"), ConfigValue: types.StringValue(value)}, resp)
		assert.Equal(t, wantErr, resp.Diagnostics.HasError(), "%q", value)
	}
	resp := &validator.StringResponse{}
	v.ValidateString(context.Background(), validator.StringRequest{Path: path.Root("role"), ConfigValue: types.StringUnknown()}, resp)
	assert.False(t, resp.Diagnostics.HasError(), "an unknown value is checked once known")
}
