package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"reflect"

	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
)

// SetMeasurements returns the configuration file data with attestation.measurements replaced by m. data
// must be a valid configuration. The user's comments, field order and formatting are kept: only the lines
// of the old measurements are replaced, so everything else stays byte for byte as it was. When the file is
// laid out so that this cannot be done safely (e.g. attestation written in flow style, or no measurements
// field), the file is re-encoded from its YAML tree instead, which keeps comments and values but not
// necessarily blank lines and quoting. Either way the result is parsed again and must equal the old
// configuration with only the measurements changed, or SetMeasurements fails.
func SetMeasurements(data []byte, m measurements.M) ([]byte, error) {
	old, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if m == nil {
		m = measurements.M{}
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%w: attestation.measurements: %w", ErrInvalid, err)
	}
	want := *old
	want.Attestation.Measurements = m

	out, spliceErr := spliceMeasurements(data, m)
	if spliceErr == nil {
		if spliceErr = sameConfig(out, &want); spliceErr == nil {
			return out, nil
		}
	}
	out, err = reencodeMeasurements(data, m)
	if err == nil {
		err = sameConfig(out, &want)
	}
	if err != nil {
		return nil, fmt.Errorf("updating attestation.measurements in place: %w; and re-encoding the file: %w", spliceErr, err)
	}
	return out, nil
}

// errNoSplice reports a layout that spliceMeasurements leaves to reencodeMeasurements.
var errNoSplice = errors.New("layout not suitable for an in-place update")

// spliceMeasurements replaces the lines of the attestation.measurements entry: the key's line and every
// following line indented deeper than the key, which in a block mapping is exactly the entry's value.
// Comment lines after the last such line are kept, since they introduce whatever follows.
func spliceMeasurements(data []byte, m measurements.M) ([]byte, error) {
	_, att, err := attestationNode(data)
	if err != nil {
		return nil, err
	}
	if att.Kind != yaml.MappingNode || att.Style&yaml.FlowStyle != 0 {
		return nil, fmt.Errorf("%w: attestation is not a block mapping", errNoSplice)
	}
	key, _ := mappingEntry(att, "measurements")
	if key == nil {
		return nil, fmt.Errorf("%w: no measurements field", errNoSplice)
	}

	lines := bytes.SplitAfter(data, []byte("\n"))
	start, indent := key.Line-1, key.Column-1
	if start < 0 || start >= len(lines) || indentOf(lines[start]) != indent {
		return nil, fmt.Errorf("%w: measurements is not the first field on its line", errNoSplice)
	}
	end := start
	for i := start + 1; i < len(lines); i++ {
		trimmed := bytes.TrimSpace(lines[i])
		if len(trimmed) == 0 || trimmed[0] == '#' {
			continue
		}
		if indentOf(lines[i]) <= indent {
			break
		}
		end = i
	}

	block, err := measurementsBlock(m, indent)
	if err != nil {
		return nil, err
	}
	if bytes.HasSuffix(lines[start], []byte("\r\n")) {
		block = bytes.ReplaceAll(block, []byte("\n"), []byte("\r\n"))
	}
	var out bytes.Buffer
	for _, l := range lines[:start] {
		out.Write(l)
	}
	out.Write(block)
	for _, l := range lines[end+1:] {
		out.Write(l)
	}
	return out.Bytes(), nil
}

// measurementsBlock encodes the measurements entry, commented like Marshal does, indented by indent spaces.
func measurementsBlock(m measurements.M, indent int) ([]byte, error) {
	var node yaml.Node
	if err := node.Encode(map[string]measurements.M{"measurements": m}); err != nil {
		return nil, fmt.Errorf("encoding the measurements: %w", err)
	}
	comment(&node, reflect.TypeFor[map[string]measurements.M]())
	enc, err := file.EncodeYAML(&node)
	if err != nil {
		return nil, fmt.Errorf("encoding the measurements: %w", err)
	}
	pad := bytes.Repeat([]byte(" "), indent)
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(enc, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		out.Write(pad)
		out.Write(line)
	}
	return out.Bytes(), nil
}

// reencodeMeasurements sets the measurements in the file's YAML tree and encodes the whole tree.
func reencodeMeasurements(data []byte, m measurements.M) ([]byte, error) {
	root, att, err := attestationNode(data)
	if err != nil {
		return nil, err
	}
	if att.Kind != yaml.MappingNode {
		return nil, errors.New("attestation is not a mapping")
	}
	var value yaml.Node
	if err := value.Encode(m); err != nil {
		return nil, fmt.Errorf("encoding the measurements: %w", err)
	}
	comment(&value, reflect.TypeFor[measurements.M]())
	if _, old := mappingEntry(att, "measurements"); old != nil {
		*old = value
	} else {
		field := yamlFields(reflect.TypeFor[AttestationConfig]())["measurements"]
		key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "measurements",
			HeadComment: wrap(field.Tag.Get("jsonschema_description"), commentWidth)}
		att.Content = append(att.Content, key, &value)
	}
	out, err := file.EncodeYAML(root)
	if err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	return spaceSections(out), nil
}

