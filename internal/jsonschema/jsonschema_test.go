package jsonschema

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

type inner struct {
	N int `json:"n"`
}

type doc struct {
	Name  string            `json:"name"`
	Count int               `json:"count"`
	Ratio float64           `json:"ratio"`
	OK    bool              `json:"ok"`
	When  time.Time         `json:"when"`
	Maybe *inner            `json:"maybe"`
	List  []inner           `json:"list"`
	Tags  map[string]string `json:"tags"`
	Opt   string            `json:"opt,omitempty"`
	Skip  string            `json:"-"`
}

func TestValidate(t *testing.T) {
	s := Generate(reflect.TypeFor[doc](), "x", "doc")
	b, _ := json.Marshal(s)
	var schema Schema
	json.Unmarshal(b, &schema) // as a consumer reads it: through JSON
	good := `{"name":"a","count":1,"ratio":0.5,"ok":true,"when":"2026-12-01T08:00:00Z","maybe":null,"list":[{"n":2}],"tags":{"k":"v"}}`
	tests := []struct {
		name, doc string
		ok        bool
	}{
		{"good", good, true},
		{"optional present", `{"name":"a","count":1,"ratio":1,"ok":false,"when":"2026-12-01T08:00:00.5Z","maybe":{"n":1},"list":null,"tags":{},"opt":"x"}`, true},
		{"missing required", `{"count":1,"ratio":1,"ok":true,"when":"2026-12-01T08:00:00Z","maybe":null,"list":[],"tags":{}}`, false},
		{"unknown property", `{"name":"a","count":1,"ratio":1,"ok":true,"when":"2026-12-01T08:00:00Z","maybe":null,"list":[],"tags":{},"Skip":"x"}`, false},
		{"integer as float", `{"name":"a","count":1.5,"ratio":1,"ok":true,"when":"2026-12-01T08:00:00Z","maybe":null,"list":[],"tags":{}}`, false},
		{"bad date", `{"name":"a","count":1,"ratio":1,"ok":true,"when":"yesterday","maybe":null,"list":[],"tags":{}}`, false},
		{"bad item", `{"name":"a","count":1,"ratio":1,"ok":true,"when":"2026-12-01T08:00:00Z","maybe":null,"list":[{"n":"2"}],"tags":{}}`, false},
		{"bad map value", `{"name":"a","count":1,"ratio":1,"ok":true,"when":"2026-12-01T08:00:00Z","maybe":null,"list":[],"tags":{"k":1}}`, false},
		{"null where not nullable", `{"name":null,"count":1,"ratio":1,"ok":true,"when":"2026-12-01T08:00:00Z","maybe":null,"list":[],"tags":{}}`, false},
		{"not an object", `[]`, false},
	}
	for _, tc := range tests {
		var v any
		if err := json.Unmarshal([]byte(tc.doc), &v); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err := Validate(schema, v)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", tc.name, err)
		}
	}
}
