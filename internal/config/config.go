// Package config defines constellation-conf.yaml: the versioned, validated cluster configuration that the
// CLI generates, the user edits, and every later command reads.
//
// Field documentation lives in the jsonschema_description tags. They feed both the JSON Schema and the
// comments of a generated file, so the two cannot drift apart.
package config

import (
	"fmt"
	"time"

	"github.com/constellation-go/constellation/internal/attestation/snp"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/role"
	"github.com/constellation-go/constellation/internal/versions"
)

const (
	// FileName is the configuration's name in the workspace.
	FileName = "constellation-conf.yaml"
	// Version1 is the current schema version.
	Version1 = "v1"
)

// Roles of a node group.
const (
	RoleControlPlane = string(role.ControlPlane)
	RoleWorker       = string(role.Worker)
)

// Default node group names.
const (
	DefaultControlPlaneGroup = "control_plane_default"
	DefaultWorkerGroup       = "worker_default"
)

// Config is the content of constellation-conf.yaml.
type Config struct {
	Version           string               `yaml:"version" jsonschema:"enum=v1" jsonschema_description:"Schema version of this file. This CLI reads v1."`
	Name              string               `yaml:"name" jsonschema:"pattern=^[a-z][a-z0-9-]*[a-z0-9]$,minLength=2,maxLength=20" jsonschema_description:"Name of the cluster: 2 to 20 lower-case letters, digits and '-', starting with a letter and not ending with '-'. It prefixes every resource the cluster creates."`
	KubernetesVersion string               `yaml:"kubernetesVersion" jsonschema_description:"Kubernetes version to install, e.g. v1.33.13 (or v1.33 for the newest supported patch)."`
	Image             string               `yaml:"image" jsonschema_description:"Node image. local and qemu: the directory of a built image (constellation.efi, root.erofs, root.verity, disk.raw; 'make image' links it at out/image); empty means the image installed beside the CLI (<CLI directory>/image). aws, gcp, azure: the provider's image ID (AMI ID, image self-link, or image version resource ID); required there."`
	Provider          ProviderConfig       `yaml:"provider" jsonschema_description:"Where the nodes run. Set exactly one provider."`
	Attestation       AttestationConfig    `yaml:"attestation" jsonschema_description:"How nodes prove what they booted before they get keys or join the cluster."`
	NodeGroups        map[string]NodeGroup `yaml:"nodeGroups" jsonschema_description:"Groups of nodes by name. At least one control-plane node is required."`
	KMS               KMSConfig            `yaml:"kms" jsonschema_description:"Where the keys of the nodes' state disks come from. Empty: constellation-managed, derived from the master secret in constellation-mastersecret.json. awsKMS: user-managed, wrapped by a key of your KMS that never leaves it. The cluster's identity (its ID, PCR 15) always comes from the master secret."`
}

// KMSConfig selects the key backend of the cluster's KeyService.
type KMSConfig struct {
	AWSKMS *AWSKMSConfig `yaml:"awsKMS,omitempty" jsonschema_description:"User-managed keys in AWS KMS or a server of its API (e.g. local-kms): the KMS generates each data key once; the cluster keeps only wrapped keys (the KeyService's in a Secret, each node's own beside its state disk, for recovery). Credentials are never in this file: see credentialsFile."`
}

// AWSKMSConfig names an AWS KMS key.
type AWSKMSConfig struct {
	Region   string `yaml:"region" jsonschema_description:"Region of the KMS key, e.g. eu-west-1."`
	KeyID    string `yaml:"keyID" jsonschema_description:"The symmetric encryption KMS key: its ID, ARN, or alias (alias/<name>)."`
	Endpoint string `yaml:"endpoint" jsonschema_description:"URL of the KMS API; empty means AWS's endpoint of the region. Set it for a server of the API of your own, e.g. http://10.42.0.1:4599 for local-kms."`
	// CredentialsFile names a file; the credentials themselves never enter the configuration.
	CredentialsFile string `yaml:"credentialsFile" jsonschema_description:"File (relative to the workspace; keep it 0600) with the AWS credentials the cluster uses for the KMS, as 'aws configure export-credentials --format process' writes them (grant them kms:GenerateDataKey, kms:Decrypt, kms:ReEncrypt*, kms:DescribeKey on the key). apply sends them to the first control plane over attested TLS, and the KeyService keeps them in a Secret; recover also uses them. Empty: the nodes use their own AWS environment (an instance role), and recover uses yours."`
}

