package verity

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseDigest(t *testing.T) {
	h256 := strings.Repeat("ab", 32)
	h512 := strings.Repeat("cd", 64)
	tests := []struct {
		in      string
		alg     Algorithm
		wantErr error
	}{
		{"sha256:" + h256, SHA256, nil},
		{"sha512:" + h512, SHA512, nil},
		{h256, SHA256, nil},
		{h512, SHA512, nil},
		{"sha256:" + h512, 0, ErrBadDigest},
		{"sha512:" + h256, 0, ErrBadDigest},
		{"md5:" + h256, 0, ErrBadDigest},
		{"sha256:" + strings.ToUpper(h256), 0, ErrBadDigest},
		{"sha256:" + h256[:63] + "g", 0, ErrBadDigest},
		{"", 0, ErrBadDigest},
		{"sha256:", 0, ErrBadDigest},
	}
	for _, tt := range tests {
		d, err := ParseDigest(tt.in)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("ParseDigest(%q) error %v, want %v", tt.in, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if d.Algorithm() != tt.alg {
			t.Errorf("ParseDigest(%q) algorithm %v, want %v", tt.in, d.Algorithm(), tt.alg)
		}
		if got := d.String(); got != tt.alg.String()+":"+strings.TrimPrefix(strings.TrimPrefix(tt.in, "sha256:"), "sha512:") {
			t.Errorf("ParseDigest(%q).String() = %q", tt.in, got)
		}
		if got := d.ObjectPath(); got != d.Hex()[:2]+"/"+d.Hex()[2:] {
			t.Errorf("ObjectPath = %q", got)
		}
		if len(d.Bytes()) != tt.alg.Size() {
			t.Errorf("Bytes length %d", len(d.Bytes()))
		}
	}
}

func TestDigestJSON(t *testing.T) {
	d := DigestBytes([]byte("x"), SHA512)
	b, err := json.Marshal(map[string]Digest{"d": d})
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]Digest
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back["d"] != d {
		t.Errorf("JSON round trip: %v, want %v", back["d"], d)
	}
	if _, err := json.Marshal(Digest{}); !errors.Is(err, ErrBadDigest) {
		t.Errorf("marshal zero digest: %v, want ErrBadDigest", err)
	}
	if (Digest{}).String() != "<no digest>" || !(Digest{}).IsZero() {
		t.Errorf("zero digest: %q", Digest{}.String())
	}
}
