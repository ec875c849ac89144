package variant

import (
	"encoding/asn1"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cloudprovider"
)

func TestOIDsAreUniqueAndRoundTrip(t *testing.T) {
	seen := map[string]string{}
	for _, v := range All() {
		oid := v.OID().String()
		if other, ok := seen[oid]; ok {
			t.Fatalf("variants %s and %s share OID %s", other, v, oid)
		}
		seen[oid] = v.String()

		got, err := FromOID(v.OID())
		require.NoError(t, err)
		assert.True(t, got.Equal(v))
	}
	_, err := FromOID(asn1.ObjectIdentifier{1, 2, 3})
	assert.ErrorContains(t, err, "unknown attestation variant OID 1.2.3")
}

func TestDefault(t *testing.T) {
	testCases := map[cloudprovider.Provider]Variant{
		cloudprovider.Local: QEMUVTPM,
		cloudprovider.QEMU:  QEMUVTPM,
		cloudprovider.AWS:   AWSSEVSNP,
		cloudprovider.GCP:   GCPSEVSNP,
		cloudprovider.Azure: AzureSEVSNP,
	}
	for provider, want := range testCases {
		t.Run(provider.String(), func(t *testing.T) {
			got, err := Default(provider)
			require.NoError(t, err)
			assert.True(t, got.Equal(want), "got %s", got)
			assert.True(t, got.SupportedBy(provider))
		})
	}
	_, err := Default(cloudprovider.Unknown)
	assert.Error(t, err)
}

func TestSupportedBy(t *testing.T) {
	assert.False(t, AWSSEVSNP.SupportedBy(cloudprovider.GCP))
	assert.False(t, QEMUVTPM.SupportedBy(cloudprovider.Azure))
	assert.True(t, AzureSEVSNP.IsSEVSNP())
	assert.False(t, QEMUVTPM.IsSEVSNP())
}

func TestTextEncoding(t *testing.T) {
	var got struct {
		V Variant `json:"v"`
	}
	require.NoError(t, json.Unmarshal([]byte(`{"v":"gcp-sev-snp"}`), &got))
	assert.True(t, got.V.Equal(GCPSEVSNP))

	out, err := json.Marshal(got)
	require.NoError(t, err)
	assert.JSONEq(t, `{"v":"gcp-sev-snp"}`, string(out))

	err = json.Unmarshal([]byte(`{"v":"tdx-magic"}`), &got)
	assert.ErrorContains(t, err, `unknown attestation variant "tdx-magic"`)
}
