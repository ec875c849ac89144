package components

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
)

// MarshalList encodes components as {"components": [...]}, each element with protojson (the API's field
// names): the JoinService's components file and the copy a node keeps on its state disk.
func MarshalList(comps []*Component) ([]byte, error) {
	raw := make([]json.RawMessage, 0, len(comps))
	for _, c := range comps {
		b, err := protojson.Marshal(c)
		if err != nil {
			return nil, err
		}
		raw = append(raw, b)
	}
	return json.Marshal(struct {
		Components []json.RawMessage `json:"components"`
	}{raw})
}

// UnmarshalList decodes what MarshalList encodes.
func UnmarshalList(data []byte) ([]*Component, error) {
	var raw struct {
		Components []json.RawMessage `json:"components"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decoding components: %w", err)
	}
	comps := make([]*Component, 0, len(raw.Components))
	for i, r := range raw.Components {
		c := &Component{}
		if err := protojson.Unmarshal(r, c); err != nil {
			return nil, fmt.Errorf("decoding component %d: %w", i, err)
		}
		comps = append(comps, c)
	}
	return comps, nil
}
