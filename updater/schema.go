package updater

import (
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/twinroot/twinroot/internal/jsonschema"
)

// SchemaID is the $id of docs/updatectl.schema.json.
const SchemaID = "https://twinroot.org/schema/updatectl/v1.json"

// Schema returns the JSON Schema of every --json document: its $defs are
// keyed by the documents' kind (Host, CheckResult, Result, Event).
// docs/updatectl.schema.json is this, indented.
func Schema() []byte {
	s := jsonschema.Schema{
		"$schema":     "https://json-schema.org/draft/2020-12/schema",
		"$id":         SchemaID,
		"title":       "updatectl --json documents, " + APIVersion + " (generated from updater/spec.go)",
		"description": "Each document's kind names its definition under $defs. Within one apiVersion fields are only added; consumers ignore unknown fields.",
		"$defs": jsonschema.Schema{
			KindHost:      jsonschema.Generate(reflect.TypeFor[Host](), SchemaID+"#Host", "Host"),
			"CheckResult": jsonschema.Generate(reflect.TypeFor[CheckResult](), SchemaID+"#CheckResult", "CheckResult"),
			"Result":      jsonschema.Generate(reflect.TypeFor[Result](), SchemaID+"#Result", "Result"),
			"Event":       jsonschema.Generate(reflect.TypeFor[Event](), SchemaID+"#Event", "Event"),
		},
	}
	for _, d := range s["$defs"].(jsonschema.Schema) {
		delete(d.(jsonschema.Schema), "$schema")
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		panic(err) // only maps, strings and slices
	}
	return append(b, '\n')
}

// ValidateDocument checks one --json document (a JSON object with a kind)
// against Schema(): the kind picks the definition.
func ValidateDocument(doc []byte) error {
	var s jsonschema.Schema
	if err := json.Unmarshal(Schema(), &s); err != nil {
		return err
	}
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		return fmt.Errorf("%w: %w", jsonschema.ErrInvalid, err)
	}
	m, _ := v.(map[string]any)
	kind, _ := m["kind"].(string)
	def, ok := s["$defs"].(map[string]any)[kind].(map[string]any)
	if !ok {
		return fmt.Errorf("%w: unknown kind %q", jsonschema.ErrInvalid, kind)
	}
	if av, ok := m["apiVersion"]; ok && av != APIVersion {
		return fmt.Errorf("%w: apiVersion %v, want %s", jsonschema.ErrInvalid, av, APIVersion)
	}
	return jsonschema.Validate(def, v)
}