// attestationNode parses data and returns its document node and the value node of attestation.
func attestationNode(data []byte) (root, att *yaml.Node, err error) {
	root = &yaml.Node{}
	if err := yaml.Unmarshal(data, root); err != nil {
		return nil, nil, err
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil, nil, errors.New("expected a YAML mapping at the top level")
	}
	_, att = mappingEntry(root.Content[0], "attestation")
	if att == nil {
		return nil, nil, errors.New("no attestation field")
	}
	return root, att, nil
}

// mappingEntry returns the key and value nodes of name in a mapping node, or nils.
func mappingEntry(mapping *yaml.Node, name string) (key, value *yaml.Node) {
	for i := 0; i+1 < len(mapping.Content); i += 2 {
		if mapping.Content[i].Value == name {
			return mapping.Content[i], mapping.Content[i+1]
		}
	}
	return nil, nil
}

func indentOf(line []byte) int {
	return len(line) - len(bytes.TrimLeft(line, " "))
}

// sameConfig checks that data parses to want, measurements included.
func sameConfig(data []byte, want *Config) error {
	got, err := Parse(data)
	if err != nil {
		return err
	}
	if !sameMeasurements(got.Attestation.Measurements, want.Attestation.Measurements) {
		return errors.New("the measurements read back differ from those written")
	}
	g, w := *got, *want
	g.Attestation.Measurements, w.Attestation.Measurements = nil, nil
	if !reflect.DeepEqual(g, w) {
		return errors.New("a field other than the measurements changed")
	}
	return nil
}

func sameMeasurements(a, b measurements.M) bool {
	if len(a) != len(b) {
		return false
	}
	for idx, ma := range a {
		mb, ok := b[idx]
		if !ok || !bytes.Equal(ma.Expected, mb.Expected) || ma.WarnOnly != mb.WarnOnly {
			return false
		}
	}
	return true
}

// SetPlatformCA returns the configuration file data with attestation.platformCA set to pemCert. data must be
// a valid configuration. The file is re-encoded from its YAML tree, which keeps comments and values; the
// result is parsed again and must equal the old configuration with only the platform CA changed.
func SetPlatformCA(data []byte, pemCert string) ([]byte, error) {
	value := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: pemCert, Style: yaml.LiteralStyle}
	return setAttestationField(data, "platformCA", value, func(att *AttestationConfig) { att.PlatformCA = pemCert })
}

// SetMeasurementsSource returns the configuration file data with attestation.measurementsSource set to src,
// like SetPlatformCA.
func SetMeasurementsSource(data []byte, src MeasurementsSource) ([]byte, error) {
	var value yaml.Node
	if err := value.Encode(src); err != nil {
		return nil, fmt.Errorf("encoding the measurements source: %w", err)
	}
	comment(&value, reflect.TypeFor[MeasurementsSource]())
	return setAttestationField(data, "measurementsSource", &value, func(att *AttestationConfig) { att.MeasurementsSource = &src })
}

// SetKubernetesVersion returns the configuration file data with kubernetesVersion set to version, like
// SetPlatformCA.
func SetKubernetesVersion(data []byte, version string) ([]byte, error) {
	value := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: version}
	return setField(data, "", "kubernetesVersion", value, func(c *Config) { c.KubernetesVersion = version })
}

// SetImage returns the configuration file data with image set to image, like SetPlatformCA.
func SetImage(data []byte, image string) ([]byte, error) {
	value := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: image}
	return setField(data, "", "image", value, func(c *Config) { c.Image = image })
}

// setAttestationField sets attestation.<name> to value, like setField.
func setAttestationField(data []byte, name string, value *yaml.Node, set func(*AttestationConfig)) ([]byte, error) {
	return setField(data, "attestation", name, value, func(c *Config) { set(&c.Attestation) })
}

// setField sets <section>.<name> (or the top-level <name> for section "") to value in data's YAML tree and
// re-encodes it, which keeps comments and values. set applies the same change to the parsed
// configuration: the result must be valid and parse to exactly that.
func setField(data []byte, section, name string, value *yaml.Node, set func(*Config)) ([]byte, error) {
	old, err := Parse(data)
	if err != nil {
		return nil, err
	}
	want := *old
	want.Attestation.Measurements = maps.Clone(old.Attestation.Measurements)
	set(&want)
	if err := want.Validate(); err != nil {
		return nil, err
	}
	root := &yaml.Node{}
	if err := yaml.Unmarshal(data, root); err != nil {
		return nil, err
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("expected a YAML mapping at the top level")
	}
	mapping, typ := root.Content[0], reflect.TypeFor[Config]()
	if section != "" {
		_, mapping = mappingEntry(root.Content[0], section)
		if mapping == nil || mapping.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s is not a mapping", section)
		}
		typ = reflect.TypeFor[AttestationConfig]()
	}
	if _, old := mappingEntry(mapping, name); old != nil {
		*old = *value
	} else {
		field := yamlFields(typ)[name]
		key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name,
			HeadComment: wrap(field.Tag.Get("jsonschema_description"), commentWidth)}
		mapping.Content = append(mapping.Content, key, value)
	}
	out, err := file.EncodeYAML(root)
	if err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	out = spaceSections(out)
	if err := sameConfig(out, &want); err != nil {
		path := name
		if section != "" {
			path = section + "." + name
		}
		return nil, fmt.Errorf("setting %s: %w", path, err)
	}
	return out, nil
}
