package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/constellation-go/constellation/internal/file"
)

// ErrInvalid marks a configuration that was read but does not validate.
var ErrInvalid = errors.New("invalid configuration")

// Load reads and validates the configuration at name. Callers add the path they show the user.
func Load(fh file.Handler, name string) (*Config, error) {
	data, err := fh.Read(name)
	if err != nil {
		return nil, fmt.Errorf("reading the configuration: %w (create one with 'constellation config generate <provider>')", err)
	}
	return Parse(data)
}

// Parse decodes and validates a configuration. Every problem is reported at once: unknown fields (with
// the closest known name), values of the wrong type and failed validation rules, each as a *FieldError.
func Parse(data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%w: not valid YAML: %w", ErrInvalid, err)
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%w: expected a YAML mapping at the top level", ErrInvalid)
	}
	w := &walker{lines: map[int]string{}}
	w.walk(root.Content[0], reflect.TypeFor[Config](), "")

	var cfg Config
	if err := root.Content[0].Decode(&cfg); err != nil {
		w.errs = append(w.errs, w.decodeErrors(err)...)
	}
	if len(w.errs) == 0 {
		if err := cfg.Validate(); err != nil {
			w.errs = append(w.errs, w.withLines(err)...)
		}
	}
	if len(w.errs) > 0 {
		return nil, fmt.Errorf("%w:\n%w", ErrInvalid, errors.Join(w.errs...))
	}
	return &cfg, nil
}

// walker checks a YAML tree against the Go type it will be decoded into. yaml.v3's own strict mode names
// neither the field's path nor what was probably meant.
type walker struct {
	errs  []error
	lines map[int]string // line of a key -> its field path
	paths map[string]int // field path -> line
}

func (w *walker) walk(node *yaml.Node, t reflect.Type, path string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if node.Kind == yaml.AliasNode {
		node = node.Alias
	}
	switch {
	case t.Kind() == reflect.Struct && node.Kind == yaml.MappingNode:
		fields := yamlFields(t)
		for i := 0; i+1 < len(node.Content); i += 2 {
			key, value := node.Content[i], node.Content[i+1]
			p := join(path, key.Value)
			w.record(p, key.Line)
			f, ok := fields[key.Value]
			if !ok {
				w.errs = append(w.errs, &FieldError{Field: p, Line: key.Line, Err: unknownFieldError(key.Value, fields)})
				continue
			}
			w.walk(value, f.Type, p)
		}
	case t.Kind() == reflect.Map && node.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(node.Content); i += 2 {
			key, value := node.Content[i], node.Content[i+1]
			p := join(path, key.Value)
			w.record(p, key.Line)
			w.walk(value, t.Elem(), p)
		}
	case t.Kind() == reflect.Slice && node.Kind == yaml.SequenceNode:
		for i, item := range node.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.record(p, item.Line)
			w.walk(item, t.Elem(), p)
		}
	}
	// Kind mismatches are left to the decoder, which reports them with the line.
}

func (w *walker) record(path string, line int) {
	if _, taken := w.lines[line]; !taken {
		w.lines[line] = path
	}
	if w.paths == nil {
		w.paths = map[string]int{}
	}
	w.paths[path] = line
}

