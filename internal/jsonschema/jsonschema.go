// Package jsonschema generates a JSON Schema (draft 2020-12 subset) from Go
// types and validates decoded JSON documents against such a schema. It
// covers exactly what twinroot's own API types use: objects with fixed
// properties (all required, no others), arrays, strings, integers,
// numbers, booleans, nullable pointers, string maps and date-time strings.
// It is used by tests and by the generator of docs/*.schema.json, so the
// documented schema and the Go types cannot drift apart.
package jsonschema

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// ErrInvalid is wrapped by Validate's errors, which name the JSON path.
var ErrInvalid = errors.New("jsonschema: document does not match the schema")

// Schema is a JSON Schema document as decoded JSON (map[string]any).
type Schema = map[string]any

var timeType = reflect.TypeFor[time.Time]()

// Generate returns the schema of t (a struct type): every exported field
// with a json name is a required property; pointers and slices may be
// null; omitempty fields are optional.
func Generate(t reflect.Type, id, title string) Schema {
	s := gen(t)
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["$id"] = id
	s["title"] = title
	return s
}

func gen(t reflect.Type) Schema {
	if t == timeType {
		return Schema{"type": "string", "format": "date-time"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		s := gen(t.Elem())
		return nullable(s)
	case reflect.Struct:
		props := Schema{}
		var req []any
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = gen(f.Type)
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				req = append(req, name)
			}
		}
		sort.Slice(req, func(i, j int) bool { return req[i].(string) < req[j].(string) })
		s := Schema{"type": "object", "properties": props, "additionalProperties": false}
		if len(req) > 0 {
			s["required"] = req
		}
		return s
	case reflect.Slice:
		return Schema{"type": []any{"array", "null"}, "items": gen(t.Elem())}
	case reflect.Map:
		return Schema{"type": "object", "additionalProperties": gen(t.Elem())}
	case reflect.String:
		return Schema{"type": "string"}
	case reflect.Bool:
		return Schema{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return Schema{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return Schema{"type": "number"}
	case reflect.Interface:
		return Schema{}
	}
	panic(fmt.Sprintf("jsonschema: unsupported type %s", t))
}

func nullable(s Schema) Schema {
	switch ty := s["type"].(type) {
	case string:
		s["type"] = []any{ty, "null"}
	case []any:
		if !contains(ty, "null") {
			s["type"] = append(ty, "null")
		}
	}
	return s
}

func contains(l []any, v string) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

// Validate checks doc (decoded with encoding/json into any) against s.
func Validate(s Schema, doc any) error {
	return validate(s, doc, "$")
}

func typeOf(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		if v == float64(int64(v)) {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

func typeOK(want any, have string) bool {
	switch w := want.(type) {
	case nil:
		return true
	case string:
		return w == have || (w == "number" && have == "integer")
	case []any:
		for _, x := range w {
			if typeOK(x, have) {
				return true
			}
		}
	}
	return false
}

func validate(s Schema, v any, path string) error {
	have := typeOf(v)
	if !typeOK(s["type"], have) {
		return fmt.Errorf("%w: %s is %s, want %v", ErrInvalid, path, have, s["type"])
	}
	switch v := v.(type) {
	case string:
		if s["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
				return fmt.Errorf("%w: %s: %q is not a date-time", ErrInvalid, path, v)
			}
		}
	case []any:
		if items, ok := s["items"].(Schema); ok {
			for i, x := range v {
				if err := validate(items, x, fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	case map[string]any:
		props, _ := s["properties"].(Schema)
		for _, r := range asList(s["required"]) {
			if _, ok := v[r]; !ok {
				return fmt.Errorf("%w: %s lacks required %q", ErrInvalid, path, r)
			}
		}
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if ps, ok := props[k].(Schema); ok {
				if err := validate(ps, v[k], path+"."+k); err != nil {
					return err
				}
				continue
			}
			switch ap := s["additionalProperties"].(type) {
			case bool:
				if !ap {
					return fmt.Errorf("%w: %s has unknown property %q", ErrInvalid, path, k)
				}
			case Schema:
				if err := validate(ap, v[k], path+"."+k); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func asList(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
