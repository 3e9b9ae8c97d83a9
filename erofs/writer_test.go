package erofs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/verity"
)

func mustParse(t *testing.T, s string) *Node {
	t.Helper()
	root, err := ParseDump(strings.NewReader(s), ParseOptions{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func dumpString(t *testing.T, root *Node) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteDump(&b, root); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

const whiteoutTree = "/ 4096 40755 2 0 0 0 5.0 - - - security.selinux=lbl trusted.overlay.opaque=z\n" +
	"/d 4096 40755 2 0 0 0 5.0 - - -\n" +
	"/d/wh 0 20644 1 0 0 0 5.0 - - -\n" +
	"/f 5000 100644 1 0 0 0 5.0 ab/cd - " + "abababababababababababababababababababababababababababababababab" + "\n" +
	"/h 0 @100644 1 0 0 0 0.0 /f - -\n"

// TestWriteDoesNotMutate checks that Write leaves the tree as it was (the
// overlay xattrs, "." and "..", and the stubs live in the writer only).
func TestWriteDoesNotMutate(t *testing.T) {
	root := mustParse(t, whiteoutTree)
	before := dumpString(t, root)
	var img bytes.Buffer
	if err := Write(&img, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if after := dumpString(t, root); after != before {
		t.Errorf("tree changed:\n%s\nwas\n%s", after, before)
	}
	var img2 bytes.Buffer
	if err := Write(&img2, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img.Bytes(), img2.Bytes()) {
		t.Errorf("second write differs")
	}
	if err := Validate(root); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func headerVersion(t *testing.T, img []byte) uint32 {
	t.Helper()
	if len(img) < 4096 || binary.LittleEndian.Uint32(img) != 0xd078629a {
		t.Fatalf("no composefs header")
	}
	return binary.LittleEndian.Uint32(img[12:])
}

func TestWriteVersions(t *testing.T) {
	plain := mustParse(t, dumpRoot+"/a 0 100644 1 0 0 0 0.0 - - -\n")
	wh := mustParse(t, whiteoutTree)
	tests := []struct {
		name string
		root *Node
		opts WriteOptions
		want uint32
		err  bool
	}{
		{"default plain", plain, WriteOptions{}, 0, false},
		{"default whiteout bumps", wh, WriteOptions{}, 1, false},
		{"exact 0", wh, ExactVersion(0), 0, false},
		{"exact 1", plain, ExactVersion(1), 1, false},
		{"min 1", plain, WriteOptions{MinVersion: 1}, 1, false},
		{"max below min", plain, WriteOptions{MinVersion: 1, MaxVersion: -1}, 1, false},
		{"too new", plain, WriteOptions{MaxVersion: 2}, 0, true},
		{"too new min", plain, WriteOptions{MinVersion: 2}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var img bytes.Buffer
			err := Write(&img, tt.root, tt.opts)
			if tt.err {
				if !errors.Is(err, ErrBadTree) {
					t.Fatalf("error %v, want ErrBadTree", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := headerVersion(t, img.Bytes()); got != tt.want {
				t.Errorf("version %d, want %d", got, tt.want)
			}
		})
	}
}

// TestWriteSHA512 checks the metacopy xattr of a SHA-512 digest (alg 2,
// 64 bytes) and that fsck.erofs accepts the image.
func TestWriteSHA512(t *testing.T) {
	raw := bytes.Repeat([]byte{0xa5}, 64)
	d, err := verity.NewDigest(verity.SHA512, raw)
	if err != nil {
		t.Fatal(err)
	}
	root := NewRoot(0o755)
	f := &Node{Name: "f", Inode: Inode{Mode: ModeReg | 0o644, Nlink: 1, Size: 123456, Digest: d, Payload: d.ObjectPath()}}
	if err := root.AddChild(f); err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	if err := Write(&img, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0, 68, 0, 2}, raw...)
	if !bytes.Contains(img.Bytes(), want) {
		t.Errorf("no SHA-512 metacopy value in the image")
	}
	if !bytes.Contains(img.Bytes(), []byte("/"+d.ObjectPath())) {
		t.Errorf("no redirect in the image")
	}
	fsckImage(t, img.Bytes())
}

func fsckImage(t *testing.T, img []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.cfs")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fsck.erofs", p).CombinedOutput(); err != nil {
		t.Errorf("fsck.erofs: %v\n%s", err, out)
	}
}

func TestWriteRejects(t *testing.T) {
	mk := func(mod func(root *Node)) *Node {
		root := mustParse(t, dumpRoot+"/a 0 100644 1 0 0 0 0.0 - - -\n/d 4096 40755 2 0 0 0 0.0 - - -\n")
		mod(root)
		return root
	}
	tests := []struct {
		name string
		root *Node
		want string
	}{
		{"not a dir root", &Node{Inode: Inode{Mode: ModeReg}}, "root is not a directory"},
		{"bad type", mk(func(r *Node) { r.Child("a").Mode = 0o644 }), "invalid file type"},
		{"file with children", mk(func(r *Node) { r.Child("a").Children = []*Node{{Name: "x", Inode: Inode{Mode: ModeReg}}} }), "non-directory has children"},
		{"unsorted", mk(func(r *Node) { r.Children[0], r.Children[1] = r.Children[1], r.Children[0] }), "not sorted"},
		{"bad name", mk(func(r *Node) { r.Child("a").Name = "x/y" }), "invalid name"},
		{"content size", mk(func(r *Node) { a := r.Child("a"); a.Content = []byte("abc"); a.Size = 2 }), "inline content"},
		{"content too big", mk(func(r *Node) { a := r.Child("a"); a.Content = make([]byte, 6000); a.Size = 6000 }), "max 5000"},
		{"too large", mk(func(r *Node) { r.Child("a").Size = 1 << 60 }), "file too large"},
		{"empty symlink", mk(func(r *Node) { r.Child("a").Mode = ModeLink | 0o777 }), "invalid symlink"},
		{"dup xattr", mk(func(r *Node) {
			r.Child("a").Xattrs = []Xattr{{Name: "user.a"}, {Name: "user.a"}}
		}), "duplicate xattr"},
		{"xattr budget", mk(func(r *Node) {
			r.Child("a").Xattrs = []Xattr{{Name: "user.a", Value: make([]byte, 30000)}, {Name: "user.b", Value: make([]byte, 3000)}}
		}), "exceed"},
		{"link outside tree", mk(func(r *Node) {
			r.AddChild(&Node{Name: "h", Link: &Node{Name: "x", Inode: Inode{Mode: ModeReg}}})
		}), "not in the tree"},
		{"link to dir", mk(func(r *Node) { r.AddChild(&Node{Name: "h", Link: r.Child("d")}) }), "hardlink to directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.root)
			if !errors.Is(err, ErrBadTree) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate error %v, want ErrBadTree with %q", err, tt.want)
			}
			if err := Write(&bytes.Buffer{}, tt.root, WriteOptions{}); err == nil {
				t.Fatal("Write accepted")
			}
		})
	}
}

// failWriter fails after n bytes.
type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return w.n, errors.New("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

func TestWriteError(t *testing.T) {
	root := mustParse(t, whiteoutTree)
	err := Write(&failWriter{n: 5000}, root, WriteOptions{})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("error %v, want the writer's error", err)
	}
}
