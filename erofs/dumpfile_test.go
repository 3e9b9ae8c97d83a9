package erofs

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/verity"
)

const dumpRoot = "/ 4096 40755 2 0 0 0 0.0 - - -\n"

func TestParseDumpErrors(t *testing.T) {
	digest := strings.Repeat("ab", 32)
	tests := []struct {
		name   string
		input  string
		strict bool
		want   string // substring of the error
		line   string // "line N" expected in the error
	}{
		{"empty input", "", false, "no root", ""},
		{"root not first", "/a 0 100644 1 0 0 0 0.0 - - -\n", false, "root node not present", "line 1"},
		{"root not dir", "/ 0 100644 1 0 0 0 0.0 - - -\n", false, "root must be a directory", "line 1"},
		{"two roots", dumpRoot + dumpRoot, false, "multiple roots", "line 2"},
		{"missing parent", dumpRoot + "/a/b 0 100644 1 0 0 0 0.0 - - -\n", false, "parent directory missing", "line 2"},
		{"parent not dir", dumpRoot + "/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 100644 1 0 0 0 0.0 - - -\n", false, "parent must be a directory", "line 3"},
		{"duplicate", dumpRoot + "/a 0 100644 1 0 0 0 0.0 - - -\n/b 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n", false, "already exists", "line 4"},
		{"trailing slash", dumpRoot + "/a/ 0 100644 1 0 0 0 0.0 - - -\n", false, "", "line 2"},
		{"long name", dumpRoot + "/" + strings.Repeat("n", 256) + " 0 100644 1 0 0 0 0.0 - - -\n", false, "name is 256 bytes", "line 2"},
		{"bad escape", dumpRoot + "/a\\q 0 100644 1 0 0 0 0.0 - - -\n", false, "unsupported escape", "line 2"},
		{"dangling escape", dumpRoot + "/a\\ 0 100644 1 0 0 0 0.0 - - -\n", false, "no character after escape", "line 2"},
		{"short hex escape", dumpRoot + "/a\\x4 0 100644 1 0 0 0 0.0 - - -\n", false, "hex escape", "line 2"},
		{"bad hex escape", dumpRoot + "/a\\xzz 0 100644 1 0 0 0 0.0 - - -\n", false, "invalid hex", "line 2"},
		{"embedded nul", dumpRoot + "/a\x00 0 100644 1 0 0 0 0.0 - - -\n", false, "embedded NUL", "line 2"},
		{"empty path", dumpRoot + "\\x00 0 100644 1 0 0 0 0.0 - - -\n", false, "empty path", "line 2"},
		{"bad size", dumpRoot + "/a x 100644 1 0 0 0 0.0 - - -\n", false, "invalid size", "line 2"},
		{"bad mode", dumpRoot + "/a 0 100694 1 0 0 0 0.0 - - -\n", false, "invalid mode", "line 2"},
		{"no type", dumpRoot + "/a 0 644 1 0 0 0 0.0 - - -\n", false, "invalid mode 644", "line 2"},
		{"bad gid", dumpRoot + "/a 0 100644 1 5 x 0 0.0 - - -\n", false, "invalid gid", "line 2"},
		{"mtime without dot", dumpRoot + "/a 0 100644 1 0 0 0 12 - - -\n", false, "invalid mtime", "line 2"},
		{"mtime bad nsec", dumpRoot + "/a 0 100644 1 0 0 0 1.x - - -\n", false, "invalid mtime", "line 2"},
		{"short line", dumpRoot + "/a 0 100644\n", false, "invalid nlink", "line 2"},
		{"content size", dumpRoot + "/a 3 100644 1 0 0 0 0.0 - ab -\n", false, "content size", "line 2"},
		{"content too big", dumpRoot + "/a 5001 100644 1 0 0 0 0.0 - " + strings.Repeat("x", 5001) + " -\n", false, "exceeds maximum", "line 2"},
		{"bad digest", dumpRoot + "/a 5000 100644 1 0 0 0 0.0 - - abc\n", false, "invalid digest", "line 2"},
		{"long payload", dumpRoot + "/a 5 100644 1 0 0 0 0.0 " + strings.Repeat("p", 4096) + " - -\n", false, "payload is 4096", "line 2"},
		{"empty symlink", dumpRoot + "/l 0 120777 1 0 0 0 0.0 - - -\n", false, "invalid symlink", "line 2"},
		{"strict symlink size", dumpRoot + "/l 3 120777 1 0 0 0 0.0 ab - -\n", true, "symlink size", "line 2"},
		{"strict symlink content", dumpRoot + "/l 2 120777 1 0 0 0 0.0 ab ab -\n", true, "cannot have content", "line 2"},
		{"strict rdev", dumpRoot + "/a 0 100644 1 0 0 7 0.0 - - -\n", true, "devnum", "line 2"},
		{"strict no newline", strings.TrimSuffix(dumpRoot, "\n"), true, "missing final newline", "line 1"},
		{"xattr without =", dumpRoot + "/a 0 100644 1 0 0 0 0.0 - - - user.a\n", false, "missing =", "line 2"},
		{"trailing double space", dumpRoot + "/a 0 100644 1 0 0 0 0.0 - - -  \n", false, "missing =", "line 2"},
		{"xattr empty name", dumpRoot + "/a 0 100644 1 0 0 0 0.0 - - - =v\n", false, "xattr name", "line 2"},
		{"xattr long name", dumpRoot + "/a 0 100644 1 0 0 0 0.0 - - - user." + strings.Repeat("k", 251) + "=v\n", false, "xattr name", "line 2"},
		{"xattr budget", dumpRoot + "/a 0 100644 1 0 0 0 0.0 - - - user.a=" + strings.Repeat("v", 20000) + " user.b=" + strings.Repeat("v", 20000) + "\n", false, "exceed 32767", "line 2"},
		{"hardlink dir mode", dumpRoot + "/d 0 @40755 1 0 0 0 0.0 / - -\n", false, "can't be hardlinked", "line 2"},
		{"hardlink no target", dumpRoot + "/h 0 @100644 1 0 0 0 0.0 - - -\n", false, "no target path", "line 2"},
		{"hardlink missing target", dumpRoot + "/h 0 @100644 1 0 0 0 0.0 /nope - -\n", false, "no target", "line 2"},
		{"hardlink self", dumpRoot + "/h 0 @100644 1 0 0 0 0.0 /h - -\n", false, "self-referential", "line 2"},
		{"hardlink to dir", dumpRoot + "/d 4096 40755 2 0 0 0 0.0 - - -\n/h 0 @100644 1 0 0 0 0.0 /d - -\n", false, "hardlink to directory", "line 3"},
		{"hardlink cycle", dumpRoot + "/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n", false, "cycle", "line"},
		{"too big", dumpRoot + "/a 9500000000000000 100644 1 0 0 0 0.0 - - " + digest + "\n", false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, err := ParseDump(strings.NewReader(tt.input), ParseOptions{Strict: tt.strict})
			if err == nil {
				// Some inputs only fail when written, as with mkcomposefs.
				err = Write(&bytes.Buffer{}, root, WriteOptions{})
				if err == nil {
					t.Fatalf("accepted")
				}
				if !errors.Is(err, ErrBadTree) {
					t.Fatalf("error %v does not wrap ErrBadTree", err)
				}
				return
			}
			if !errors.Is(err, ErrBadDump) {
				t.Fatalf("error %v does not wrap ErrBadDump", err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.line) {
				t.Fatalf("error %q, want it to contain %q and %q", err, tt.want, tt.line)
			}
		})
	}
}