// Mode is "constellation-managed" or "user-managed".
func (k KMSConfig) Mode() string {
	if k.AWSKMS != nil {
		return "user-managed"
	}
	return "constellation-managed"
}

// URI is the KeyService's backend (package kmsuri).
func (k KMSConfig) URI() string {
	if a := k.AWSKMS; a != nil {
		return kmsuri.AWSKMSURI(a.Region, a.KeyID, a.Endpoint)
	}
	return kmsuri.Default
}

// String describes the backend without anything secret (there is nothing secret in it).
func (k KMSConfig) String() string {
	if a := k.AWSKMS; a != nil {
		where := "region " + a.Region
		if a.Endpoint != "" {
			where += " at " + a.Endpoint
		}
		return fmt.Sprintf("user-managed: AWS KMS key %s (%s)", a.KeyID, where)
	}
	return "constellation-managed: derived from the master secret"
}

// ProviderConfig holds the settings of exactly one provider.
type ProviderConfig struct {
	Local *LocalConfig `yaml:"local,omitempty" jsonschema_description:"Nodes as namespaces on this machine, each with its own vTPM, containerd and kubelet."`
	QEMU  *QEMUConfig  `yaml:"qemu,omitempty" jsonschema_description:"Nodes as libvirt/QEMU VMs with OVMF firmware and a swtpm vTPM."`
	AWS   *AWSConfig   `yaml:"aws,omitempty" jsonschema_description:"Nodes as AMD SEV-SNP confidential EC2 instances."`
	GCP   *GCPConfig   `yaml:"gcp,omitempty" jsonschema_description:"Nodes as AMD SEV-SNP confidential Compute Engine instances."`
	Azure *AzureConfig `yaml:"azure,omitempty" jsonschema_description:"Nodes as AMD SEV-SNP confidential Azure VMs."`
}

// LocalConfig configures the local provider.
type LocalConfig struct {
	BridgeCIDR string `yaml:"bridgeCIDR" jsonschema_description:"Private IPv4 prefix of the bridge the provider creates; nodes get addresses from it. It must not overlap a network this machine uses."`
	LocalKMS   bool   `yaml:"localKMS,omitempty" jsonschema_description:"Run a KMS of the AWS KMS API (local-kms) on the bridge's address, port 4599, with a key under alias/constellation, to try user-managed keys on this machine (mini up --kms local-kms sets it and points kms.awsKMS at it). It has no access control and keeps its keys in plain files below /var/lib/constellation/local: never for real data."`
}

// QEMUConfig configures the qemu provider.
type QEMUConfig struct {
	LibvirtURI  string `yaml:"libvirtURI" jsonschema_description:"libvirt connection URI."`
	Firmware    string `yaml:"firmware" jsonschema_description:"Path to the OVMF firmware code image on this machine."`
	Accelerator string `yaml:"accelerator" jsonschema:"enum=auto,enum=kvm,enum=tcg" jsonschema_description:"auto uses KVM when it can run the guest and TCG (software emulation) otherwise."`
	VCPUs       int    `yaml:"vcpus" jsonschema:"minimum=1" jsonschema_description:"Virtual CPUs per node."`
	MemoryMiB   int    `yaml:"memoryMiB" jsonschema:"minimum=1024" jsonschema_description:"Memory per node in MiB."`
}

// AWSConfig configures the aws provider.
type AWSConfig struct {
	Region                 string `yaml:"region" jsonschema_description:"AWS region with SEV-SNP instances, e.g. eu-west-1."`
	IAMProfileControlPlane string `yaml:"iamProfileControlPlane" jsonschema_description:"Name of the IAM instance profile for control-plane nodes."`
	IAMProfileWorkerNodes  string `yaml:"iamProfileWorkerNodes" jsonschema_description:"Name of the IAM instance profile for worker nodes."`
}

// GCPConfig configures the gcp provider.
type GCPConfig struct {
	Project               string `yaml:"project" jsonschema_description:"GCP project ID."`
	Region                string `yaml:"region" jsonschema_description:"GCP region, e.g. europe-west3."`
	ServiceAccountKeyPath string `yaml:"serviceAccountKeyPath" jsonschema_description:"Path of the service account key file, relative to the workspace."`
}

