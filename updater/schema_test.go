package updater

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinroot/twinroot/internal/jsonschema"
)

// TestSchemaUpToDate: docs/updatectl.schema.json is what the types in
// spec.go generate. UPDATE_GOLDEN=1 rewrites it.
func TestSchemaUpToDate(t *testing.T) {
	path := filepath.Join("..", "docs", "updatectl.schema.json")
	got := Schema()
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale: run UPDATE_GOLDEN=1 go test ./updater", path)
	}
}

func sampleHost() Host {
	created := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	three, zero := 3, 0
	e := func(id, ver string) *BootEntry {
		return &BootEntry{
			ID: id,
			Image: ImageStatus{
				Image:           ImageReference{Image: "docker://127.0.0.1:5000/os:latest"},
				ManifestDigest:  "sha256:" + string(bytes.Repeat([]byte("1"), 64)),
				ComposefsDigest: string(bytes.Repeat([]byte("a"), 64)),
				Version:         ver,
				Timestamp:       &created,
				OS:              "Debian GNU/Linux 13 (trixie)",
			},
			Boot:     &BootStatus{Entry: "twinroot-1-" + id + "+3.conf", TriesLeft: &three, TriesDone: &zero, Linux: "/twinroot/vmlinuz-" + string(bytes.Repeat([]byte("e"), 64))},
			Deployed: created.Add(time.Hour),
		}
	}
	booted := e("aaaaaaaaaaaa.0", "1")
	booted.Boot = &BootStatus{Entry: "twinroot-0-aaaaaaaaaaaa.0.conf", Blessed: true, Linux: "/twinroot/vmlinuz-" + string(bytes.Repeat([]byte("f"), 64))}
	booted.Image.MinVersion = "1"
	booted.Image.Signature = &SignatureStatus{Verified: true, PolicyEntry: `transports.docker."127.0.0.1:5000/os"`, Requirements: []string{"sigstoreSigned"},
		Policy: "/etc/containers/policy.json", ManifestDigest: "sha256:" + string(bytes.Repeat([]byte("1"), 64))}
	staged := e("bbbbbbbbbbbb.0", "2")
	staged.Conflicts = []EtcConflict{{Path: "/etc/motd", Reason: "changed locally and in the image"}}
	return Host{
		APIVersion: APIVersion, Kind: KindHost,
		Spec: HostSpec{Image: &ImageReference{Image: "docker://127.0.0.1:5000/os:latest"}},
		Status: HostStatus{
			Booted: booted, Staged: staged, Default: booted,
			Other: []BootEntry{},
			Store: StoreStatus{Path: "/sysroot/twinroot", Objects: 10, Bytes: 1 << 20, Images: 2},
		},
	}
}

// TestHostGolden pins the JSON names: a change here is an API change.
func TestHostGolden(t *testing.T) {
	got, err := json.MarshalIndent(sampleHost(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	path := filepath.Join("testdata", "host.golden.json")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(path, got, 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Host JSON changed:\n%s\nwant:\n%s", got, want)
	}
	if err := ValidateDocument(got); err != nil {
		t.Errorf("golden Host does not match the schema: %v", err)
	}
}

// TestValidateDocument: the schema check catches what a consumer would
// trip over.
func TestValidateDocument(t *testing.T) {
	good, _ := json.Marshal(sampleHost())
	if err := ValidateDocument(good); err != nil {
		t.Fatalf("sample: %v", err)
	}
	mutate := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	st := func(m map[string]any) map[string]any { return m["status"].(map[string]any) }
	bad := map[string][]byte{
		"unknown kind":      mutate(func(m map[string]any) { m["kind"] = "Hots" }),
		"other apiVersion":  mutate(func(m map[string]any) { m["apiVersion"] = "org.twinroot/v0" }),
		"missing required":  mutate(func(m map[string]any) { delete(st(m), "rollback") }),
		"unknown property":  mutate(func(m map[string]any) { st(m)["next"] = nil }),
		"wrong type":        mutate(func(m map[string]any) { st(m)["store"].(map[string]any)["bytes"] = "1" }),
		"bad timestamp":     mutate(func(m map[string]any) { st(m)["booted"].(map[string]any)["deployed"] = "yesterday" }),
		"non-integer count": mutate(func(m map[string]any) { st(m)["store"].(map[string]any)["objects"] = 1.5 }),
		"not json":          []byte("{"),
	}
	for name, doc := range bad {
		if err := ValidateDocument(doc); !errors.Is(err, jsonschema.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	for _, v := range []any{
		CheckResult{APIVersion: APIVersion, Kind: "CheckResult"},
		Result{APIVersion: APIVersion, Kind: "Result", Verb: "gc"},
		Event{Kind: "Event", Phase: "pull"},
	} {
		b, _ := json.Marshal(v)
		if err := ValidateDocument(b); err != nil {
			t.Errorf("%T: %v", v, err)
		}
	}
}