// lineOf returns the line of path, or of its nearest ancestor in the file for a missing field.
func (w *walker) lineOf(path string) int {
	for path != "" {
		if line, ok := w.paths[path]; ok {
			return line
		}
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

var lineRe = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// decodeErrors turns yaml.v3's "line N: ..." messages into FieldErrors named by path.
func (w *walker) decodeErrors(err error) []error {
	var msgs []string
	var typeErr *yaml.TypeError
	if errors.As(err, &typeErr) {
		msgs = typeErr.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var out []error
	for _, msg := range msgs {
		m := lineRe.FindStringSubmatch(msg)
		if m == nil {
			out = append(out, errors.New(msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		field := w.lines[line]
		if field == "" {
			out = append(out, fmt.Errorf("line %d: %s", line, m[2]))
			continue
		}
		// Nested decoders (measurement digests) repeat the line in their message.
		text := strings.TrimPrefix(m[2], "line "+m[1]+": ")
		out = append(out, &FieldError{Field: field, Line: line, Err: errors.New(text)})
	}
	return out
}

// withLines adds line numbers to the validation errors whose field appears in the file.
func (w *walker) withLines(err error) []error {
	var errs []error
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		var fe *FieldError
		if errors.As(e, &fe) && fe.Line == 0 {
			fe.Line = w.lineOf(fe.Field)
		}
	}
	return errs
}

func unknownFieldError(name string, fields map[string]reflect.StructField) error {
	known := make([]string, 0, len(fields))
	for k := range fields {
		known = append(known, k)
	}
	slices.Sort(known)
	if best := closest(name, known); best != "" {
		return fmt.Errorf("unknown field; did you mean %q?", best)
	}
	return fmt.Errorf("unknown field; known fields here: %s", strings.Join(known, ", "))
}

// closest returns the known name nearest to name, if it is near enough to be a typo.
func closest(name string, known []string) string {
	best, bestDist := "", -1
	for _, k := range known {
		d := levenshtein(strings.ToLower(name), strings.ToLower(k))
		if bestDist < 0 || d < bestDist {
			best, bestDist = k, d
		}
	}
	if bestDist < 0 || bestDist > max(2, len(name)/3) {
		return ""
	}
	return best
}

func levenshtein(a, b string) int {
	prevprev := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			// A swapped pair ("nmae") is one typo, not two.
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prevprev[j-2]+1)
			}
		}
		prevprev, prev, cur = prev, cur, prevprev
	}
	return prev[len(b)]
}

// yamlFields maps the YAML names of t's fields to the fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	fields := map[string]reflect.StructField{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		if name := yamlName(f); name != "" {
			fields[name] = f
		}
	}
	return fields
}

func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Marshal encodes the configuration as YAML with every field documented by a comment.
func (c *Config) Marshal() ([]byte, error) {
	var node yaml.Node
	if err := node.Encode(c); err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	comment(&node, reflect.TypeFor[Config]())
	data, err := file.EncodeYAML(&node)
	if err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	return append([]byte(fileHeader), spaceSections(data)...), nil
}

const fileHeader = "# Constellation cluster configuration, schema " + Version1 + ".\n" +
	"# Check it with 'constellation config validate'; its JSON Schema: 'constellation config schema'.\n\n"

// spaceSections puts a blank line before each top-level comment that follows a value, so that the sections
// of a generated file are easy to scan.
func spaceSections(data []byte) []byte {
	lines := bytes.Split(data, []byte("\n"))
	out := make([][]byte, 0, len(lines)+16)
	for i, line := range lines {
		if i > 0 && bytes.HasPrefix(line, []byte("#")) {
			prev := lines[i-1]
			if len(prev) > 0 && !bytes.HasPrefix(prev, []byte("#")) {
				out = append(out, nil)
			}
		}
		out = append(out, line)
	}
	return bytes.Join(out, []byte("\n"))
}

// wrap breaks text into lines of at most width characters at spaces.
func wrap(text string, width int) string {
	var b strings.Builder
	lineLen := 0
	for i, word := range strings.Fields(text) {
		if i > 0 {
			if lineLen+1+len(word) > width {
				b.WriteByte('\n')
				lineLen = 0
			} else {
				b.WriteByte(' ')
				lineLen++
			}
		}
		b.WriteString(word)
		lineLen += len(word)
	}
	return b.String()
}

// commentWidth is the column at which generated comments wrap.
const commentWidth = 90

func comment(node *yaml.Node, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && node.Kind == yaml.MappingNode:
		fields := yamlFields(t)
		for i := 0; i+1 < len(node.Content); i += 2 {
			key, value := node.Content[i], node.Content[i+1]
			f, ok := fields[key.Value]
			if !ok {
				continue
			}
			key.HeadComment = wrap(f.Tag.Get("jsonschema_description"), commentWidth)
			comment(value, f.Type)
		}
	case t.Kind() == reflect.Map && node.Kind == yaml.MappingNode:
		for i := 1; i < len(node.Content); i += 2 {
			comment(node.Content[i], t.Elem())
		}
	}
}
