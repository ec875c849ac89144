package vtpmtest

import (
	_ "embed"
	"encoding/json"
	"fmt"

	"github.com/constellation-go/constellation/internal/measurements"
)

// SeedFile is where TestUpdateSeed in internal/attestation/vtpm writes a new seed.
const SeedFile = "vtpmtest/seed.json"

//go:embed seed.json
var seedJSON []byte

// Seed is a document a real swtpm issued for Boot, with its nonce, user data and reference values, so that
// validation can be tested, fuzzed and benchmarked without a TPM.
type Seed struct {
	Document     json.RawMessage `json:"document"`
	Nonce        []byte          `json:"nonce"`
	UserData     []byte          `json:"userData"`
	Measurements measurements.M  `json:"measurements"`
}

// LoadSeed returns the committed seed.
func LoadSeed() (Seed, error) {
	var s Seed
	if err := json.Unmarshal(seedJSON, &s); err != nil {
		return Seed{}, fmt.Errorf("decoding the seed document: %w", err)
	}
	return s, nil
}