// AzureConfig configures the azure provider.
type AzureConfig struct {
	SubscriptionID       string `yaml:"subscription" jsonschema_description:"Azure subscription ID (a UUID)."`
	TenantID             string `yaml:"tenant" jsonschema_description:"Azure tenant ID (a UUID)."`
	Location             string `yaml:"location" jsonschema_description:"Azure location with confidential VMs, e.g. westeurope."`
	ResourceGroup        string `yaml:"resourceGroup" jsonschema_description:"Resource group for the cluster's resources."`
	UserAssignedIdentity string `yaml:"userAssignedIdentity" jsonschema_description:"Resource ID of the user-assigned identity the nodes use."`
}

// AttestationConfig selects the attestation variant and its reference values.
type AttestationConfig struct {
	Variant            string              `yaml:"variant" jsonschema_description:"Attestation variant: qemu-vtpm (local, qemu), aws-sev-snp, gcp-sev-snp or azure-sev-snp."`
	Measurements       measurements.M      `yaml:"measurements" jsonschema_description:"Expected PCR values by PCR index. Fill them in with 'constellation config fetch-measurements' or 'constellation image measure'; a node is only trusted when every enforced PCR matches."`
	SEVSNP             *SEVSNPConfig       `yaml:"sevSNP,omitempty" jsonschema_description:"What an SEV-SNP report must show: the launch digest of the nodes' firmware and minimum firmware versions (TCB). Only for the *-sev-snp variants."`
	PlatformCA         string              `yaml:"platformCA,omitempty" jsonschema_description:"PEM certificate of the CA of the platform that makes the nodes' vTPMs (qemu-vtpm only): a node is trusted only if its attestation key is certified by this CA. 'constellation create' fills it in from the provider; 'constellation apply' and 'verify' refuse to run without it."`
	MeasurementsSource *MeasurementsSource `yaml:"measurementsSource,omitempty" jsonschema_description:"Where the measurements came from, recorded by 'constellation config fetch-measurements': the image they are for and when the publisher issued them. A later fetch refuses a file issued earlier (a rollback) or one for another image, unless told otherwise."`
}

// MeasurementsSource records the signed measurements file the configuration's measurements came from.
type MeasurementsSource struct {
	Image  string `yaml:"image" jsonschema_description:"The image the measurements file is for, as the file names it."`
	Issued string `yaml:"issued" jsonschema_description:"The file's issue time (RFC 3339, UTC)."`
}

// IssuedTime returns the parsed issue time.
func (s *MeasurementsSource) IssuedTime() (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s.Issued)
	if err != nil {
		return time.Time{}, fmt.Errorf("attestation.measurementsSource.issued %q: not an RFC 3339 time: %w", s.Issued, err)
	}
	return t, nil
}

// SEVSNPConfig holds the reference values of SEV-SNP reports: accepted launch digests and minimum TCB
// versions.
type SEVSNPConfig struct {
	Product            string   `yaml:"product" jsonschema:"enum=Milan,enum=Genoa,enum=Turin" jsonschema_description:"AMD product line of the nodes' CPUs (Milan, Genoa or Turin); its AMD root key anchors the report's certificate chain."`
	LaunchMeasurements []string `yaml:"launchMeasurements" jsonschema_description:"Accepted launch digests (the report's MEASUREMENT, 48 bytes as hex) of the nodes' firmware; a report of any other launch is refused. Required."`
	BootloaderVersion  uint8    `yaml:"bootloaderVersion" jsonschema_description:"Minimum bootloader SVN."`
	TEEVersion         uint8    `yaml:"teeVersion" jsonschema_description:"Minimum TEE (PSP OS) SVN."`
	SNPVersion         uint8    `yaml:"snpVersion" jsonschema_description:"Minimum SNP firmware SVN."`
	MicrocodeVersion   uint8    `yaml:"microcodeVersion" jsonschema_description:"Minimum CPU microcode SVN."`
}

// NodeGroup is a set of identical nodes.
type NodeGroup struct {
	Role            string `yaml:"role" jsonschema:"enum=control-plane,enum=worker" jsonschema_description:"control-plane or worker."`
	Zone            string `yaml:"zone,omitempty" jsonschema_description:"Availability zone (cloud providers only), e.g. eu-west-1a."`
	InstanceType    string `yaml:"instanceType,omitempty" jsonschema_description:"Machine type (cloud providers only); it must support the attestation variant's confidential computing technology."`
	StateDiskSizeGB int    `yaml:"stateDiskSizeGB" jsonschema:"minimum=10" jsonschema_description:"Size of each node's encrypted state disk in GB."`
	InitialCount    int    `yaml:"initialCount" jsonschema:"minimum=0" jsonschema_description:"Number of nodes the group starts with."`
}

