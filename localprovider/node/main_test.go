package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/attestation/vtpm/manufacturer"
	"github.com/constellation-go/constellation/localprovider/network"
)

func TestMain(m *testing.M) {
	// Start re-executes this test binary as the node's init.
	InitMain()
	if params := os.Getenv(startOnlyEnv); params != "" {
		// TestStartedByAnotherProcess: start a node and exit, as a short-lived CLI would.
		if err := startOnly(params); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := 0
	func() {
		defer cleanupToolbox()
		if err := goleak.Find(); err != nil {
			panic(err)
		}
		code = m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				os.Stderr.WriteString("goleak: " + err.Error() + "\n")
				code = 1
			}
		}
	}()
	os.Exit(code)
}

// startOnlyEnv holds startParams for a test binary that only starts a node.
const startOnlyEnv = "CONSTELLATION_NODE_TEST_START_ONLY"

type startParams struct {
	Cluster    string
	BridgeCIDR netip.Prefix
	Name       string
	Index      int
	ImageDir   string
	StateDir   string
}

func startOnly(params string) error {
	var p startParams
	if err := json.Unmarshal([]byte(params), &p); err != nil {
		return err
	}
	n, err := network.New(network.Config{Cluster: p.Cluster, BridgeCIDR: p.BridgeCIDR})
	if err != nil {
		return err
	}
	ca, err := manufacturer.NewCA("node test platform CA")
	if err != nil {
		return err
	}
	node, err := Start(context.Background(), Config{
		Cluster: p.Cluster, Name: p.Name, Index: p.Index, Network: n, ImageDir: p.ImageDir, StateDir: p.StateDir,
		StateDiskSize: 64 << 20, PlatformCA: ca,
	})
	if err != nil {
		return err
	}
	fmt.Println(node.InitPID)
	return nil
}
