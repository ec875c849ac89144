package measurements

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

var (
	zeroHex = strings.Repeat("00", DigestSize)
	oneHex  = strings.Repeat("11", DigestSize)
)

func TestYAMLRoundTrip(t *testing.T) {
	in := "4:\n    expected: " + oneHex + "\n    warnOnly: false\n15:\n    expected: " + zeroHex + "\n    warnOnly: true\n"
	var m M
	require.NoError(t, yaml.Unmarshal([]byte(in), &m))
	require.NoError(t, m.Validate())
	assert.Equal(t, []uint32{4, 15}, m.Indices())
	assert.True(t, m[15].WarnOnly)
	assert.Equal(t, oneHex, m[4].Expected.String())

	out, err := yaml.Marshal(m)
	require.NoError(t, err)
	// All-digit hex is quoted so that no YAML reader takes it for a number.
	want := "4:\n    expected: \"" + oneHex + "\"\n    warnOnly: false\n15:\n    expected: \"" + zeroHex + "\"\n    warnOnly: true\n"
	assert.Equal(t, want, string(out))

	var again M
	require.NoError(t, yaml.Unmarshal(out, &again))
	assert.Equal(t, m, again)
}

func TestYAMLQuotedIndices(t *testing.T) {
	var m M
	require.NoError(t, yaml.Unmarshal([]byte(`"9": {expected: "`+oneHex+`", warnOnly: true}`), &m))
	assert.True(t, m[9].WarnOnly)
}

func TestJSONRoundTrip(t *testing.T) {
	in := `{"9":{"expected":"` + oneHex + `","warnOnly":false}}`
	var m M
	require.NoError(t, json.Unmarshal([]byte(in), &m))
	out, err := json.Marshal(m)
	require.NoError(t, err)
	assert.JSONEq(t, in, string(out))
}

func TestDecodeRejectsBadValues(t *testing.T) {
	testCases := map[string]struct {
		yaml    string
		wantErr string
	}{
		"not hex":        {yaml: "4:\n  expected: zz" + oneHex[2:] + "\n", wantErr: "not hex"},
		"too short":      {yaml: "4:\n  expected: abcd\n", wantErr: "must be 32 bytes (64 hex digits), got 2 bytes"},
		"too long":       {yaml: "4:\n  expected: " + oneHex + "00\n", wantErr: "got 33 bytes"},
		"not a scalar":   {yaml: "4:\n  expected: [1, 2]\n", wantErr: "must be a hex string"},
		"negative index": {yaml: "-1:\n  expected: " + oneHex + "\n", wantErr: `PCR index "-1" is not a number`},
		"duplicate":      {yaml: "4:\n  expected: " + oneHex + "\n\"4\":\n  expected: " + oneHex + "\n", wantErr: "PCR 4 is listed twice"},
		"not a mapping":  {yaml: "[1, 2]\n", wantErr: "must be a mapping"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			var m M
			err := yaml.Unmarshal([]byte(tc.yaml), &m)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestValidate(t *testing.T) {
	good, err := ParseDigest(oneHex)
	require.NoError(t, err)
	testCases := map[string]struct {
		m       M
		wantErr []string
	}{
		"valid":         {m: M{4: {Expected: good}, 23: {Expected: good}}},
		"empty":         {m: M{}},
		"index too big": {m: M{24: {Expected: good}}, wantErr: []string{"PCR 24: index out of range 0..23"}},
		"short value":   {m: M{9: {Expected: Digest{1, 2}}}, wantErr: []string{"PCR 9: expected value must be 32 bytes"}},
		"all errors reported together": {
			m:       M{30: {Expected: good}, 11: {Expected: nil}},
			wantErr: []string{"PCR 11:", "PCR 30:"},
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			err := tc.m.Validate()
			if len(tc.wantErr) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, want := range tc.wantErr {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestMissing(t *testing.T) {
	good, err := ParseDigest("0x" + oneHex)
	require.NoError(t, err)
	m := M{4: {Expected: good}, 11: {Expected: good}}
	assert.Equal(t, []uint32{9, 12, 13, 15}, m.Missing(DefaultEnforced))
	assert.Empty(t, m.Missing([]uint32{4, 11}))
}
