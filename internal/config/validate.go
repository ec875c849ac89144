package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/constellation-go/constellation/internal/attestation/snp"
	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/akcert"
	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions"
)

// FieldError is a problem with one field of the configuration.
type FieldError struct {
	// Field is the dotted path of the field, e.g. "nodeGroups.worker_default.initialCount".
	Field string
	// Line is the line in the file, or 0 when unknown.
	Line int
	Err  error
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("field %q (line %d): %v", e.Field, e.Line, e.Err)
	}
	return fmt.Sprintf("field %q: %v", e.Field, e.Err)
}

func (e *FieldError) Unwrap() error {
	return e.Err
}

var (
	clusterNameRe    = regexp.MustCompile(`^[a-z][a-z0-9-]*[a-z0-9]$`)
	nodeGroupNameRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,29}$`)
	uuidRe           = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	qemuAccelerators = []string{"auto", "kvm", "tcg"}
	snpProducts      = []string{"Milan", "Genoa", "Turin"}
)

const (
	maxClusterNameLen  = 20
	minStateDiskSizeGB = 10
	maxStateDiskSizeGB = 16384
)

// validator collects every problem instead of stopping at the first, so a user fixes them in one go.
type validator struct {
	errs []error
}

func (v *validator) fail(field, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: field, Err: fmt.Errorf(format, args...)})
}

func (v *validator) required(field, value string) bool {
	if strings.TrimSpace(value) == "" {
		v.fail(field, "must be set")
		return false
	}
	return true
}

// Validate checks the whole configuration and returns every problem found, each a *FieldError, joined.
func (c *Config) Validate() error {
	v := &validator{}
	if c.Version != Version1 {
		v.fail("version", "unsupported schema version %q: this CLI reads %s", c.Version, Version1)
	}
	c.validateName(v)
	if _, err := versions.ResolveKubernetes(c.KubernetesVersion); err != nil {
		v.errs = append(v.errs, &FieldError{Field: "kubernetesVersion", Err: err})
	}
	provider := c.validateProvider(v)
	c.validateAttestation(v, provider)
	c.validateNodeGroups(v, provider)
	c.validateKMS(v)
	return errors.Join(v.errs...)
}

func (c *Config) validateKMS(v *validator) {
	a := c.KMS.AWSKMS
	if a == nil {
		return
	}
	v.required("kms.awsKMS.region", a.Region)
	v.required("kms.awsKMS.keyID", a.KeyID)
	if a.Endpoint != "" {
		if u, err := url.Parse(a.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			v.fail("kms.awsKMS.endpoint", "%q is not an http(s) URL", a.Endpoint)
		}
	}
}

func (c *Config) validateName(v *validator) {
	switch {
	case c.Name == "":
		v.fail("name", "must be set")
	case len(c.Name) > maxClusterNameLen:
		v.fail("name", "%q is %d characters long; at most %d are allowed", c.Name, len(c.Name), maxClusterNameLen)
	case !clusterNameRe.MatchString(c.Name):
		v.fail("name", "%q must be lower-case letters, digits and '-', start with a letter and not end with '-'", c.Name)
	}
}

func (c *Config) validateProvider(v *validator) cloudprovider.Provider {
	provider := c.GetProvider()
	if provider == cloudprovider.Unknown {
		v.fail("provider", "set exactly one of %s", strings.Join(cloudprovider.Names(), ", "))
		return provider
	}
	p := c.Provider
	switch provider {
	case cloudprovider.Local:
		prefix, err := netip.ParsePrefix(p.Local.BridgeCIDR)
		switch {
		case err != nil:
			v.fail("provider.local.bridgeCIDR", "%q is not an IPv4 prefix like 10.42.0.0/24", p.Local.BridgeCIDR)
		case !prefix.Addr().Is4() || !prefix.Addr().IsPrivate():
			v.fail("provider.local.bridgeCIDR", "%s must be a private IPv4 prefix (10/8, 172.16/12 or 192.168/16)", prefix)
		case prefix.Bits() > 28:
			v.fail("provider.local.bridgeCIDR", "%s is too small: use a /28 or larger", prefix)
		case prefix.Masked() != prefix:
			v.fail("provider.local.bridgeCIDR", "%s has host bits set; did you mean %s?", prefix, prefix.Masked())
		}
	case cloudprovider.QEMU:
		v.required("provider.qemu.libvirtURI", p.QEMU.LibvirtURI)
		v.required("provider.qemu.firmware", p.QEMU.Firmware)
		if !slices.Contains(qemuAccelerators, p.QEMU.Accelerator) {
			v.fail("provider.qemu.accelerator", "%q is not one of %s", p.QEMU.Accelerator, strings.Join(qemuAccelerators, ", "))
		}
		if p.QEMU.VCPUs < 1 {
			v.fail("provider.qemu.vcpus", "must be at least 1 (got %d)", p.QEMU.VCPUs)
		}
		if p.QEMU.MemoryMiB < 1024 {
			v.fail("provider.qemu.memoryMiB", "must be at least 1024 (got %d): kubeadm needs about 1 GiB", p.QEMU.MemoryMiB)
		}
	case cloudprovider.AWS:
		v.required("image", c.Image)
		v.required("provider.aws.region", p.AWS.Region)
		v.required("provider.aws.iamProfileControlPlane", p.AWS.IAMProfileControlPlane)
		v.required("provider.aws.iamProfileWorkerNodes", p.AWS.IAMProfileWorkerNodes)
	case cloudprovider.GCP:
		v.required("image", c.Image)
		v.required("provider.gcp.project", p.GCP.Project)
		v.required("provider.gcp.region", p.GCP.Region)
		v.required("provider.gcp.serviceAccountKeyPath", p.GCP.ServiceAccountKeyPath)
	case cloudprovider.Azure:
		v.required("image", c.Image)
		for field, value := range map[string]string{"subscription": p.Azure.SubscriptionID, "tenant": p.Azure.TenantID} {
			if v.required("provider.azure."+field, value) && !uuidRe.MatchString(value) {
				v.fail("provider.azure."+field, "%q is not a UUID", value)
			}
		}
		v.required("provider.azure.location", p.Azure.Location)
		v.required("provider.azure.resourceGroup", p.Azure.ResourceGroup)
		v.required("provider.azure.userAssignedIdentity", p.Azure.UserAssignedIdentity)
	}
	return provider
}

func (c *Config) validateAttestation(v *validator, provider cloudprovider.Provider) {
	att, err := variant.FromString(c.Attestation.Variant)
	if err != nil {
		v.errs = append(v.errs, &FieldError{Field: "attestation.variant", Err: err})
		return
	}
	if provider != cloudprovider.Unknown && !att.SupportedBy(provider) {
		want, _ := variant.Default(provider)
		v.fail("attestation.variant", "%s nodes cannot produce %s attestations; use %s", provider, att, want)
	}
	if err := c.Attestation.Measurements.Validate(); err != nil {
		v.errs = append(v.errs, &FieldError{Field: "attestation.measurements", Err: err})
	}
	for _, idx := range measurements.DefaultEnforced {
		if c.Attestation.Measurements[idx].WarnOnly {
			v.fail(fmt.Sprintf("attestation.measurements.%d.warnOnly", idx),
				"PCR %d is always enforced: a warn-only value would let any node through; set it to false", idx)
		}
	}
	switch {
	case c.Attestation.PlatformCA != "" && !att.Equal(variant.QEMUVTPM):
		v.fail("attestation.platformCA", "only applies to qemu-vtpm, not %s; remove it", att)
	case c.Attestation.PlatformCA != "":
		if _, err := akcert.ParseCertificates([]byte(c.Attestation.PlatformCA)); err != nil {
			v.fail("attestation.platformCA", "not a PEM certificate: %v", err)
		}
	}
	switch {
	case att.IsSEVSNP() && c.Attestation.SEVSNP == nil:
		v.fail("attestation.sevSNP", "must be set for %s (the minimum TCB versions a report must show)", att)
	case !att.IsSEVSNP() && c.Attestation.SEVSNP != nil:
		v.fail("attestation.sevSNP", "only applies to SEV-SNP variants, not %s; remove it", att)
	case c.Attestation.SEVSNP != nil && !slices.Contains(snpProducts, c.Attestation.SEVSNP.Product):
		v.fail("attestation.sevSNP.product", "%q is not one of %s", c.Attestation.SEVSNP.Product, strings.Join(snpProducts, ", "))
	case c.Attestation.SEVSNP != nil:
		c.Attestation.SEVSNP.validate(v)
	}
	if src := c.Attestation.MeasurementsSource; src != nil {
		if src.Image == "" {
			v.fail("attestation.measurementsSource.image", "must be set (or remove measurementsSource)")
		}
		if _, err := src.IssuedTime(); err != nil {
			v.fail("attestation.measurementsSource.issued", "must be an RFC 3339 time like 2026-12-04T18:00:00Z")
		}
	}
}

// validate checks the SEV-SNP reference values: a policy without launch digests, or without a minimum TCB
// where no default exists, could not refuse a report of another guest or of known-vulnerable firmware.
func (s *SEVSNPConfig) validate(v *validator) {
	if len(s.LaunchMeasurements) == 0 {
		v.fail("attestation.sevSNP.launchMeasurements",
			"must be set: the launch digests (SEV-SNP MEASUREMENT, 48 bytes as hex) of the nodes' firmware; reports of any other launch are refused")
	}
	for i, m := range s.LaunchMeasurements {
		if _, err := snpLaunchMeasurement(m); err != nil {
			v.fail(fmt.Sprintf("attestation.sevSNP.launchMeasurements.%d", i), "%v", err)
		}
	}
	if s.BootloaderVersion == 0 && s.TEEVersion == 0 && s.SNPVersion == 0 && s.MicrocodeVersion == 0 {
		if _, ok := snp.DefaultMinimumTCB(s.Product); !ok {
			v.fail("attestation.sevSNP", "no default minimum firmware versions for %s: set bootloaderVersion, teeVersion, snpVersion and microcodeVersion from AMD's current security bulletins", s.Product)
		}
	}
}

// snpLaunchMeasurement decodes one configured launch digest.
func snpLaunchMeasurement(m string) ([]byte, error) {
	b, err := hex.DecodeString(m)
	if err != nil {
		return nil, fmt.Errorf("not hex: %w", err)
	}
	if len(b) != snp.LaunchMeasurementSize {
		return nil, fmt.Errorf("must be %d bytes (%d hex digits), got %d", snp.LaunchMeasurementSize, 2*snp.LaunchMeasurementSize, len(b))
	}
	return b, nil
}

// SNPPolicy returns the SEV-SNP validation policy the section describes (after Parse validated it).
func (s *SEVSNPConfig) SNPPolicy() (snp.Policy, error) {
	policy := snp.Policy{Product: s.Product, MinimumTCB: snp.TCB{
		Bootloader: s.BootloaderVersion, TEE: s.TEEVersion, SNP: s.SNPVersion, Microcode: s.MicrocodeVersion,
	}}
	for i, m := range s.LaunchMeasurements {
		b, err := snpLaunchMeasurement(m)
		if err != nil {
			return snp.Policy{}, fmt.Errorf("attestation.sevSNP.launchMeasurements.%d: %w", i, err)
		}
		policy.LaunchMeasurements = append(policy.LaunchMeasurements, b)
	}
	return policy, nil
}

func (c *Config) validateNodeGroups(v *validator, provider cloudprovider.Provider) {
	if len(c.NodeGroups) == 0 {
		v.fail("nodeGroups", "must define at least one node group with role %s", RoleControlPlane)
		return
	}
	controlPlanes := 0
	names := make([]string, 0, len(c.NodeGroups))
	for name := range c.NodeGroups {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		g := c.NodeGroups[name]
		field := "nodeGroups." + name
		if !nodeGroupNameRe.MatchString(name) {
			v.fail(field, "name %q must be 1 to 30 lower-case letters, digits, '_' and '-'", name)
		}
		switch g.Role {
		case RoleControlPlane:
			controlPlanes += max(g.InitialCount, 0)
		case RoleWorker:
		default:
			v.fail(field+".role", "%q is not %s or %s", g.Role, RoleControlPlane, RoleWorker)
		}
		if g.InitialCount < 0 {
			v.fail(field+".initialCount", "must not be negative (got %d)", g.InitialCount)
		}
		if g.StateDiskSizeGB < minStateDiskSizeGB || g.StateDiskSizeGB > maxStateDiskSizeGB {
			v.fail(field+".stateDiskSizeGB", "must be between %d and %d (got %d)", minStateDiskSizeGB, maxStateDiskSizeGB, g.StateDiskSizeGB)
		}
		if provider.IsCloud() {
			v.required(field+".zone", g.Zone)
			v.required(field+".instanceType", g.InstanceType)
		} else if provider != cloudprovider.Unknown {
			if g.Zone != "" {
				v.fail(field+".zone", "only applies to cloud providers, not %s; remove it", provider)
			}
			if g.InstanceType != "" {
				v.fail(field+".instanceType", "only applies to cloud providers, not %s; remove it", provider)
			}
		}
	}
	if controlPlanes == 0 {
		v.fail("nodeGroups", "needs at least one node with role %s (initialCount >= 1)", RoleControlPlane)
	}
}
