package cmd

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/cosign"
	"github.com/constellation-go/constellation/internal/localkms"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/measurements/precompute"
	"github.com/constellation-go/constellation/internal/measurements/precompute/precomputetest"
	"github.com/constellation-go/constellation/internal/measurements/signed"
)

// The fetch tests start HTTP servers and clients; no goroutine may outlive a test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(localkms.Drainer))
}

func fetchedMeasurements() measurements.M {
	return measurements.M{
		4:  {Expected: bytes.Repeat([]byte{0x04}, 32)},
		9:  {Expected: bytes.Repeat([]byte{0x09}, 32)},
		11: {Expected: bytes.Repeat([]byte{0x11}, 32)},
		12: {Expected: make([]byte, 32)},
	}
}

// The configuration of the fetch tests names the image directory imageDir, whose UKI is imageUKI; the
// measurements files are for it unless a test says otherwise.
const imageDir = "img"

var (
	imageUKI = []byte("the UKI of the configured image")
	imageRef = precompute.ImageRef(imageUKI)
	// fileIssued is when the test files were issued.
	fileIssued = time.Date(2026, time.December, 1, 12, 0, 0, 0, time.UTC)
)

// signedFile returns a measurements.json for v and the configured image, and its signature by the test key.
func signedFile(t *testing.T, v string) (data, sig []byte) {
	t.Helper()
	return signFile(t, &signed.File{Version: signed.Version2, Image: imageRef, Variant: v, Issued: fileIssued, Measurements: fetchedMeasurements()})
}

func signFile(t *testing.T, f *signed.File) (data, sig []byte) {
	t.Helper()
	data, sig, err := signed.Sign(f, testSigner(t))
	require.NoError(t, err)
	return data, sig
}

// withSource returns the configuration data with a recorded measurements source issued at issued.
func withSource(t *testing.T, data []byte, issued time.Time) []byte {
	t.Helper()
	out, err := config.SetMeasurementsSource(data, config.MeasurementsSource{Image: imageRef, Issued: issued.Format(time.RFC3339)})
	require.NoError(t, err)
	return out
}

// signRaw signs arbitrary bytes with the test key: a publisher's mistake rather than an attack.
func signRaw(t *testing.T, data []byte) []byte {
	t.Helper()
	sig, err := testSigner(t).SignBlob(data)
	require.NoError(t, err)
	return sig
}

func localConfig(t *testing.T) []byte {
	t.Helper()
	cfg, err := config.Default(cloudprovider.Local)
	require.NoError(t, err)
	cfg.Image = imageDir
	data, err := cfg.Marshal()
	require.NoError(t, err)
	// A user's own comment, which the update must keep.
	return append(data, []byte("# my own note\n")...)
}

