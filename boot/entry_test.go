package boot

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseEntry(t *testing.T) {
	in := "# a comment\n" +
		"title  Debian GNU/Linux 13   \n" +
		"\n" +
		"version\t13.1\n" +
		"linux /twinroot/vmlinuz-00\n" +
		"initrd /a\n" +
		"initrd /b\n" +
		"options root=/dev/vda2 rw\n" +
		"options quiet\n" +
		"x-unknown-key some value\n" +
		"architecture\n" +
		"  indented key\r\n"
	e, err := ParseEntry([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Field{
		{"title", "Debian GNU/Linux 13"},
		{"version", "13.1"},
		{"linux", "/twinroot/vmlinuz-00"},
		{"initrd", "/a"},
		{"initrd", "/b"},
		{"options", "root=/dev/vda2 rw"},
		{"options", "quiet"},
		{"x-unknown-key", "some value"},
		{"architecture", ""},
		{"indented", "key"},
	}
	if !reflect.DeepEqual(e.Fields, want) {
		t.Fatalf("fields\n%q\nwant\n%q", e.Fields, want)
	}
	if got := e.Options(); got != "root=/dev/vda2 rw quiet" {
		t.Errorf("Options() = %q", got)
	}
	if got := e.All("initrd"); !reflect.DeepEqual(got, []string{"/a", "/b"}) {
		t.Errorf("All(initrd) = %q", got)
	}
	if v, ok := e.Get("x-unknown-key"); !ok || v != "some value" {
		t.Errorf("Get = %q, %v", v, ok)
	}
	again, err := ParseEntry(e.Marshal())
	if err != nil || !reflect.DeepEqual(again, e) {
		t.Fatalf("round trip: %v\n%q", err, again.Fields)
	}
}

func TestParseEntryErrors(t *testing.T) {
	for name, in := range map[string][]byte{
		"nul":      []byte("title a\x00b\n"),
		"not utf8": []byte("title \xff\n"),
		"huge":     make([]byte, MaxEntrySize+1),
	} {
		if _, err := ParseEntry(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("%s: err = %v, want ErrSyntax", name, err)
		}
	}
}

func TestParseEntryName(t *testing.T) {
	for _, c := range []struct {
		in   string
		want EntryName
		str  string
	}{
		{"twinroot1_abc.0.conf", EntryName{Base: "twinroot1_abc.0"}, ""},
		{"twinroot1_abc.0+3.conf", EntryName{Base: "twinroot1_abc.0", Counted: true, Left: 3}, ""},
		{"a+2-1.conf", EntryName{Base: "a", Counted: true, Left: 2, Done: 1}, ""},
		{"a+0-3.conf", EntryName{Base: "a", Counted: true, Left: 0, Done: 3}, ""},
		{"a+3-0.conf", EntryName{Base: "a", Counted: true, Left: 3}, "a+3.conf"},
		{"a+x.conf", EntryName{Base: "a+x"}, ""},
		{"a+1-.conf", EntryName{Base: "a+1-"}, ""},
		{"a+-1.conf", EntryName{Base: "a+-1"}, ""},
		{"+3.conf", EntryName{Base: "+3"}, ""},
		{"a+b+1.conf", EntryName{Base: "a+b", Counted: true, Left: 1}, ""},
		{"a+99999999.conf", EntryName{Base: "a+99999999"}, ""},
	} {
		got, err := ParseEntryName(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseEntryName(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		str := c.str
		if str == "" {
			str = c.in
		}
		if got.String() != str {
			t.Errorf("String() = %q, want %q", got.String(), str)
		}
	}
	for _, bad := range []string{"", ".conf", "a.txt", "a/b.conf", "a\\b.conf", "a.conf.tmp"} {
		if _, err := ParseEntryName(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseEntryName(%q): err = %v, want ErrSyntax", bad, err)
		}
	}
}
