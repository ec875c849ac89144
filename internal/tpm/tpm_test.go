package tpm

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/constellation-go/constellation/internal/tpm/swtpm/swtpmtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestPCRsOnSwtpm(t *testing.T) {
	p := swtpmtest.Start(t)
	tpm, err := Open(p.Address())
	require.NoError(t, err)
	defer tpm.Close()

	all := make([]uint32, 24)
	for i := range all {
		all[i] = uint32(i)
	}
	pcrs, err := ReadPCRs(tpm, all)
	require.NoError(t, err)
	require.Len(t, pcrs, 24)
	zero := make([]byte, sha256.Size)
	assert.Equal(t, zero, pcrs[15], "a fresh TPM has PCR 15 = 0")

	digest := sha256.Sum256([]byte("cluster id"))
	require.NoError(t, Extend(tpm, 15, digest[:]))
	got, err := ReadPCRs(tpm, []uint32{15, 15, 4})
	require.NoError(t, err)
	want := sha256.Sum256(append(bytes.Clone(zero), digest[:]...))
	assert.Equal(t, want[:], got[15])
	assert.Equal(t, pcrs[4], got[4], "other PCRs are unchanged")
	assert.Len(t, got, 2)

	assert.ErrorContains(t, Extend(tpm, 15, []byte{1, 2}), "digest must be 32 bytes")
	// PCR 0 can only be extended from locality 3/4; the TPM's refusal must surface as an error.
	assert.Error(t, Extend(tpm, 99, digest[:]))
}

func TestOpenErrors(t *testing.T) {
	testCases := map[string]struct {
		addr    string
		wantErr string
	}{
		"unknown scheme":      {addr: "tcp:localhost:2321", wantErr: "unknown scheme"},
		"missing socket":      {addr: "swtpm:/nonexistent/tpm.sock", wantErr: "opening swtpm socket"},
		"socket not a socket": {addr: "swtpm:/etc/hostname", wantErr: "is not a socket"},
		"missing device":      {addr: "device:/nonexistent/tpmrm0", wantErr: "opening TPM device"},
		"bare path":           {addr: "/nonexistent/tpm0", wantErr: "opening TPM device"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			_, err := Open(tc.addr)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestSelectionRoundTrip(t *testing.T) {
	pcrs := []uint32{0, 4, 9, 11, 12, 13, 15, 23}
	got, err := SelectedPCRs(Selection(pcrs))
	require.NoError(t, err)
	assert.Equal(t, pcrs, got)

	sel := Selection(pcrs)
	sel.PCRSelections[0].Hash = tpm2.TPMAlgSHA1
	_, err = SelectedPCRs(sel)
	assert.ErrorIs(t, err, ErrNotSHA256)
}