func TestConfigFetchMeasurements(t *testing.T) {
	goodData, goodSig := signedFile(t, "qemu-vtpm")
	awsData, awsSig := signedFile(t, "aws-sev-snp")
	_, otherPub, err := cosign.GenerateKeyPair(nil)
	require.NoError(t, err)
	invalidData := []byte(`{"version":"v1","image":"x","variant":"qemu-vtpm","measurements":{"4":{"expected":"00","warnOnly":false}}}`)
	invalidSig := signRaw(t, invalidData)
	flipped := bytes.Replace(goodData, []byte(`"0404`), []byte(`"0504`), 1)
	otherImageData, otherImageSig := signFile(t, &signed.File{Version: signed.Version2, Image: "sha256:" + strings.Repeat("0", 64), Variant: "qemu-vtpm", Issued: fileIssued, Measurements: fetchedMeasurements()})
	v1Data, v1Sig := signFile(t, &signed.File{Version: signed.Version1, Image: imageRef, Variant: "qemu-vtpm", Measurements: fetchedMeasurements()})
	badSig := []byte(strings.Replace(string(goodSig), string(goodSig[10]), string(goodSig[10]^1), 1))

	// Served files; a path with "slow" hangs until the client gives up.
	served := map[string][]byte{
		"/m.json": goodData, "/m.json.sig": goodSig,
		"/other/sig": goodSig,
		"/big.json":  bytes.Repeat([]byte(" "), signed.MaxFileSize+1),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "slow") {
			<-r.Context().Done()
			return
		}
		data, ok := served[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(data)
	}))
	defer srv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	testCases := map[string]struct {
		files      map[string][]byte // besides the config and the key pair
		config     []byte            // default: localConfig
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr string
	}{
		"file": {
			files:      map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			wantStdout: []string{"Verified measurements.json with cosign.pub: image " + imageRef + ", variant qemu-vtpm, issued 2026-12-01T12:00:00Z.", "PCR 4   added      0404"},
		},
		"a file issued after the one the configuration holds": {
			files:  map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			config: withSource(t, localConfig(t), fileIssued.Add(-time.Hour)),
		},
		"the same file again": {
			files:  map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			config: withSource(t, localConfig(t), fileIssued),
		},
		"rollback: a validly signed file issued before the one the configuration holds": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			config:   withSource(t, localConfig(t), fileIssued.Add(time.Hour)),
			wantCode: 1, wantStderr: "measurements.json was issued 2026-12-01T12:00:00Z, before the measurements ws/constellation-conf.yaml holds (issued 2026-12-01T13:00:00Z)",
		},
		"rollback allowed by name": {
			files:  map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			config: withSource(t, localConfig(t), fileIssued.Add(time.Hour)),
			args:   []string{"--allow-older"},
		},
		"a file without issue time (v1)": {
			files:    map[string][]byte{"measurements.json": v1Data, "measurements.json.sig": v1Sig},
			wantCode: 1, wantStderr: "has no issue time (format v1), so a rollback to older measurements could not be noticed",
		},
		"a file for another image": {
			files:    map[string][]byte{"measurements.json": otherImageData, "measurements.json.sig": otherImageSig},
			wantCode: 1, wantStderr: "holds measurements for image sha256:0000000000000000000000000000000000000000000000000000000000000000, but the image ws/constellation-conf.yaml configures is " + imageRef,
		},
		"a file for another image, allowed by name": {
			files: map[string][]byte{"measurements.json": otherImageData, "measurements.json.sig": otherImageSig},
			args:  []string{"--allow-other-image"},
		},
		"the configured image is not built": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			config:   bytes.Replace(localConfig(t), []byte("image: img"), []byte("image: missing"), 1),
			wantCode: 1, wantStderr: "reading the configured image's UKI",
		},
		"http": {
			args:       []string{"--url", srv.URL + "/m.json"},
			wantStdout: []string{"Verified " + srv.URL + "/m.json"},
		},
		"http with a separate signature URL": {
			args: []string{"--url", srv.URL + "/m.json", "--signature-url", srv.URL + "/other/sig"},
		},
		"file with a signature from http": {
			files: map[string][]byte{"rel/m.json": goodData},
			args:  []string{"--url", "rel/m.json", "--signature-url", srv.URL + "/m.json.sig"},
		},
		"built-in key": {
			files: map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			args:  []string{"--public-key", "built-in"},
		},
		"changed file": {
			files:    map[string][]byte{"measurements.json": flipped, "measurements.json.sig": goodSig},
			wantCode: 1, wantStderr: "measurements.json is not signed by cosign.pub",
		},
		"changed signature": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": badSig},
			wantCode: 1, wantStderr: "is not signed by cosign.pub",
		},
		"other key": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig, "other.pub": otherPub},
			args:     []string{"--public-key", "other.pub"},
			wantCode: 1, wantStderr: "The file was changed after signing, or signed with another key",
		},
		"garbage signature": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": []byte("no base64 here!")},
			wantCode: 1, wantStderr: "not base64",
		},
		"missing signature": {
			files:    map[string][]byte{"measurements.json": goodData},
			wantCode: 1, wantStderr: "reading measurements.json.sig",
		},
		"signed but invalid": {
			files:    map[string][]byte{"measurements.json": invalidData, "measurements.json.sig": invalidSig},
			wantCode: 1, wantStderr: "must be 32 bytes",
		},
		"variant mismatch": {
			files:    map[string][]byte{"measurements.json": awsData, "measurements.json.sig": awsSig},
			wantCode: 1, wantStderr: "measurements.json holds measurements for attestation variant aws-sev-snp, but ws/constellation-conf.yaml uses qemu-vtpm: fetch the measurements published for qemu-vtpm",
		},
		"not found": {
			args:     []string{"--url", srv.URL + "/missing.json"},
			wantCode: 1, wantStderr: "server answered 404 Not Found",
		},
		"connection refused": {
			args:     []string{"--url", closedURL + "/m.json"},
			wantCode: 1, wantStderr: "Check the URL and the network",
		},
		"timeout": {
			args:     []string{"--url", srv.URL + "/slow.json", "--timeout", "200ms"},
			wantCode: 1, wantStderr: "context deadline exceeded",
		},
		"too large": {
			args:     []string{"--url", srv.URL + "/big.json"},
			wantCode: 1, wantStderr: "larger than 65536 bytes",
		},
		"unsupported scheme": {
			args:     []string{"--url", "ftp://example.invalid/m.json"},
			wantCode: 1, wantStderr: `unsupported URL scheme "ftp"`,
		},
		"missing public key": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			args:     []string{"--public-key", "missing.pub"},
			wantCode: 1, wantStderr: "pass the publisher's cosign public key with --public-key",
		},
		"private key as public key": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			args:     []string{"--public-key", "cosign.key"},
			wantCode: 1, wantStderr: "--public-key cosign.key: reading the public key: malformed",
		},
		"invalid configuration": {
			files:    map[string][]byte{"measurements.json": goodData, "measurements.json.sig": goodSig},
			config:   bytes.Replace(localConfig(t), []byte("name: constell"), []byte("name: Bad_Name"), 1),
			wantCode: 1, wantStderr: "Fix the configuration first",
		},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			if name == "built-in key" {
				_, pub := testKeys(t)
				releasePublicKey = pub
				t.Cleanup(func() { releasePublicKey = nil })
			}
			fs := newKeyFs(t)
			cfgData := tc.config
			if cfgData == nil {
				cfgData = localConfig(t)
			}
			require.NoError(t, afero.WriteFile(fs, "ws/"+config.FileName, cfgData, 0o644))
			require.NoError(t, afero.WriteFile(fs, imageDir+"/constellation.efi", imageUKI, 0o644))
			for name, data := range tc.files {
				require.NoError(t, afero.WriteFile(fs, name, data, 0o644))
			}

			res := run(t, fs, append([]string{"-C", "ws", "config", "fetch-measurements"}, tc.args...)...)
			assert.Equal(t, tc.wantCode, res.code, "stderr: %s", res.stderr)
			assert.Contains(t, res.stderr, tc.wantStderr)
			for _, want := range tc.wantStdout {
				assert.Contains(t, res.stdout, want)
			}
			got, err := afero.ReadFile(fs, "ws/"+config.FileName)
			require.NoError(t, err)
			if tc.wantCode != 0 {
				assert.Equal(t, string(cfgData), string(got), "a failed fetch must leave the configuration byte for byte unchanged")
				assert.Contains(t, res.stderr, "Error: ")
				return
			}

			cfg, err := config.Parse(got)
			require.NoError(t, err)
			assert.Equal(t, fetchedMeasurements(), cfg.Attestation.Measurements)
			// Only the measurements and their source changed.
			served := tc.files["measurements.json"]
			if served == nil { // fetched over HTTP, or from another path: the good file
				served = goodData
			}
			mf, err := signed.Parse(served)
			require.NoError(t, err)
			want, err := config.SetMeasurements(cfgData, fetchedMeasurements())
			require.NoError(t, err)
			want, err = config.SetMeasurementsSource(want, config.MeasurementsSource{Image: mf.Image, Issued: mf.Issued.Format(time.RFC3339)})
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got))
			assert.True(t, strings.HasSuffix(string(got), "# my own note\n"))
		})
	}
}

