package boot

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func FuzzParseEntry(f *testing.F) {
	f.Add([]byte("title a\nversion 1\nlinux /k\ninitrd /i\noptions root=/dev/vda rw\n"))
	f.Add([]byte("# c\n\n\tkey\tvalue  \r\nk\n"))
	f.Add([]byte("sort-key twinroot-0\nx y z\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEntry(data)
		if err != nil {
			return
		}
		out := e.Marshal()
		e2, err := ParseEntry(out)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", out, err)
		}
		if !reflect.DeepEqual(e.Fields, e2.Fields) {
			t.Fatalf("round trip changed the fields:\n%q\n%q", e.Fields, e2.Fields)
		}
		if !bytes.Equal(out, e2.Marshal()) {
			t.Fatalf("print is not stable")
		}
	})
}

func FuzzParseEntryName(f *testing.F) {
	f.Add("twinroot1_abc.0+3.conf")
	f.Add("a+2-1.conf")
	f.Add("a+b.conf")
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseEntryName(s)
		if err != nil {
			return
		}
		n2, err := ParseEntryName(n.String())
		if err != nil || n2 != n {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, n, n.String(), n2, err)
		}
	})
}

func FuzzParseOSRelease(f *testing.F) {
	f.Add([]byte("NAME=\"Debian GNU/Linux\"\nVERSION='13'\nID=debian\n# c\nBAD LINE\nX=\"a\\\"b\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for k := range ParseOSRelease(data) {
			if k == "" || strings.ContainsAny(k, "= \t\n") {
				t.Fatalf("key %q", k)
			}
		}
	})
}

func FuzzParseEFIString(f *testing.F) {
	f.Add([]byte{7, 0, 0, 0, '\\', 0, 'a', 0, 0, 0})
	f.Add([]byte{7, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseEFIString(data)
		if err == nil && strings.ContainsRune(s, 0) {
			t.Fatalf("NUL in %q", s)
		}
	})
}

func FuzzParseKargs(f *testing.F) {
	f.Add([]byte("kargs = [\"a\", \"b=c\"]\nmatch-architectures = [\"x86_64\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		kargs, err := ParseKargs(data, "x86_64")
		if err != nil {
			return
		}
		for _, k := range kargs {
			if k == "" || strings.ContainsAny(k, "\n\x00") {
				t.Fatalf("argument %q", k)
			}
		}
	})
}
