// Package snp validates the hardware half of the *-sev-snp attestation variants. The vTPM's quote alone
// proves nothing about the machine it runs on; an AMD SEV-SNP report, signed by the AMD secure processor
// and carrying a hash of the vTPM attestation key (AK) in REPORT_DATA, extends trust in AMD's silicon to
// that AK. This package establishes that the report really comes from AMD hardware at an acceptable
// firmware level, that it describes a launch the cluster expects (the firmware's launch digest, VMPL 0, a
// guest policy without debugging or a migration agent), and that it vouches for the expected AK and was
// made for this attestation (REPORT_DATA = SHA-256(AK) || SHA-256(nonce), see Binding).
//
// Signature and certificate checking is go-sev-guest's; this package only wires it up so that it never
// touches the network and then applies the cluster's policy.
package snp

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// Each failure class has its own sentinel so callers can tell an attacker or broken host (signature,
// malformed report) from an outdated or misconfigured node (TCB, debug) and from their own misconfiguration
// (ErrInvalidPolicy) when they log or report the refusal.
var (
	// ErrMalformedReport marks a report that is not a well-formed SNP ATTESTATION_REPORT.
	ErrMalformedReport = errors.New("malformed SEV-SNP report")
	// ErrSignature marks a report whose signature, endorsement certificate or chain to the AMD root fails.
	ErrSignature = errors.New("SEV-SNP report signature or certificate chain invalid")
	// ErrMissingCertificate marks an attestation without the VCEK or VLEK certificate the report needs.
	ErrMissingCertificate = errors.New("missing SEV-SNP endorsement key certificate")
	// ErrDebugEnabled marks a report whose guest policy lets the host debug (read) guest memory.
	ErrDebugEnabled = errors.New("SEV-SNP guest policy allows debugging")
	// ErrTCBTooLow marks a report from firmware older than the policy's minimum.
	ErrTCBTooLow = errors.New("SEV-SNP TCB below the policy minimum")
	// ErrReportDataMismatch marks a report that vouches for something other than the expected REPORT_DATA.
	ErrReportDataMismatch = errors.New("SEV-SNP REPORT_DATA mismatch")
	// ErrInvalidPolicy marks a policy the validator cannot work with; the attestation was not judged.
	ErrInvalidPolicy = errors.New("invalid SEV-SNP validation policy")
	// ErrLaunchMeasurement marks a report whose MEASUREMENT (the launch digest of the guest's initial memory,
	// i.e. its firmware) is none of the policy's: another firmware, or another guest altogether.
	ErrLaunchMeasurement = errors.New("SEV-SNP launch measurement not accepted")
	// ErrVMPL marks a report requested from a VM privilege level other than 0: software that runs below the
	// guest's most privileged level (and could be made to lie about the rest) asked for it.
	ErrVMPL = errors.New("SEV-SNP report not from VMPL 0")
	// ErrMigrationAgent marks a report whose guest policy allows a migration agent, which can export the
	// guest's memory and state to another machine.
	ErrMigrationAgent = errors.New("SEV-SNP guest policy allows a migration agent")
)

// LaunchMeasurementSize is the size of a report's MEASUREMENT (SHA-384).
const LaunchMeasurementSize = 48

// Attestation is what a node sends: the raw report plus the certificates it got from the host.
type Attestation struct {
	// Report is the raw 1184-byte ATTESTATION_REPORT.
	Report []byte
	// VCEK is the DER certificate of the chip's versioned endorsement key; needed if the report is
	// VCEK-signed (bare metal, GCP, Azure).
	VCEK []byte
	// VLEK is the DER certificate of the cloud's versioned loaded endorsement key; needed if the report is
	// VLEK-signed (AWS).
	VLEK []byte
	// CertChain holds the ASK (or ASVK) then the ARK as the host returned them, DER. They are never trusted:
	// whoever controls the host could send any chain, so the roots come from Policy alone. The field exists
	// so a node can forward the host's certificate table unchanged.
	CertChain [][]byte
}

// TCB holds the security version numbers (SVNs) of the AMD firmware components in a report's TCB.
type TCB struct {
	Bootloader uint8
	TEE        uint8
	SNP        uint8
	Microcode  uint8
}