func TestConfigFetchMeasurementsJSONAndRerun(t *testing.T) {
	data, sig := signedFile(t, "qemu-vtpm")
	fs := newKeyFs(t)
	cfgData := localConfig(t)
	// PCR 14 was set by hand and PCR 4 to another value: the signed file replaces both.
	cfgData, err := config.SetMeasurements(cfgData, measurements.M{
		4:  {Expected: bytes.Repeat([]byte{0xff}, 32)},
		11: {Expected: bytes.Repeat([]byte{0x11}, 32)},
		14: {Expected: make([]byte, 32), WarnOnly: true},
	})
	require.NoError(t, err)
	require.NoError(t, afero.WriteFile(fs, config.FileName, cfgData, 0o644))
	require.NoError(t, afero.WriteFile(fs, imageDir+"/constellation.efi", imageUKI, 0o644))
	require.NoError(t, afero.WriteFile(fs, "measurements.json", data, 0o644))
	require.NoError(t, afero.WriteFile(fs, "measurements.json.sig", sig, 0o644))

	res := run(t, fs, "config", "fetch-measurements", "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)
	var got fetchResult
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&got))
	assert.True(t, got.Changed)
	assert.Equal(t, imageRef, got.Image)
	assert.Equal(t, "2026-12-01T12:00:00Z", got.Issued)
	assert.Empty(t, got.PreviousIssued)
	assert.Equal(t, "measurements.json.sig", got.SignatureURL)
	changes := map[uint32]string{}
	for _, m := range got.Measurements {
		changes[m.PCR] = m.Change
	}
	assert.Equal(t, map[uint32]string{4: "changed", 9: "added", 11: "unchanged", 12: "added", 14: "removed"}, changes)

	updated, err := afero.ReadFile(fs, config.FileName)
	require.NoError(t, err)
	res = run(t, fs, "config", "fetch-measurements")
	require.Equal(t, 0, res.code, res.stderr)
	assert.Contains(t, res.stdout, "constellation-conf.yaml already has these measurements; nothing changed.")
	cfg, err := config.Parse(updated)
	require.NoError(t, err)
	assert.Equal(t, &config.MeasurementsSource{Image: imageRef, Issued: "2026-12-01T12:00:00Z"}, cfg.Attestation.MeasurementsSource)
	again, err := afero.ReadFile(fs, config.FileName)
	require.NoError(t, err)
	assert.Equal(t, updated, again)
}

