package terraform

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/constellation-go/constellation/internal/config"
)

// EnvQEMUKVM overrides the KVM probe when provider.qemu.accelerator is auto: "1" uses KVM, "0" uses TCG.
const EnvQEMUKVM = "CONSTELLATION_QEMU_KVM"

// libvirt domain types of the qemu module's domain_type variable.
const (
	domainTypeKVM = "kvm"
	domainTypeTCG = "qemu"
)

// kvmPaths are the host files the KVM probe reads.
type kvmPaths struct {
	// Device is the KVM device, which must open read-write.
	Device string
	// CPUInfo must show the vmx or svm CPU flag: without it, /dev/kvm is a software implementation.
	CPUInfo string
	// PVMModule exists when /dev/kvm is PVM, which cannot run guests with a stock kernel and OVMF.
	PVMModule string
}

var hostKVMPaths = kvmPaths{Device: "/dev/kvm", CPUInfo: "/proc/cpuinfo", PVMModule: "/sys/module/kvm_pvm"}

// kvmProbe reports whether KVM can run the qemu provider's nodes on this machine. Tests replace it.
var kvmProbe = func() bool { return probeKVM(hostKVMPaths) }

// probeKVM reports whether KVM is usable for normal guests: the device opens read-write, the CPU has
// hardware virtualization and the KVM implementation is not PVM. When in doubt it says no: TCG is slow but
// always works.
func probeKVM(p kvmPaths) bool {
	dev, err := os.OpenFile(p.Device, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	_ = dev.Close()
	cpuinfo, err := os.ReadFile(p.CPUInfo)
	if err != nil {
		return false
	}
	hardware := false
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, flag := range strings.Fields(value) {
			if flag == "vmx" || flag == "svm" {
				hardware = true
			}
		}
	}
	if !hardware {
		return false
	}
	if _, err := os.Stat(p.PVMModule); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	return true
}

// qemuDomainType maps provider.qemu.accelerator to a libvirt domain type.
func qemuDomainType(accelerator string) (string, error) {
	switch accelerator {
	case "kvm":
		return domainTypeKVM, nil
	case "tcg":
		return domainTypeTCG, nil
	case "auto":
		switch v := os.Getenv(EnvQEMUKVM); v {
		case "1":
			return domainTypeKVM, nil
		case "0":
			return domainTypeTCG, nil
		case "":
			if kvmProbe() {
				return domainTypeKVM, nil
			}
			return domainTypeTCG, nil
		default:
			return "", fmt.Errorf("rendering variables: %s=%q: use 1 (KVM) or 0 (TCG)", EnvQEMUKVM, v)
		}
	default:
		return "", fmt.Errorf("rendering variables: provider.qemu.accelerator %q is not auto, kvm or tcg", accelerator)
	}
}

// nvramTemplate returns the OVMF variable store that belongs to a firmware code image (OVMF_CODE_4M.fd:
// OVMF_VARS_4M.fd, same directory), or "" when the name does not tell, so that libvirt picks one.
func nvramTemplate(firmware string) string {
	dir, base := filepath.Split(firmware)
	i := strings.LastIndex(base, "CODE")
	if i < 0 {
		return ""
	}
	return dir + base[:i] + "VARS" + base[i+len("CODE"):]
}

func qemuVariables(cfg *config.Config, in Inputs) (map[string]any, error) {
	q := cfg.Provider.QEMU
	if q == nil {
		return nil, errors.New("rendering variables: the configuration has no provider.qemu section")
	}
	// Terraform runs in a subdirectory of the workspace, and libvirt resolves paths on its own.
	if !filepath.IsAbs(in.ImageRef) {
		return nil, fmt.Errorf("rendering variables: the qemu provider needs the image directory as an absolute path, got %q", in.ImageRef)
	}
	if !filepath.IsAbs(q.Firmware) {
		return nil, fmt.Errorf("rendering variables: provider.qemu.firmware must be an absolute path, got %q", q.Firmware)
	}
	domainType, err := qemuDomainType(q.Accelerator)
	if err != nil {
		return nil, err
	}
	nodes, err := moduleNodes(cfg)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"libvirt_uri":    q.LibvirtURI,
		"firmware":       q.Firmware,
		"nvram_template": nvramTemplate(q.Firmware),
		"domain_type":    domainType,
		"vcpus":          q.VCPUs,
		"memory_mib":     q.MemoryMiB,
		"nodes":          nodes,
	}, nil
}