// Policy is what a cluster accepts. Product and LaunchMeasurements are required; the zero value of every
// other field is the strict choice.
type Policy struct {
	// LaunchMeasurements are the accepted MEASUREMENT values (48 bytes each): the launch digests of the
	// firmware the nodes boot with, computed from the image's firmware. Required: without a reference the
	// report could come from any guest on any SNP machine.
	LaunchMeasurements [][]byte
	// MinimumTCB is compared per component with the report's REPORTED_TCB, which must also be the TCB the
	// endorsement certificate was issued for: old firmware with known flaws cannot sign with a newer key.
	// The zero value means the product line's default (DefaultMinimumTCB); a product line without a default
	// needs an explicit minimum.
	MinimumTCB TCB
	// AllowMigrationAgent accepts guests whose policy allows a migration agent (MIGRATE_MA).
	AllowMigrationAgent bool
	// AllowDebug accepts guests whose policy lets the host debug them, which exposes all guest memory.
	// Only for test clusters.
	AllowDebug bool
	// Product is the AMD product line ("Milan", "Genoa", "Turin") whose AMD root must anchor the chain.
	// Required: a report from another product line is refused.
	Product string
	// TrustedRoots replaces go-sev-guest's embedded AMD roots for Product, e.g. after AMD rotates them. Each
	// entry is a PEM bundle as AMD's KDS serves it at /{vcek,vlek}/v1/{product}/cert_chain (ASK or ASVK, then
	// ARK).
	TrustedRoots [][]byte
	// Now is the time at which certificates must be valid; zero means time.Now(). Set for replaying old
	// attestations and in tests.
	Now time.Time
}

// defaultMinimumTCBs are the minimum firmware levels a policy without an explicit MinimumTCB requires. Milan:
// the levels Constellation documents as its Azure defaults (bootloader 3, TEE 0, SNP 8, microcode 115),
// which fix the SNP firmware vulnerabilities of AMD's 2023 bulletins. No default is embedded for Genoa and
// Turin: a made-up level either refuses good nodes or admits vulnerable ones, so those need an explicit
// minimum from AMD's current security bulletins.
var defaultMinimumTCBs = map[string]TCB{
	"Milan": {Bootloader: 3, TEE: 0, SNP: 8, Microcode: 115},
}

// DefaultMinimumTCB returns the minimum firmware levels of product line product used when a policy sets none.
func DefaultMinimumTCB(product string) (TCB, bool) {
	tcb, ok := defaultMinimumTCBs[product]
	return tcb, ok
}

// nonceDomain separates the hash of the nonce in REPORT_DATA from any other use of SHA-256 over a nonce.
const nonceDomain = "constellation sev-snp report nonce\x00"

// Binding returns the REPORT_DATA the vTPM variants put into the report: SHA-256 of the AK public key (in
// the encoding the issuer hashed), so the report vouches for exactly that AK, followed by SHA-256 of the
// attestation's nonce, so the report was made for this attestation and cannot be replayed from an earlier
// one (e.g. one made before the node's firmware was downgraded or its measurements were revoked).
func Binding(akPublic, nonce []byte) [64]byte {
	var binding [64]byte
	ak := sha256.Sum256(akPublic)
	copy(binding[:32], ak[:])
	h := sha256.New()
	h.Write([]byte(nonceDomain))
	h.Write(nonce)
	copy(binding[32:], h.Sum(nil))
	return binding
}

// Validate checks att against policy and reportData, the REPORT_DATA the caller expects (AKBinding for the
// vTPM variants). The expected REPORT_DATA is an argument rather than part of Policy because it differs for
// every attestation while a policy is per cluster.
//
// The signature and certificate chain are checked before any field of the report is judged, so forged
// content cannot influence a decision, and the parsed report is returned only when every check passed.
// Policy violations are all reported together in one error.
func Validate(att Attestation, policy Policy, reportData [64]byte) (*sevsnp.Report, error) {
	roots, err := trustedRoots(policy)
	if err != nil {
		return nil, err
	}
	if err := checkReferences(policy); err != nil {
		return nil, err
	}
	report, err := decodeReport(att.Report)
	if err != nil {
		return nil, err
	}
	if err := verifySignature(report, att, policy.Product, verifyOptions(policy, roots)); err != nil {
		return nil, err
	}
	if err := checkPolicy(report, policy, reportData); err != nil {
		return nil, err
	}
	return report, nil
}

