package tfprovider

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/localprovider/network"
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
	for _, a := range []string{"bridge_address", "metadata_url", "component_url", "kms_endpoint"} {
		assert.True(t, network[a].Computed, a)
	}
	assert.True(t, network["local_kms"].Optional, "local_kms")
	assert.False(t, network["local_kms"].Required, "local_kms")
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

	cluster := attrs("constellation_cluster")
	for _, a := range []string{"name", "endpoint", "init_secret", "kubernetes_version", "component_url", "services_dir", "attestation", "nodes"} {
		assert.True(t, cluster[a].Required, a)
	}
	for _, a := range []string{"init_secret", "master_secret", "master_secret_salt", "kubeconfig"} {
		assert.True(t, cluster[a].Sensitive, "%s must never show in plans or logs", a)
	}
	for _, a := range []string{"kubeconfig", "cluster_id", "owner_id", "master_secret", "master_secret_salt"} {
		assert.True(t, cluster[a].Computed, a)
	}
	assert.True(t, cluster["image_dir"].Optional, "clusters without roll-outs need no image_dir")
	assert.False(t, cluster["master_secret"].Required, "generated when not given")
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

// TestNodeImageChangesInPlace plans a node whose image changed and one whose name changed: a new image is a
// restart on the same state disk (an upgrade), anything else replaces the node and its disk.
func TestNodeImageChangesInPlace(t *testing.T) {
	srv := providerserver.NewProtocol6(New())()
	ctx := context.Background()
	_, err := srv.GetProviderSchema(ctx, &tfprotov6.GetProviderSchemaRequest{})
	require.NoError(t, err)

	str := tftypes.String
	typ := tftypes.Object{AttributeTypes: map[string]tftypes.Type{
		"id": str, "network": str, "name": str, "role": str, "index": tftypes.Number, "image_dir": str,
		"state_disk_size_gb": tftypes.Number, "ip": str, "pod_cidr": str,
	}}
	node := func(name, image string, computed bool) tftypes.Value {
		v := func(s string) tftypes.Value {
			if !computed {
				return tftypes.NewValue(str, tftypes.UnknownValue)
			}
			return tftypes.NewValue(str, s)
		}
		return tftypes.NewValue(typ, map[string]tftypes.Value{
			"id": v("c/" + name), "network": tftypes.NewValue(str, "c"), "name": tftypes.NewValue(str, name),
			"role": tftypes.NewValue(str, "worker"), "index": tftypes.NewValue(tftypes.Number, 1),
			"image_dir": tftypes.NewValue(str, image), "state_disk_size_gb": tftypes.NewValue(tftypes.Number, nil),
			"ip": v("10.0.0.3"), "pod_cidr": v("10.244.1.0/24"),
		})
	}
	dynamic := func(v tftypes.Value) *tfprotov6.DynamicValue {
		d, err := tfprotov6.NewDynamicValue(typ, v)
		require.NoError(t, err)
		return &d
	}
	config := func(name, image string) tftypes.Value {
		return tftypes.NewValue(typ, map[string]tftypes.Value{
			"id": tftypes.NewValue(str, nil), "network": tftypes.NewValue(str, "c"), "name": tftypes.NewValue(str, name),
			"role": tftypes.NewValue(str, "worker"), "index": tftypes.NewValue(tftypes.Number, 1),
			"image_dir": tftypes.NewValue(str, image), "state_disk_size_gb": tftypes.NewValue(tftypes.Number, nil),
			"ip": tftypes.NewValue(str, nil), "pod_cidr": tftypes.NewValue(str, nil),
		})
	}
	prior := node("worker-0", "/images/a", true)
	oldRoot := claimRoot
	claimRoot = t.TempDir()
	t.Cleanup(func() { claimRoot = oldRoot })

	testCases := map[string]struct {
		name, image string
		// claimed: a constellation_cluster initialized the network's cluster.
		claimed     bool
		wantReplace []string
		wantError   string
	}{
		"new image":  {name: "worker-0", image: "/images/b"},
		"new name":   {name: "worker-1", image: "/images/a", wantReplace: []string{"name"}},
		"no changes": {name: "worker-0", image: "/images/a"},
		"new image of a cluster resource's node": {
			name: "worker-0", image: "/images/b", claimed: true, wantError: "ignore_changes = [image_dir]",
		},
		"no changes of a cluster resource's node": {name: "worker-0", image: "/images/a", claimed: true},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			nodes := localNodes{network: "c"}
			require.NoError(t, os.MkdirAll(filepath.Join(claimRoot, "c"), 0o700))
			if tc.claimed {
				require.NoError(t, nodes.Claim("constellation_cluster tf"))
				t.Cleanup(func() { require.NoError(t, nodes.Claim("")) })
			}
			proposed := node(tc.name, tc.image, true)
			resp, err := srv.PlanResourceChange(ctx, &tfprotov6.PlanResourceChangeRequest{
				TypeName: "constellation_local_node", PriorState: dynamic(prior),
				ProposedNewState: dynamic(proposed), Config: dynamic(config(tc.name, tc.image)),
			})
			require.NoError(t, err)
			if tc.wantError != "" {
				require.Len(t, resp.Diagnostics, 1)
				assert.Equal(t, tfprotov6.DiagnosticSeverityError, resp.Diagnostics[0].Severity)
				assert.Contains(t, resp.Diagnostics[0].Detail, tc.wantError)
				assert.Contains(t, resp.Diagnostics[0].Detail, "constellation_cluster tf")
				return
			}
			for _, d := range resp.Diagnostics {
				t.Errorf("diagnostic: %s: %s", d.Summary, d.Detail)
			}
			var got []string
			for _, p := range resp.RequiresReplace {
				got = append(got, p.String())
			}
			var want []string
			for _, a := range tc.wantReplace {
				want = append(want, tftypes.NewAttributePath().WithAttributeName(a).String())
			}
			assert.Equal(t, want, got)
		})
	}
}

