// Package tfprovider is the project's Terraform provider (terraform-plugin-framework). It manages the
// `local` provider's infrastructure on this machine, and the qemu provider's trust root:
//
//	constellation_local_network  the cluster bridge, and the daemon serving the metadata API and the
//	                             components on the bridge address (package daemon)
//	constellation_local_node     a node: registered with the metadata API, then started (package node)
//	constellation_platform_ca    a CA that certifies a cluster's vTPMs (qemu)
//	constellation_qemu_vtpm      a VM's certified vTPM for libvirt's external TPM backend (package qemuvtpm)
//	constellation_cluster        an initialized cluster on the nodes: init over aTLS, every node verified
//	                             on each refresh, import of a CLI workspace (clusterclient, as the CLI)
//
// and data sources:
//
//	constellation_attestation    a published measurements file, verified with the publisher's key
//	constellation_image          a built node image: its reference and precomputed measurements
//
// The provider binary is also the nodes' init and the daemon (it calls node.InitMain and daemon.Main
// first), so the processes it leaves behind need nothing from Terraform's plugin directory.
package tfprovider

import (
	"context"
	"log/slog"
	"os"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"

	"github.com/constellation-go/constellation/localprovider/daemon"
	"github.com/constellation-go/constellation/localprovider/providerinfo"
)

// New returns the provider.
func New() provider.Provider { return &constellationProvider{} }

type constellationProvider struct{}

func (p *constellationProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "constellation"
	resp.Version = providerinfo.Version
}

func (p *constellationProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{Description: "Constellation's infrastructure on this machine (the local provider)."}
}

func (p *constellationProvider) Configure(context.Context, provider.ConfigureRequest, *provider.ConfigureResponse) {
}

func (p *constellationProvider) Resources(context.Context) []func() resource.Resource {
	return []func() resource.Resource{newNetworkResource, newNodeResource, newPlatformCAResource, newQEMUVTPMResource, newClusterResource}
}

func (p *constellationProvider) DataSources(context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{newAttestationDataSource, newImageDataSource}
}

// logger writes to the cluster's provider.log: Terraform keeps a provider's stderr only with TF_LOG set.
func logger(cluster string) (*slog.Logger, func()) {
	if err := os.MkdirAll(daemon.Dir(cluster), 0o700); err != nil {
		return slog.New(slog.DiscardHandler), func() {}
	}
	f, err := os.OpenFile(daemon.ProviderLogFile(cluster), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return slog.New(slog.DiscardHandler), func() {}
	}
	return slog.New(slog.NewTextHandler(f, nil)), func() { _ = f.Close() }
}