// embeddedRoots are go-sev-guest's copies of AMD's KDS cert_chain bundles. The VLEK bundles are included
// because go-sev-guest's own default roots lack the ASVK, which would make every VLEK report fail.
var embeddedRoots = map[string][][]byte{
	"Milan": {trust.AskArkMilanVcekBytes, trust.AskArkMilanVlekBytes},
	"Genoa": {trust.AskArkGenoaVcekBytes, trust.AskArkGenoaVlekBytes},
	"Turin": {trust.AskArkTurinVcekBytes, trust.AskArkTurinVlekBytes},
}

// trustedRoots turns the policy's root bundles into go-sev-guest roots for policy.Product. Bundles under the
// same ARK are merged into one root so that the ASK (for VCEKs) and the ASVK (for VLEKs) are both there.
func trustedRoots(policy Policy) ([]*trust.AMDRootCerts, error) {
	if policy.Product == "" {
		return nil, fmt.Errorf("%w: no AMD product line given (one of %s)", ErrInvalidPolicy, knownProducts())
	}
	bundles := policy.TrustedRoots
	if len(bundles) == 0 {
		var ok bool
		if bundles, ok = embeddedRoots[policy.Product]; !ok {
			return nil, fmt.Errorf("%w: no embedded AMD roots for product line %q (one of %s); set TrustedRoots",
				ErrInvalidPolicy, policy.Product, knownProducts())
		}
	}

	var roots []*trust.AMDRootCerts
	for i, bundle := range bundles {
		// Trailing whitespace is tolerated: go-sev-guest's own Turin VLEK bundle ends in a blank line.
		icaDER, arkDER, err := kds.ParseProductCertChain(bytes.TrimSpace(bundle))
		if err != nil {
			return nil, fmt.Errorf("%w: trusted root bundle %d: %w", ErrInvalidPolicy, i, err)
		}
		ica, err := x509.ParseCertificate(icaDER)
		if err != nil {
			return nil, fmt.Errorf("%w: trusted root bundle %d: intermediate certificate: %w", ErrInvalidPolicy, i, err)
		}
		ark, err := x509.ParseCertificate(arkDER)
		if err != nil {
			return nil, fmt.Errorf("%w: trusted root bundle %d: ARK certificate: %w", ErrInvalidPolicy, i, err)
		}
		// go-sev-guest tells the two intermediates apart by this common-name prefix, too.
		isASVK := strings.HasPrefix(ica.Subject.CommonName, "SEV-VLEK")

		idx := slices.IndexFunc(roots, func(r *trust.AMDRootCerts) bool {
			pc := r.ProductCerts
			return pc.Ark.Equal(ark) && ((isASVK && pc.Asvk == nil) || (!isASVK && pc.Ask == nil))
		})
		if idx < 0 {
			root := trust.AMDRootCertsProduct(policy.Product)
			root.ProductCerts = &trust.ProductCerts{Ark: ark}
			roots = append(roots, root)
			idx = len(roots) - 1
		}
		if isASVK {
			roots[idx].ProductCerts.Asvk = ica
		} else {
			roots[idx].ProductCerts.Ask = ica
		}
	}
	return roots, nil
}

// Check reports whether the policy can be used to judge reports (ErrInvalidPolicy if not), so that a
// validator refuses a bad policy when it is built rather than at the first node.
func (p Policy) Check() error {
	if _, err := trustedRoots(p); err != nil {
		return err
	}
	return checkReferences(p)
}

// checkReferences refuses a policy that could not refuse anything: no launch measurement, one of the wrong
// size, or no minimum TCB for a product line without a default.
func checkReferences(policy Policy) error {
	if len(policy.LaunchMeasurements) == 0 {
		return fmt.Errorf("%w: no launch measurement to compare reports with (attestation.sevSNP.launchMeasurements)", ErrInvalidPolicy)
	}
	for i, m := range policy.LaunchMeasurements {
		if len(m) != LaunchMeasurementSize {
			return fmt.Errorf("%w: launch measurement %d is %d bytes, want %d", ErrInvalidPolicy, i, len(m), LaunchMeasurementSize)
		}
	}
	if _, err := minimumTCB(policy); err != nil {
		return err
	}
	return nil
}