func awsVariables(cfg *config.Config, in Inputs) (map[string]any, error) {
	a := cfg.Provider.AWS
	if a == nil {
		return nil, errors.New("rendering variables: the configuration has no provider.aws section")
	}
	if !strings.HasPrefix(in.ImageRef, "ami-") {
		return nil, fmt.Errorf("rendering variables: the aws provider needs an AMI ID (ami-...) as the image, got %q", in.ImageRef)
	}
	// Availability zones are the region plus a letter, e.g. eu-west-1a.
	if err := checkZones(cfg, func(zone string) bool {
		return strings.HasPrefix(zone, a.Region) && len(zone) > len(a.Region)
	}, fmt.Sprintf("an availability zone of region %s, e.g. %sa", a.Region, a.Region)); err != nil {
		return nil, err
	}
	nodes, err := moduleNodes(cfg)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"region":                             a.Region,
		"iam_instance_profile_control_plane": a.IAMProfileControlPlane,
		"iam_instance_profile_worker_nodes":  a.IAMProfileWorkerNodes,
		"nodes":                              nodes,
	}, nil
}

func gcpVariables(cfg *config.Config, in Inputs) (map[string]any, error) {
	g := cfg.Provider.GCP
	if g == nil {
		return nil, errors.New("rendering variables: the configuration has no provider.gcp section")
	}
	if in.ImageRef == "" {
		return nil, errors.New("rendering variables: the gcp provider needs an image")
	}
	if g.ServiceAccountKeyPath == "" {
		return nil, errors.New("rendering variables: provider.gcp.serviceAccountKeyPath must be set")
	}
	if err := checkZones(cfg, func(zone string) bool {
		return strings.HasPrefix(zone, g.Region+"-") && len(zone) > len(g.Region)+1
	}, fmt.Sprintf("a zone of region %s, e.g. %s-a", g.Region, g.Region)); err != nil {
		return nil, err
	}
	credentials, err := workspaceRelative(g.ServiceAccountKeyPath)
	if err != nil {
		return nil, err
	}
	nodes, err := moduleNodes(cfg)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"project":          g.Project,
		"region":           g.Region,
		"credentials_file": credentials,
		"nodes":            nodes,
	}, nil
}

var azureZoneRe = regexp.MustCompile(`^[1-9]$`)

func azureVariables(cfg *config.Config, in Inputs) (map[string]any, error) {
	z := cfg.Provider.Azure
	if z == nil {
		return nil, errors.New("rendering variables: the configuration has no provider.azure section")
	}
	if in.ImageRef == "" {
		return nil, errors.New("rendering variables: the azure provider needs an image")
	}
	if err := checkZones(cfg, azureZoneRe.MatchString, "an availability zone number, e.g. 1"); err != nil {
		return nil, err
	}
	nodes, err := moduleNodes(cfg)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"subscription_id":        z.SubscriptionID,
		"tenant_id":              z.TenantID,
		"location":               z.Location,
		"resource_group":         z.ResourceGroup,
		"user_assigned_identity": z.UserAssignedIdentity,
		"nodes":                  nodes,
	}, nil
}

// moduleNodes renders the nodes variable; the qemu and cloud modules need a control plane for their
// endpoints.
func moduleNodes(cfg *config.Config) (map[string]any, error) {
	nodes := Nodes(cfg)
	for _, n := range nodes {
		if n.Role == config.RoleControlPlane {
			return nodesVariable(nodes), nil
		}
	}
	return nil, errors.New("rendering variables: the node groups define no control-plane node")
}

// checkZones checks the zone of every node group that has nodes; want describes a valid zone.
func checkZones(cfg *config.Config, valid func(string) bool, want string) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(cfg.NodeGroups)) {
		if g := cfg.NodeGroups[name]; g.InitialCount > 0 && !valid(g.Zone) {
			errs = append(errs, fmt.Errorf("rendering variables: nodeGroups.%s.zone %q is not %s", name, g.Zone, want))
		}
	}
	return errors.Join(errs...)
}

// workspaceRelative returns a path given relative to the workspace as Terraform, which runs in the
// workspace's Dir, must see it. Absolute paths stay as they are.
func workspaceRelative(p string) (string, error) {
	if filepath.IsAbs(p) {
		return filepath.ToSlash(filepath.Clean(p)), nil
	}
	rel, err := filepath.Rel(Dir, p)
	if err != nil {
		return "", fmt.Errorf("rendering variables: path %q: %w", p, err)
	}
	return filepath.ToSlash(rel), nil
}
