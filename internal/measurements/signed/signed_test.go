package signed

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/measurements"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

// issued is the issue time of the test files.
var issued = time.Date(2026, time.December, 4, 18, 0, 0, 0, time.UTC)

func digest(b byte) measurements.Digest {
	return bytes.Repeat([]byte{b}, measurements.DigestSize)
}

// testdata/measurements.json.sig was made by OpenSSL (testdata/gen.sh), as cosign sign-blob would.
func TestVerifyOpenSSLSignedFile(t *testing.T) {
	key, err := cosign.ParsePublicKey(readTestdata(t, "cosign.pub"))
	require.NoError(t, err)
	data := readTestdata(t, "measurements.json")
	f, err := Verify(data, readTestdata(t, "measurements.json.sig"), key)
	require.NoError(t, err)

	assert.Equal(t, &File{
		Version: Version1,
		Image:   "constellation-node-v0.0.0-test",
		Variant: "qemu-vtpm",
		Measurements: measurements.M{
			4:  {Expected: digest(0x11)},
			9:  {Expected: digest(0x99)},
			11: {Expected: digest(0xbb)},
			12: {Expected: digest(0x00), WarnOnly: true},
		},
	}, f)

	// The hand-written file is in the canonical form Marshal writes.
	again, err := f.Marshal()
	require.NoError(t, err)
	assert.Equal(t, string(data), string(again))
}

func TestVerifyRejects(t *testing.T) {
	key, err := cosign.ParsePublicKey(readTestdata(t, "cosign.pub"))
	require.NoError(t, err)
	data, sig := readTestdata(t, "measurements.json"), readTestdata(t, "measurements.json.sig")
	_, otherPub, err := cosign.GenerateKeyPair(nil)
	require.NoError(t, err)
	otherKey, err := cosign.ParsePublicKey(otherPub)
	require.NoError(t, err)

	// Still a valid file, with PCR 4 expecting 2222...: only the signature can tell.
	forged := bytes.Replace(data, []byte(`"1111`), []byte(`"2111`), 1)
	require.NotEqual(t, data, forged)
	_, err = Parse(forged)
	require.NoError(t, err)
	badSig := bytes.Clone(sig)
	badSig[20] ^= 0x01

	testCases := map[string]struct {
		data, sig []byte
		key       *cosign.Verifier
		wantErr   error
	}{
		"changed value":        {data: forged, sig: sig, key: key, wantErr: cosign.ErrInvalidSignature},
		"changed signature":    {data: data, sig: badSig, key: key, wantErr: cosign.ErrInvalidSignature},
		"wrong key":            {data: data, sig: sig, key: otherKey, wantErr: cosign.ErrInvalidSignature},
		"garbage signature":    {data: data, sig: []byte("%%%"), key: key, wantErr: cosign.ErrMalformed},
		"reformatted the file": {data: bytes.ReplaceAll(data, []byte("  "), []byte("\t")), sig: sig, key: key, wantErr: cosign.ErrInvalidSignature},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			f, err := Verify(tc.data, tc.sig, tc.key)
			assert.ErrorIs(t, err, tc.wantErr)
			assert.Nil(t, f)
		})
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	privPEM, pubPEM, err := cosign.GenerateKeyPair([]byte("pw"))
	require.NoError(t, err)
	signer, err := cosign.LoadPrivateKey(privPEM, []byte("pw"))
	require.NoError(t, err)
	verifier, err := cosign.ParsePublicKey(pubPEM)
	require.NoError(t, err)

	f := &File{Version: Version2, Image: "sha256:abc", Variant: "qemu-vtpm", Issued: issued, Measurements: measurements.M{
		12: {Expected: digest(3)}, 4: {Expected: digest(1)}, 9: {Expected: digest(2), WarnOnly: true},
	}}
	data, sig, err := Sign(f, signer)
	require.NoError(t, err)
	got, err := Verify(data, sig, verifier)
	require.NoError(t, err)
	assert.Equal(t, f, got)
}

func TestMarshalIsDeterministic(t *testing.T) {
	m := measurements.M{}
	for i := uint32(0); i < measurements.PCRCount; i++ {
		m[i] = measurements.Measurement{Expected: digest(byte(i)), WarnOnly: i%2 == 0}
	}
	f := &File{Version: Version2, Image: "constellation-node-v1", Variant: "aws-sev-snp", Issued: issued, Measurements: m}
	first, err := f.Marshal()
	require.NoError(t, err)
	for range 20 {
		again, err := f.Marshal()
		require.NoError(t, err)
		require.Equal(t, first, again)
	}
	text := string(first)
	assert.Less(t, strings.Index(text, `"4":`), strings.Index(text, `"11":`), "PCRs in numeric order")
	assert.True(t, strings.HasSuffix(text, "}\n"))
	assert.Contains(t, text, `"issued": "2026-12-04T18:00:00Z",`)
	parsed, err := Parse(first)
	require.NoError(t, err)
	assert.Equal(t, f, parsed)

	_, err = (&File{Version: Version1, Image: "x", Variant: "qemu-vtpm"}).Marshal()
	assert.ErrorIs(t, err, ErrInvalid, "an empty file is not written")
}