// minimumTCB returns the policy's minimum TCB, or its product line's default when it sets none.
func minimumTCB(policy Policy) (TCB, error) {
	if policy.MinimumTCB != (TCB{}) {
		return policy.MinimumTCB, nil
	}
	tcb, ok := DefaultMinimumTCB(policy.Product)
	if !ok {
		return TCB{}, fmt.Errorf("%w: no default minimum TCB for %s; set the minimum SVNs (attestation.sevSNP.*Version) from AMD's current security bulletins",
			ErrInvalidPolicy, policy.Product)
	}
	return tcb, nil
}

func knownProducts() string {
	return strings.Join(slices.Sorted(maps.Keys(embeddedRoots)), ", ")
}

// decodeReport decodes the raw report into the form go-sev-guest verifies. Nothing in it is trusted yet.
func decodeReport(raw []byte) (*sevsnp.Report, error) {
	switch {
	case len(raw) == 0:
		return nil, fmt.Errorf("%w: empty report", ErrMalformedReport)
	case len(raw) != abi.ReportSize:
		return nil, fmt.Errorf("%w: report is %d bytes, want %d", ErrMalformedReport, len(raw), abi.ReportSize)
	}
	if err := abi.ValidateReportFormat(raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedReport, err)
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedReport, err)
	}
	// go-sev-guest checks the signature over the report re-encoded from this struct. Requiring the
	// re-encoding to equal the received bytes makes the verified bytes exactly the bytes the node sent.
	reencoded, err := abi.ReportToAbiBytes(report)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedReport, err)
	}
	if !bytes.Equal(reencoded, raw) {
		return nil, fmt.Errorf("%w: report does not survive decoding unchanged", ErrMalformedReport)
	}
	return report, nil
}

// kdsGetter is handed to go-sev-guest in case any of its code paths tries to reach AMD's Key Distribution
// Service despite DisableCertFetching. Validation must not depend on the network: an attacker on the path
// could stall it, and the certificates come with the attestation anyway.
var kdsGetter trust.HTTPSGetter = offlineGetter{}

type offlineGetter struct{}

func (offlineGetter) Get(url string) ([]byte, error) {
	return nil, fmt.Errorf("refusing to fetch %s: SEV-SNP validation works offline", url)
}

// verifyOptions configures go-sev-guest to verify with the policy's roots only and without any network
// access. Revocation is not checked, as that needs AMD's CRL from the network; AMD revokes by raising TCB
// versions rather than by listing VCEKs, which MinimumTCB covers.
func verifyOptions(policy Policy, roots []*trust.AMDRootCerts) *verify.Options {
	now := policy.Now
	if now.IsZero() {
		now = time.Now()
	}
	opts := &verify.Options{
		DisableCertFetching: true,
		CheckRevocations:    false,
		Getter:              kdsGetter,
		Now:                 now,
		TrustedRoots:        map[string][]*trust.AMDRootCerts{policy.Product: roots},
	}
	// The roots already pin the product line; naming it also makes go-sev-guest say "wrong product" for
	// version 2 reports instead of only "no trusted root".
	if product, err := kds.ParseProductLine(policy.Product); err == nil {
		opts.Product = product
	}
	return opts
}

// verifySignature checks the report's signature with its endorsement key certificate and that certificate's
// chain to the trusted AMD root, then that the certificate was issued for this chip and this TCB.
func verifySignature(report *sevsnp.Report, att Attestation, product string, opts *verify.Options) error {
	// SIGNING_KEY is covered by the signature, so picking the certificate by it is safe: a changed
	// value fails the signature check below.
	info, err := abi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformedReport, err)
	}
	chain := &sevsnp.CertificateChain{}
	var der []byte
	switch info.SigningKey {
	case abi.VcekReportSigner:
		der, chain.VcekCert = att.VCEK, att.VCEK
	case abi.VlekReportSigner:
		der, chain.VlekCert = att.VLEK, att.VLEK
	default:
		return fmt.Errorf("%w: report is not signed (SIGNING_KEY %v)", ErrSignature, info.SigningKey)
	}
	if len(der) == 0 {
		return fmt.Errorf("%w: the report is signed with the %v but the attestation has no %v certificate",
			ErrMissingCertificate, info.SigningKey, info.SigningKey)
	}

	attestation := &sevsnp.Attestation{Report: report, CertificateChain: chain}
	if err := verify.SnpAttestation(attestation, opts); err != nil {
		return fmt.Errorf("%w: product line %s, at %s: %w",
			ErrSignature, product, opts.Now.UTC().Format(time.RFC3339), err)
	}

	return checkCertBinding(report, info.SigningKey, der)
}

