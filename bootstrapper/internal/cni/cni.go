// Package cni writes the node's pod network configuration for containerd's CRI: a bridge (cni0) with the
// node's pod prefix, assigned by the provider (metadata), through host-local IPAM. Pods reach pods on other
// nodes without an overlay or NAT: the provider routes each node's pod prefix to that node's address.
// Until this file exists the kubelet reports the node NotReady (no network plugin).
package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// ConfigFile is the configuration's name in containerd's CNI configuration directory.
const ConfigFile = "10-constellation.conflist"

// DefaultConfDir is containerd's default CNI configuration directory.
const DefaultConfDir = "/etc/cni/net.d"

// Config returns the CNI configuration list for a node whose pods get addresses from podCIDR.
func Config(podCIDR netip.Prefix) ([]byte, error) {
	if !podCIDR.IsValid() || !podCIDR.Addr().Is4() || podCIDR.Bits() > 30 || podCIDR.Masked() != podCIDR {
		return nil, fmt.Errorf("pod prefix %q is not an IPv4 network of at least 4 addresses", podCIDR)
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "constellation",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      "cni0",
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podCIDR.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// Write writes the configuration for podCIDR into dir.
func Write(dir string, podCIDR netip.Prefix) error {
	raw, err := Config(podCIDR)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("writing the CNI configuration: %w", err)
	}
	path := filepath.Join(dir, ConfigFile)
	if err := os.WriteFile(path+".tmp", append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the CNI configuration: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("writing the CNI configuration: %w", err)
	}
	return nil
}