// TestNetworkLocalKMSChangesInPlace plans a network whose local_kms changed: the network stays (the daemon
// restarts), and kms_endpoint is known in the plan.
func TestNetworkLocalKMSChangesInPlace(t *testing.T) {
	srv := providerserver.NewProtocol6(New())()
	ctx := context.Background()
	_, err := srv.GetProviderSchema(ctx, &tfprotov6.GetProviderSchemaRequest{})
	require.NoError(t, err)

	const cidr = "10.77.0.0/24"
	nw, err := network.New(network.Config{Cluster: "c", BridgeCIDR: netip.MustParsePrefix(cidr)})
	require.NoError(t, err)
	endpoint := "http://" + nw.BridgeAddr().String() + ":4599"

	str, boolean := tftypes.String, tftypes.Bool
	typ := tftypes.Object{AttributeTypes: map[string]tftypes.Type{
		"id": str, "name": str, "bridge_cidr": str, "kubernetes_version": str, "services_dir": str, "init_secret": str,
		"bridge_address": str, "metadata_url": str, "component_url": str, "platform_ca_certificate": str,
		"local_kms": boolean, "kms_endpoint": str,
	}}
	// value is the network's object; computed are the computed attributes' values, nil in a configuration.
	value := func(localKMS *bool, computed map[string]string) tftypes.Value {
		v := map[string]tftypes.Value{
			"name": tftypes.NewValue(str, "c"), "bridge_cidr": tftypes.NewValue(str, cidr),
			"kubernetes_version": tftypes.NewValue(str, "v1.33.13"), "services_dir": tftypes.NewValue(str, "/services"),
			"init_secret": tftypes.NewValue(str, "0123456789abcdef0123"),
		}
		for _, a := range []string{"id", "bridge_address", "metadata_url", "component_url", "platform_ca_certificate", "kms_endpoint"} {
			if c, ok := computed[a]; ok {
				v[a] = tftypes.NewValue(str, c)
			} else {
				v[a] = tftypes.NewValue(str, nil)
			}
		}
		if localKMS != nil {
			v["local_kms"] = tftypes.NewValue(boolean, *localKMS)
		} else {
			v["local_kms"] = tftypes.NewValue(boolean, nil)
		}
		return tftypes.NewValue(typ, v)
	}
	dynamic := func(v tftypes.Value) *tfprotov6.DynamicValue {
		d, err := tfprotov6.NewDynamicValue(typ, v)
		require.NoError(t, err)
		return &d
	}
	stateOf := func(on bool) map[string]string {
		m := map[string]string{
			"id": "c", "bridge_address": nw.BridgeAddr().String(), "metadata_url": "http://x:9080",
			"component_url": "http://x:9081", "platform_ca_certificate": "PEM", "kms_endpoint": "",
		}
		if on {
			m["kms_endpoint"] = endpoint
		}
		return m
	}
	on, off := true, false

	testCases := map[string]struct {
		prior        bool
		config       *bool
		wantEndpoint string
	}{
		"turned on":      {prior: false, config: &on, wantEndpoint: endpoint},
		"turned off":     {prior: true, config: &off, wantEndpoint: ""},
		"unset, was on":  {prior: true, config: nil, wantEndpoint: ""},
		"unset, was off": {prior: false, config: nil, wantEndpoint: ""},
		"stays on":       {prior: true, config: &on, wantEndpoint: endpoint},
		"explicitly off": {prior: false, config: &off, wantEndpoint: ""},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			prior := value(&tc.prior, stateOf(tc.prior))
			// As Terraform proposes it: the configuration, computed values from the prior state.
			proposedComputed := stateOf(tc.prior)
			proposedLocalKMS := tc.config
			if proposedLocalKMS == nil {
				proposedLocalKMS = &tc.prior
			}
			resp, err := srv.PlanResourceChange(ctx, &tfprotov6.PlanResourceChangeRequest{
				TypeName: "constellation_local_network", PriorState: dynamic(prior),
				ProposedNewState: dynamic(value(proposedLocalKMS, proposedComputed)), Config: dynamic(value(tc.config, nil)),
			})
			require.NoError(t, err)
			for _, d := range resp.Diagnostics {
				t.Errorf("diagnostic: %s: %s", d.Summary, d.Detail)
			}
			assert.Empty(t, resp.RequiresReplace)
			planned, err := resp.PlannedState.Unmarshal(typ)
			require.NoError(t, err)
			var attrs map[string]tftypes.Value
			require.NoError(t, planned.As(&attrs))
			var got string
			require.NoError(t, attrs["kms_endpoint"].As(&got), "kms_endpoint is unknown in the plan")
			assert.Equal(t, tc.wantEndpoint, got)
			var gotOn bool
			require.NoError(t, attrs["local_kms"].As(&gotOn))
			assert.Equal(t, tc.config != nil && *tc.config, gotOn)
		})
	}
}
