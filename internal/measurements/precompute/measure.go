package precompute

import (
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/constellation-go/constellation/internal/attestation/eventlog"
	"github.com/constellation-go/constellation/internal/tpm"
)

// Measure extends each event's digest into t's SHA-256 bank, in order, and records it in log, as firmware
// records its extends: the local provider's launcher boots nodes this way, and test vTPMs are booted with it. It stops at the first failure; log then holds the events extended before it.
func Measure(t transport.TPM, log *eventlog.Builder, events ...Event) error {
	for _, ev := range events {
		if err := tpm.Extend(t, ev.PCR, ev.Digest[:]); err != nil {
			return fmt.Errorf("measuring %s into PCR %d: %w", ev.Type, ev.PCR, err)
		}
		log.Add(ev.PCR, ev.Type, ev.Digest, ev.Data)
	}
	return nil
}