func TestConfigFetchMeasurementsWithoutConfig(t *testing.T) {
	fs := newKeyFs(t)
	res := run(t, fs, "config", "fetch-measurements")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "constellation config generate")
	_, err := fs.Stat(config.FileName)
	assert.Error(t, err)
}

// The whole flow as a user runs it: keygen, measure with signing, fetch into a fresh configuration.
func TestKeygenMeasureFetch(t *testing.T) {
	t.Setenv(cosign.PasswordEnv, "pw")
	fs := afero.NewMemMapFs()
	require.NoError(t, afero.WriteFile(fs, "uki.efi", precomputetest.UKI(), 0o644))
	for _, args := range [][]string{
		{"image", "keygen"},
		{"image", "measure", "uki.efi", "--sign-key", "cosign.key"},
		{"-C", "ws", "config", "generate", "local"},
	} {
		res := run(t, fs, args...)
		require.Equal(t, 0, res.code, "%v: %s", args, res.stderr)
	}
	// The configuration names the image whose UKI was measured.
	require.NoError(t, afero.WriteFile(fs, "img/constellation.efi", precomputetest.UKI(), 0o644))
	generated, err := afero.ReadFile(fs, "ws/"+config.FileName)
	require.NoError(t, err)
	withImage := bytes.Replace(generated, []byte(`image: ""`), []byte(`image: img`), 1)
	require.NotEqual(t, generated, withImage)
	require.NoError(t, afero.WriteFile(fs, "ws/"+config.FileName, withImage, 0o644))

	data, err := afero.ReadFile(fs, signed.FileName)
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		file := strings.TrimPrefix(r.URL.Path, "/")
		content, err := afero.ReadFile(fs, file)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, file, time.Time{}, bytes.NewReader(content))
	}))
	defer srv.Close()

	res := run(t, fs, "-C", "ws", "config", "fetch-measurements", "--url", srv.URL+"/measurements.json")
	require.Equal(t, 0, res.code, res.stderr)
	cfgData, err := afero.ReadFile(fs, "ws/"+config.FileName)
	require.NoError(t, err)
	cfg, err := config.Parse(cfgData)
	require.NoError(t, err)
	mf, err := signed.Parse(data)
	require.NoError(t, err)
	assert.Equal(t, mf.Measurements, cfg.Attestation.Measurements)

	res = run(t, fs, "-C", "ws", "config", "validate")
	assert.Equal(t, 0, res.code, res.stderr)
}
