package erofs

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseDump checks that the dumpfile parser never panics, and that for
// an accepted input the writer does not panic, the printed dump parses back
// strictly to a tree that prints the same, and both trees give the same
// image. Seeds: testdata/fuzz/FuzzParseDump.
func FuzzParseDump(f *testing.F) {
	f.Add([]byte(dumpRoot+"/a 0 100644 1 0 0 0 0.0 - - - user.x=1\n"), true)
	f.Fuzz(func(t *testing.T, input []byte, strict bool) {
		root, err := ParseDump(bytes.NewReader(input), ParseOptions{Strict: strict})
		if err != nil {
			if !errors.Is(err, ErrBadDump) {
				t.Fatalf("error does not wrap ErrBadDump: %v", err)
			}
			return
		}
		var img1 bytes.Buffer
		werr := Write(&img1, root, WriteOptions{})
		if werr != nil && !errors.Is(werr, ErrBadTree) {
			t.Fatalf("write error does not wrap ErrBadTree: %v", werr)
		}
		var p1 bytes.Buffer
		if err := WriteDump(&p1, root); err != nil {
			t.Fatal(err)
		}
		root2, err := ParseDump(bytes.NewReader(p1.Bytes()), ParseOptions{Strict: true})
		if err != nil {
			t.Fatalf("printed dump does not parse: %v\n%q", err, p1.Bytes())
		}
		var p2 bytes.Buffer
		if err := WriteDump(&p2, root2); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p1.Bytes(), p2.Bytes()) {
			t.Fatalf("print∘parse not stable:\n%q\n%q", p1.Bytes(), p2.Bytes())
		}
		var img2 bytes.Buffer
		werr2 := Write(&img2, root2, WriteOptions{})
		if (werr == nil) != (werr2 == nil) {
			t.Fatalf("write results differ: %v / %v", werr, werr2)
		}
		if werr == nil && !bytes.Equal(img1.Bytes(), img2.Bytes()) {
			t.Fatalf("images differ after print∘parse")
		}
	})
}