func TestParseRejects(t *testing.T) {
	valid := string(readTestdata(t, "measurements.json"))
	d := strings.Repeat("ab", measurements.DigestSize)
	file := func(measurementsJSON string) string {
		return `{"version":"v1","image":"img","variant":"qemu-vtpm","measurements":` + measurementsJSON + `}`
	}
	testCases := map[string]struct {
		data    string
		wantErr string
	}{
		"not JSON":                  {data: "hello", wantErr: "invalid character"},
		"null":                      {data: "null", wantErr: "measurements: must be set"},
		"array":                     {data: "[]", wantErr: "cannot unmarshal array"},
		"unknown field":             {data: strings.Replace(valid, `"version"`, `"signer": "me", "version"`, 1), wantErr: `unknown field "signer"`},
		"unknown measurement field": {data: file(`{"4":{"expected":"` + d + `","warnOnly":false,"note":1}}`), wantErr: `unknown field "note"`},
		"duplicate PCR":             {data: file(`{"4":{"expected":"` + d + `","warnOnly":false},"4":{"expected":"` + d + `","warnOnly":true}}`), wantErr: `field "measurements.4" appears twice`},
		"duplicate top-level":       {data: strings.Replace(valid, `"variant": "qemu-vtpm"`, `"variant": "qemu-vtpm", "variant": "aws-sev-snp"`, 1), wantErr: `field "variant" appears twice`},
		"leading zero index":        {data: file(`{"04":{"expected":"` + d + `","warnOnly":false}}`), wantErr: `PCR index "04"`},
		"negative index":            {data: file(`{"-1":{"expected":"` + d + `","warnOnly":false}}`), wantErr: `PCR index "-1"`},
		"index out of range":        {data: file(`{"24":{"expected":"` + d + `","warnOnly":false}}`), wantErr: "PCR 24: index out of range"},
		"short digest":              {data: file(`{"4":{"expected":"abcd","warnOnly":false}}`), wantErr: "must be 32 bytes"},
		"non-hex digest":            {data: file(`{"4":{"expected":"` + strings.Repeat("zz", 32) + `","warnOnly":false}}`), wantErr: "is not hex"},
		"digest not a string":       {data: file(`{"4":{"expected":42,"warnOnly":false}}`), wantErr: "must be a hex string"},
		"missing expected":          {data: file(`{"4":{"warnOnly":false}}`), wantErr: "PCR 4: expected: must be set"},
		"missing warnOnly":          {data: file(`{"4":{"expected":"` + d + `"}}`), wantErr: "PCR 4: warnOnly: must be set"},
		"no measurements":           {data: file(`{}`), wantErr: "at least one PCR"},
		"missing measurements":      {data: `{"version":"v1","image":"img","variant":"qemu-vtpm"}`, wantErr: "measurements: must be set"},
		"wrong version":             {data: strings.Replace(valid, `"v1"`, `"v3"`, 1), wantErr: `version "v3" is not supported`},
		"v2 without issue time":     {data: strings.Replace(valid, `"v1"`, `"v2"`, 1), wantErr: "issued: must be set"},
		"v1 with an issue time":     {data: strings.Replace(valid, `"variant"`, `"issued": "2026-12-04T18:00:00Z", "variant"`, 1), wantErr: "issued: not part of version v1"},
		"issue time not in UTC":     {data: strings.Replace(strings.Replace(valid, `"v1"`, `"v2"`, 1), `"variant"`, `"issued": "2026-12-04T19:00:00+01:00", "variant"`, 1), wantErr: "must be a UTC time"},
		"issue time not a time":     {data: strings.Replace(strings.Replace(valid, `"v1"`, `"v2"`, 1), `"variant"`, `"issued": "yesterday", "variant"`, 1), wantErr: "must be a UTC time"},
		"unknown variant":           {data: strings.Replace(valid, `qemu-vtpm`, `tdx`, 1), wantErr: `unknown attestation variant "tdx"`},
		"empty image":               {data: strings.Replace(valid, `constellation-node-v0.0.0-test`, ``, 1), wantErr: "image: must be set"},
		"image with a newline":      {data: strings.Replace(valid, `constellation-node-v0.0.0-test`, `a\nb`, 1), wantErr: "must not contain spaces"},
		"trailing data":             {data: valid + "{}", wantErr: "unexpected data after"},
		"too large":                 {data: valid + strings.Repeat(" ", MaxFileSize), wantErr: "larger than"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			f, err := Parse([]byte(tc.data))
			require.ErrorIs(t, err, ErrInvalid)
			assert.ErrorContains(t, err, tc.wantErr)
			assert.Nil(t, f)
		})
	}
}

func FuzzParse(f *testing.F) {
	valid, err := os.ReadFile(filepath.Join("testdata", "measurements.json"))
	require.NoError(f, err)
	f.Add(valid)
	f.Add([]byte(`{"measurements":{"4":{}}}`))
	v2 := bytes.Replace(bytes.Replace(valid, []byte(`"v1"`), []byte(`"v2"`), 1), []byte(`"variant"`), []byte(`"issued": "2026-12-04T18:00:00Z", "variant"`), 1)
	f.Add(v2)
	f.Fuzz(func(t *testing.T, data []byte) {
		parsed, err := Parse(data)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to a file that parses to the same content.
		out, err := parsed.Marshal()
		require.NoError(t, err)
		again, err := Parse(out)
		require.NoError(t, err)
		assert.Equal(t, parsed, again)
	})
}