// Default returns a configuration for provider with every default filled in. For cloud providers, the
// account-specific fields (project, region, identities) are left empty for the user.
func Default(provider cloudprovider.Provider) (*Config, error) {
	v, err := variant.Default(provider)
	if err != nil {
		return nil, err
	}
	cfg := &Config{
		Version:           Version1,
		Name:              "constell",
		KubernetesVersion: versions.DefaultKubernetes,
		Attestation: AttestationConfig{
			Variant:      v.String(),
			Measurements: measurements.M{},
		},
	}
	if v.IsSEVSNP() {
		// The default instance types of every cloud below run on Milan CPUs.
		// The default minimum TCB is written out so that the admin sees (and reviews) what is enforced. The
		// launch digests depend on the cloud's firmware build; validation asks for them.
		tcb, _ := snp.DefaultMinimumTCB("Milan")
		cfg.Attestation.SEVSNP = &SEVSNPConfig{
			Product: "Milan", BootloaderVersion: tcb.Bootloader, TEEVersion: tcb.TEE, SNPVersion: tcb.SNP, MicrocodeVersion: tcb.Microcode,
		}
	}

	cp := NodeGroup{Role: RoleControlPlane, StateDiskSizeGB: 10, InitialCount: 1}
	worker := NodeGroup{Role: RoleWorker, StateDiskSizeGB: 10, InitialCount: 1}
	switch provider {
	case cloudprovider.Local:
		cfg.Provider.Local = &LocalConfig{BridgeCIDR: "10.42.0.0/24"}
	case cloudprovider.QEMU:
		cfg.Provider.QEMU = &QEMUConfig{
			LibvirtURI:  "qemu:///system",
			Firmware:    "/usr/share/OVMF/OVMF_CODE_4M.fd",
			Accelerator: "auto",
			VCPUs:       2,
			MemoryMiB:   2048,
		}
	case cloudprovider.AWS:
		cfg.Provider.AWS = &AWSConfig{}
		cp.InstanceType, worker.InstanceType = "m6a.xlarge", "m6a.xlarge"
		cp.StateDiskSizeGB, worker.StateDiskSizeGB = 30, 30
	case cloudprovider.GCP:
		cfg.Provider.GCP = &GCPConfig{ServiceAccountKeyPath: "gcpServiceAccountKey.json"}
		cp.InstanceType, worker.InstanceType = "n2d-standard-4", "n2d-standard-4"
		cp.StateDiskSizeGB, worker.StateDiskSizeGB = 30, 30
	case cloudprovider.Azure:
		cfg.Provider.Azure = &AzureConfig{}
		cp.InstanceType, worker.InstanceType = "Standard_DC4as_v5", "Standard_DC4as_v5"
		cp.StateDiskSizeGB, worker.StateDiskSizeGB = 30, 30
	default:
		return nil, fmt.Errorf("no default configuration for provider %q", provider)
	}
	cfg.NodeGroups = map[string]NodeGroup{DefaultControlPlaneGroup: cp, DefaultWorkerGroup: worker}
	return cfg, nil
}

// GetProvider returns the provider whose section is set, or cloudprovider.Unknown if not exactly one is.
func (c *Config) GetProvider() cloudprovider.Provider {
	var set []cloudprovider.Provider
	p := c.Provider
	if p.Local != nil {
		set = append(set, cloudprovider.Local)
	}
	if p.QEMU != nil {
		set = append(set, cloudprovider.QEMU)
	}
	if p.AWS != nil {
		set = append(set, cloudprovider.AWS)
	}
	if p.GCP != nil {
		set = append(set, cloudprovider.GCP)
	}
	if p.Azure != nil {
		set = append(set, cloudprovider.Azure)
	}
	if len(set) != 1 {
		return cloudprovider.Unknown
	}
	return set[0]
}

// GetAttestationVariant returns the configured variant. It fails only for a configuration that does not
// validate.
func (c *Config) GetAttestationVariant() (variant.Variant, error) {
	return variant.FromString(c.Attestation.Variant)
}