// checkCertBinding checks that what the verified endorsement certificate certifies matches what the
// report claims about the machine.
func checkCertBinding(report *sevsnp.Report, key abi.ReportSigner, der []byte) error {
	cert, err := trust.ParseCert(der)
	if err != nil {
		return fmt.Errorf("%w: %v certificate: %w", ErrSignature, key, err)
	}
	exts, err := kds.CertificateExtensions(cert, key)
	if err != nil {
		return fmt.Errorf("%w: %v certificate extensions: %w", ErrSignature, key, err)
	}
	// An endorsement key is derived from the firmware's TCB, so the certificate's TCB is what the
	// hardware proves; REPORTED_TCB, which the policy is checked against, must be that TCB.
	if uint64(exts.TCBVersion) != report.GetReportedTcb() {
		return fmt.Errorf("%w: the %v certificate is for TCB %#016x but the report's REPORTED_TCB is %#016x",
			ErrSignature, key, uint64(exts.TCBVersion), report.GetReportedTcb())
	}
	// CHIP_ID is all zeros when the host masks it; otherwise a VCEK belongs to exactly one chip.
	masked := !slices.ContainsFunc(report.GetChipId(), func(b byte) bool { return b != 0 })
	if key == abi.VcekReportSigner && !masked && !bytes.Equal(report.GetChipId(), exts.HWID) {
		return fmt.Errorf("%w: the VCEK certificate is for chip %x, the report is from chip %x",
			ErrSignature, exts.HWID, report.GetChipId())
	}
	return nil
}

// checkPolicy judges a verified report against the policy. It collects every violation so that an operator
// sees all of them at once.
func checkPolicy(report *sevsnp.Report, policy Policy, reportData [64]byte) error {
	var errs []error

	if !slices.ContainsFunc(policy.LaunchMeasurements, func(m []byte) bool { return bytes.Equal(m, report.GetMeasurement()) }) {
		errs = append(errs, fmt.Errorf("%w: the report's MEASUREMENT is %x, which is not one of the %d configured",
			ErrLaunchMeasurement, report.GetMeasurement(), len(policy.LaunchMeasurements)))
	}
	if report.GetVmpl() != 0 {
		errs = append(errs, fmt.Errorf("%w: the report was requested at VMPL %d", ErrVMPL, report.GetVmpl()))
	}

	guest, err := abi.ParseSnpPolicy(report.GetPolicy())
	if err != nil {
		errs = append(errs, fmt.Errorf("%w: guest policy: %w", ErrMalformedReport, err))
	} else {
		if guest.Debug && !policy.AllowDebug {
			errs = append(errs, fmt.Errorf("%w: guest policy %#x has DEBUG set, so the host can read guest memory",
				ErrDebugEnabled, report.GetPolicy()))
		}
		if guest.MigrateMA && !policy.AllowMigrationAgent {
			errs = append(errs, fmt.Errorf("%w: guest policy %#x has MIGRATE_MA set", ErrMigrationAgent, report.GetPolicy()))
		}
	}

	minimum, err := minimumTCB(policy)
	if err != nil {
		return err
	}
	reported := kds.DecomposeTCBVersion(kds.TCBVersion(report.GetReportedTcb()))
	for _, c := range []struct {
		name         string
		minimum, got uint8
	}{
		{"bootloader", minimum.Bootloader, reported.BlSpl},
		{"TEE", minimum.TEE, reported.TeeSpl},
		{"SNP", minimum.SNP, reported.SnpSpl},
		{"microcode", minimum.Microcode, reported.UcodeSpl},
	} {
		if c.got < c.minimum {
			errs = append(errs, fmt.Errorf("%w: %s SVN is %d, policy requires at least %d",
				ErrTCBTooLow, c.name, c.got, c.minimum))
		}
	}

	if !bytes.Equal(report.GetReportData(), reportData[:]) {
		errs = append(errs, fmt.Errorf("%w: report carries %x, expected %x",
			ErrReportDataMismatch, report.GetReportData(), reportData[:]))
	}

	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("SEV-SNP report violates policy:\n%w", errors.Join(errs...))
}
