package erofs

import (
	"bytes"
	"errors"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"
)

// fsTestImage writes the image of a dumpfile and opens it.
func fsTestImage(t *testing.T, dump string) *Image {
	t.Helper()
	root, err := ParseDump(strings.NewReader(dump), ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

const fsTestDump = `/ 0 40755 2 0 0 0 0.0 - - -
/a 0 40755 2 0 0 0 0.0 - - -
/a/hello 5 100644 1 0 0 0 1.5 - hello -
/a/empty 0 100600 1 0 0 0 0.0 - - -
/a/b 0 40700 2 0 0 0 0.0 - - -
/a/b/deep 3 100644 1 0 0 0 0.0 - abc -
/a/link-to-hello 5 120777 1 0 0 0 0.0 hello - -
/abs 8 120777 1 0 0 0 0.0 /a/hello - -
/big 100000 100644 1 0 0 0 0.0 ab/cdef - abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789
/dev 0 40755 2 0 0 0 0.0 - - -
/dev/wh 0 20000 1 0 0 0 0.0 - - -
/loop1 6 120777 1 0 0 0 0.0 /loop2 - -
/loop2 6 120777 1 0 0 0 0.0 /loop1 - -
/hl 0 @100644 0 0 0 0 0.0 /a/hello - -
`

// TestImageFS runs testing/fstest over an image without external files,
// then checks what is special to images.
func TestImageFS(t *testing.T) {
	img := fsTestImage(t, strings.ReplaceAll(strings.ReplaceAll(fsTestDump,
		"/big 100000 100644 1 0 0 0 0.0 ab/cdef - abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\n", ""),
		"/loop1 6 120777 1 0 0 0 0.0 /loop2 - -\n/loop2 6 120777 1 0 0 0 0.0 /loop1 - -\n", ""))
	if err := fstest.TestFS(img, "a/hello", "a/empty", "a/b/deep", "a/link-to-hello", "abs", "hl", "dev"); err != nil {
		t.Fatal(err)
	}
	b, err := fs.ReadFile(img, "abs")
	if err != nil || string(b) != "hello" {
		t.Errorf("abs: %q %v", b, err)
	}
	// A whiteout of the source tree is a character device 0/0 again; the
	// image's own whiteout stubs ("00".."ff" at the root) are hidden.
	ents, err := fs.ReadDir(img, "dev")
	if err != nil || len(ents) != 1 || ents[0].Type() != fs.ModeDevice|fs.ModeCharDevice {
		t.Errorf("dev: %v %v", ents, err)
	}
	if _, err := fs.Stat(img, "00"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("whiteout stub 00: %v", err)
	}
}

func TestImageFSSpecial(t *testing.T) {
	img := fsTestImage(t, fsTestDump)
	_, err := fs.ReadFile(img, "big")
	if !errors.Is(err, ErrExternalContent) {
		t.Errorf("external file: %v", err)
	}
	fi, err := fs.Stat(img, "big")
	if err != nil {
		t.Fatal(err)
	}
	if in := fi.Sys().(*Inode); in.Payload != "ab/cdef" || in.Digest.Hex()[:6] != "abcdef" || fi.Size() != 100000 {
		t.Errorf("big: %+v", in)
	}
	if _, err := fs.Stat(img, "loop1"); err == nil {
		t.Error("symlink loop resolved")
	}
	if target, err := fs.ReadLink(img, "a/link-to-hello"); err != nil || target != "hello" {
		t.Errorf("readlink: %q %v", target, err)
	}
	fi, err = fs.Lstat(img, "abs")
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("lstat abs: %v %v", fi, err)
	}
	if fi, err := fs.Stat(img, "a/hello"); err != nil || fi.ModTime().UnixNano() != 1_000_000_005 {
		t.Errorf("mtime: %v %v", fi, err)
	}
	for _, bad := range []string{"/a", "a/../a", "nope", "a/hello/x", "ff"} {
		if _, err := img.Open(bad); err == nil {
			t.Errorf("%q opened", bad)
		}
	}
}
