// The project's Terraform provider. Terraform starts it from the workspace's filesystem mirror.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"

	"github.com/constellation-go/constellation/localprovider/daemon"
	"github.com/constellation-go/constellation/localprovider/node"
	"github.com/constellation-go/constellation/localprovider/providerinfo"
	"github.com/constellation-go/constellation/localprovider/tfprovider"
)

func main() {
	// The nodes' init, the provider daemon and `mini image load` are this binary, started again: they must not
	// serve Terraform.
	node.InitMain()
	daemon.Main()
	node.LoadImageMain()
	if err := providerserver.Serve(context.Background(), tfprovider.New, providerserver.ServeOpts{Address: providerinfo.Address}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
