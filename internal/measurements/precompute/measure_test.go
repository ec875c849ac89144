package precompute

import (
	"crypto/sha256"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/tpm"
	"github.com/constellation-go/constellation/internal/tpm/swtpm/swtpmtest"
)

// TestMeasure: the extend-and-log primitive, on its own.
func TestMeasure(t *testing.T) {
	tp, err := tpm.Open(swtpmtest.Start(t).Address())
	require.NoError(t, err)
	defer tp.Close()
	events := []Event{
		{PCR: 4, Type: eventlog.EvEFIAction, Digest: sha256.Sum256([]byte("a")), Data: []byte("a")},
		{PCR: 11, Type: eventlog.EvIPL, Digest: sha256.Sum256([]byte("b")), Data: []byte("b")},
		{PCR: 4, Type: eventlog.EvSeparator, Digest: sha256.Sum256([]byte{0, 0, 0, 0}), Data: []byte{0, 0, 0, 0}},
	}
	log := eventlog.NewBuilder()
	require.NoError(t, Measure(tp, log, events...))
	parsed, err := eventlog.Parse(log.Bytes())
	require.NoError(t, err)
	replayed, err := parsed.Replay(eventlog.AlgSHA256)
	require.NoError(t, err)
	pcrs, err := tpm.ReadPCRs(tp, []uint32{4, 11})
	require.NoError(t, err)
	assert.Equal(t, pcrs[4], replayed[4])
	assert.Equal(t, pcrs[11], replayed[11])
	assert.Len(t, parsed.Events, len(events)+1)

	err = Measure(tp, log, Event{PCR: 99, Digest: sha256.Sum256(nil)})
	require.Error(t, err)
	parsed, err = eventlog.Parse(log.Bytes())
	require.NoError(t, err)
	assert.Len(t, parsed.Events, len(events)+1, "a failed extend is not logged")
}
