// Package variant names the attestation variants. Each variant has one ASN.1 object identifier that marks
// its attestation documents (in aTLS certificate extensions) and selects its Issuer/Validator pair.
package variant

import (
	"encoding/asn1"
	"fmt"
	"slices"
	"strings"

	"github.com/constellation-go/constellation/internal/cloudprovider"
)

// Variant is an attestation variant.
type Variant struct {
	name      string
	oid       asn1.ObjectIdentifier
	providers []cloudprovider.Provider
}

// The OIDs live under an unregistered private arc that is only meaningful between this project's
// components; nothing outside the cluster interprets them.
var (
	// QEMUVTPM is a vTPM quote with no hardware report behind it (local and qemu providers).
	QEMUVTPM = Variant{name: "qemu-vtpm", oid: asn1.ObjectIdentifier{1, 3, 9901, 1, 1}, providers: []cloudprovider.Provider{cloudprovider.Local, cloudprovider.QEMU}}
	// AWSSEVSNP is a vTPM quote whose attestation key an AMD SEV-SNP report vouches for, on AWS.
	AWSSEVSNP = Variant{name: "aws-sev-snp", oid: asn1.ObjectIdentifier{1, 3, 9901, 1, 2}, providers: []cloudprovider.Provider{cloudprovider.AWS}}
	// GCPSEVSNP is a vTPM quote whose attestation key an AMD SEV-SNP report vouches for, on GCP.
	GCPSEVSNP = Variant{name: "gcp-sev-snp", oid: asn1.ObjectIdentifier{1, 3, 9901, 1, 3}, providers: []cloudprovider.Provider{cloudprovider.GCP}}
	// AzureSEVSNP is a vTPM quote whose attestation key an AMD SEV-SNP report vouches for, on Azure.
	AzureSEVSNP = Variant{name: "azure-sev-snp", oid: asn1.ObjectIdentifier{1, 3, 9901, 1, 4}, providers: []cloudprovider.Provider{cloudprovider.Azure}}
)

// All lists every known variant.
func All() []Variant {
	return []Variant{QEMUVTPM, AWSSEVSNP, GCPSEVSNP, AzureSEVSNP}
}

// Names returns the names of All, for help texts and shell completion.
func Names() []string {
	all := All()
	names := make([]string, len(all))
	for i, v := range all {
		names[i] = v.name
	}
	return names
}

// FromString returns the variant with the given name.
func FromString(name string) (Variant, error) {
	for _, v := range All() {
		if v.name == name {
			return v, nil
		}
	}
	return Variant{}, fmt.Errorf("unknown attestation variant %q: choose one of %s", name, strings.Join(Names(), ", "))
}

// FromOID returns the variant identified by oid.
func FromOID(oid asn1.ObjectIdentifier) (Variant, error) {
	for _, v := range All() {
		if v.oid.Equal(oid) {
			return v, nil
		}
	}
	return Variant{}, fmt.Errorf("unknown attestation variant OID %s", oid)
}

// Default returns the variant a new configuration uses for provider.
func Default(provider cloudprovider.Provider) (Variant, error) {
	switch provider {
	case cloudprovider.Local, cloudprovider.QEMU:
		return QEMUVTPM, nil
	case cloudprovider.AWS:
		return AWSSEVSNP, nil
	case cloudprovider.GCP:
		return GCPSEVSNP, nil
	case cloudprovider.Azure:
		return AzureSEVSNP, nil
	}
	return Variant{}, fmt.Errorf("no attestation variant for provider %q", provider)
}

// SupportedBy reports whether nodes of provider can produce this variant's attestation.
func (v Variant) SupportedBy(provider cloudprovider.Provider) bool {
	return slices.Contains(v.providers, provider)
}

// OID returns the variant's object identifier.
func (v Variant) OID() asn1.ObjectIdentifier {
	return slices.Clone(v.oid)
}

// IsSEVSNP reports whether a SEV-SNP hardware report backs the vTPM.
func (v Variant) IsSEVSNP() bool {
	return strings.HasSuffix(v.name, "-sev-snp")
}

// IsZero reports whether v is the zero Variant (no variant).
func (v Variant) IsZero() bool {
	return v.name == ""
}

// Equal reports whether two variants are the same.
func (v Variant) Equal(o Variant) bool {
	return v.name == o.name
}

func (v Variant) String() string {
	return v.name
}

// MarshalText encodes the variant as its name.
func (v Variant) MarshalText() ([]byte, error) {
	return []byte(v.name), nil
}

// UnmarshalText decodes a variant name; unknown names are an error.
func (v *Variant) UnmarshalText(text []byte) error {
	parsed, err := FromString(string(text))
	if err != nil {
		return err
	}
	*v = parsed
	return nil
}
