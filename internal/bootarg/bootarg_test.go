package bootarg

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/verity"
)

func TestRoundTrip(t *testing.T) {
	d, err := verity.NewDigest(verity.SHA256, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Format("0a1b2c3d4e5f.0", d)
	if err != nil {
		t.Fatal(err)
	}
	if want := "twinroot=0a1b2c3d4e5f.0:" + strings.Repeat("0", 64); s != want {
		t.Fatalf("Format = %q, want %q", s, want)
	}
	a, err := Parse("root=UUID=x rw " + s + " quiet")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != "0a1b2c3d4e5f.0" || a.Image != d {
		t.Fatalf("Parse = %+v", a)
	}
}

func TestParseErrors(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		cmdline string
		want    error
	}{
		{"root=/dev/vda2 rw", ErrMissing},
		{"twinroot=", ErrMalformed},
		{"twinroot=abc", ErrMalformed},
		{"twinroot=:" + hex, ErrMalformed},
		{"twinroot=Abc:" + hex, ErrMalformed},
		{"twinroot=-abc:" + hex, ErrMalformed},
		{"twinroot=abc:sha256:" + hex, ErrMalformed},
		{"twinroot=abc:" + hex[:62], ErrMalformed},
		{"twinroot=abc:" + strings.ToUpper(hex), ErrMalformed},
		{"twinroot=" + strings.Repeat("a", 41) + ":" + hex, ErrMalformed},
	} {
		if _, err := Parse(tc.cmdline); !errors.Is(err, tc.want) {
			t.Errorf("Parse(%q) = %v, want %v", tc.cmdline, err, tc.want)
		}
	}
}

func TestFields(t *testing.T) {
	got := Fields(" a  b=\"c d\"\te\n")
	want := []string{"a", "b=c d", "e"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Fields = %q, want %q", got, want)
	}
	// After a bare "--" the arguments are init's, not the kernel's.
	if got := Fields(`a -- twinroot=x b`); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("Fields after -- = %q", got)
	}
	if got := Fields(`a "--" b --`); !reflect.DeepEqual(got, []string{"a", "--", "b"}) {
		t.Fatalf("Fields with quoted -- = %q", got)
	}
	if _, err := Parse("root=/dev/vda -- twinroot=a.0:" + strings.Repeat("0", 64)); !errors.Is(err, ErrMissing) {
		t.Fatalf("twinroot= after -- was honoured: %v", err)
	}
	if v, ok := Value("x=1 twinroot.verity=require x=2", "x"); !ok || v != "2" {
		t.Fatalf("Value = %q %v", v, ok)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("twinroot=a.0:" + strings.Repeat("0", 64))
	f.Add("\"twinroot=a b\" x")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		b, err := Parse(a.String())
		if err != nil || b != a {
			t.Fatalf("round trip of %q: %v %+v", a.String(), err, b)
		}
	})
}