func TestParseDumpAccepts(t *testing.T) {
	digest := strings.Repeat("AB", 32)
	input := dumpRoot +
		"//a//b 4096 40755 2 0 0 0 0.0 - - -\n" + // repeated slashes; parent created below is missing...
		""
	if _, err := ParseDump(strings.NewReader(input), ParseOptions{}); err == nil {
		t.Fatal("missing parent accepted")
	}
	input = dumpRoot +
		"//a 4096 40755 2 0 0 0 0.0 - - -\n" +
		"/a//b 7 100644 1 +5 -1 0 -5.1 ob/ject - " + digest + "\n" +
		"/a/s 99 120777 1 0 0 0 0.0 x\\x00y - -\n" +
		"/a/t 0 100644 1 0 0 0 0.0 - - - user.k=1 user.k=22\n" +
		"/h 0 @100644 9 9 9 9 9.9 /a/b - -\n" +
		"/dev 0 20644 1 0 0 4294967297 0.0 - - -"
	root, err := ParseDump(strings.NewReader(input), ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := root.Lookup("/a/b")
	if err != nil {
		t.Fatal(err)
	}
	if b.UID != 5 || b.GID != 0xFFFFFFFF || b.Mtime.Sec != -5 || b.Mtime.Nsec != 1 || b.Payload != "ob/ject" {
		t.Errorf("b = %+v", b.Inode)
	}
	if b.Digest.Algorithm() != verity.SHA256 || b.Digest.Hex() != strings.ToLower(digest) {
		t.Errorf("digest %v", b.Digest)
	}
	s, _ := root.Lookup("/a/s")
	if s.Inode.Target != "x" || s.Size != 1 {
		t.Errorf("symlink truncated at NUL: target %q size %d", s.Inode.Target, s.Size)
	}
	tt, _ := root.Lookup("/a/t")
	if len(tt.Xattrs) != 1 || string(tt.Xattrs[0].Value) != "22" {
		t.Errorf("repeated xattr: %+v", tt.Xattrs)
	}
	h, _ := root.Lookup("/h")
	if h.Link != b || h.Primary() != b {
		t.Errorf("hardlink not resolved")
	}
	dev, _ := root.Lookup("/dev")
	if dev.Rdev != 1 {
		t.Errorf("rdev %d, want truncation to 1", dev.Rdev)
	}
}

func TestWriteDumpEscapes(t *testing.T) {
	root := NewRoot(0o755)
	f := &Node{Name: "sp ace\\=\t\n\x7f", Inode: Inode{Mode: ModeReg | 0o644, Nlink: 1, Size: 1, Content: []byte("-"),
		Xattrs: []Xattr{{Name: "user.a=b", Value: []byte("x=y \x00")}}}}
	dash := &Node{Name: "dash", Inode: Inode{Mode: ModeReg | 0o644, Nlink: 1, Size: 10, Payload: "-"}}
	l := &Node{Name: "l", Inode: Inode{Mode: ModeLink | 0o777, Nlink: 1, Size: 3, Target: "a b"}}
	for _, c := range []*Node{f, dash, l} {
		if err := root.AddChild(c); err != nil {
			t.Fatal(err)
		}
	}
	h := &Node{Name: "z", Link: dash}
	if err := root.AddChild(h); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := WriteDump(&b, root); err != nil {
		t.Fatal(err)
	}
	want := "/ 0 40755 2 0 0 0 0.0 - - -\n" +
		"/dash 10 100644 1 0 0 0 0.0 \\x2d - -\n" +
		"/l 3 120777 1 0 0 0 0.0 a\\x20b - -\n" +
		"/sp\\x20ace\\\\=\\t\\n\\x7f 1 100644 1 0 0 0 0.0 - \\x2d - user.a\\x3db=x\\x3dy\\x20\\x00\n" +
		"/z 10 @100644 1 0 0 0 0.0 /dash - -\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	back, err := ParseDump(bytes.NewReader(b.Bytes()), ParseOptions{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	var b2 bytes.Buffer
	if err := WriteDump(&b2, back); err != nil {
		t.Fatal(err)
	}
	if b2.String() != want {
		t.Errorf("round trip changed the dump:\n%s", b2.String())
	}
}

func TestXXH32(t *testing.T) {
	tests := []struct {
		in   string
		seed uint32
		want uint32
	}{
		{"", 0, 0x02CC5D05},
		{"a", 0, 0x550D7456},
		{"abc", 0, 0x32D153FF},
		{"Nobody inspects the spammish repetition", 0, 0xE2293B2F},
		{"", 1, 0x0B2CB792},
	}
	for _, tt := range tests {
		if got := xxh32(tt.in, tt.seed); got != tt.want {
			t.Errorf("xxh32(%q, %d) = %#x, want %#x", tt.in, tt.seed, got, tt.want)
		}
	}
}
