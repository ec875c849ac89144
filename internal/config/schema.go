package config

import (
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/invopop/jsonschema"

	"github.com/constellation-go/constellation/internal/measurements"
)

// SchemaID identifies the JSON Schema of Version1.
const SchemaID = "https://constellation-go.invalid/schemas/constellation-conf/" + Version1

// Schema returns the JSON Schema of the configuration, generated from the Go types.
func Schema() ([]byte, error) {
	r := &jsonschema.Reflector{
		FieldNameTag:   "yaml",
		DoNotReference: true,
		Mapper: func(t reflect.Type) *jsonschema.Schema {
			if t == reflect.TypeFor[measurements.Digest]() {
				return &jsonschema.Schema{
					Type:        "string",
					Pattern:     fmt.Sprintf("^(0x)?[0-9a-fA-F]{%d}$", 2*measurements.DigestSize),
					Description: "SHA-256 PCR value as hex.",
				}
			}
			return nil
		},
	}
	s := r.Reflect(&Config{})
	s.ID = SchemaID
	s.Title = "constellation-conf.yaml"
	// YAML map keys of measurements are PCR indices.
	if m, ok := s.Properties.Get("attestation"); ok {
		if ms, ok := m.Properties.Get("measurements"); ok {
			ms.PropertyNames = &jsonschema.Schema{Pattern: "^([0-9]|1[0-9]|2[0-3])$"}
		}
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the JSON Schema: %w", err)
	}
	return append(data, '\n'), nil
}
