// Command constellation is the admin CLI of a confidential Kubernetes cluster.
package main

import (
	"context"
	"os"

	"github.com/spf13/afero"

	"github.com/constellation-go/constellation/cli/internal/cmd"
)

func main() {
	os.Exit(cmd.Execute(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, afero.NewOsFs()))
}
