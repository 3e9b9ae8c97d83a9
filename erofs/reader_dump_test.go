package erofs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReaderDumpRoundTrip reads each generated reference image (with the
// writer's hardlink primaries) and prints its tree as a dumpfile: the
// result must equal the dumpfile the image was made from, once both are
// put in canonical form by ParseDump and WriteDump, and writing the tree
// again must give back the image byte for byte.
func TestReaderDumpRoundTrip(t *testing.T) {
	for _, path := range genImages(t) {
		name := strings.TrimSuffix(filepath.Base(path), ".cfs.gz")
		t.Run(name, func(t *testing.T) {
			data := gunzipFile(t, path)
			img, err := Open(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			root, err := img.ReadTree(TreeOptions{WriterPrimaries: true})
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			normalizeDirs(root)
			if img.FormatVersion() >= 1 {
				dropWhiteoutDirOpaque(root)
			}
			if err := WriteDump(&got, root); err != nil {
				t.Fatal(err)
			}
			src, err := ParseDump(bytes.NewReader(gunzipFile(t, filepath.Join(vectorDir, name+".dump.gz"))), ParseOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			normalizeDirs(src)
			if img.FormatVersion() >= 1 {
				dropWhiteoutDirOpaque(src)
			}
			if err := WriteDump(&want, src); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				gl, wl := strings.Split(got.String(), "\n"), strings.Split(want.String(), "\n")
				for i := 0; i < len(gl) && i < len(wl); i++ {
					if gl[i] != wl[i] {
						t.Errorf("line %d differs:\nimage: %.300s\ndump:  %.300s", i+1, gl[i], wl[i])
						break
					}
				}
				if len(gl) != len(wl) {
					t.Errorf("image dump has %d lines, source %d", len(gl), len(wl))
				}
			}
			var again bytes.Buffer
			if err := Write(&again, root, WriteOptions{MinVersion: img.FormatVersion(), MaxVersion: img.FormatVersion()}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Bytes(), data) {
				t.Errorf("rewriting the tree read from the image gives a different image (%d bytes, want %d)", again.Len(), len(data))
			}
		})
	}
}

// normalizeDirs zeroes directory sizes and link counts, which the writer
// computes itself (a source dumpfile's values are ignored), and sorts
// xattrs (the writer sorts them; the reader keeps the image's order).
func normalizeDirs(root *Node) {
	_ = root.Walk(func(n *Node) error {
		if n.Link == nil && n.IsDir() {
			n.Size, n.Nlink = 0, 0
		}
		rdSortXattrs(n.Xattrs)
		return nil
	})
}

// dropWhiteoutDirOpaque removes the overlay opaque xattrs from directories
// holding whiteouts: format version 1 overwrites them with its own marker
// ("x"), so an image cannot give the source's values back (the reader
// returns the marker, as composefs-info does).
func dropWhiteoutDirOpaque(root *Node) {
	_ = root.Walk(func(n *Node) error {
		if n.Link != nil || !n.IsDir() {
			return nil
		}
		has := false
		for _, c := range n.Children {
			if c.Link == nil && c.Type() == ModeChar && c.Rdev == 0 {
				has = true
			}
		}
		if !has {
			return nil
		}
		var keep []Xattr
		for _, x := range n.Xattrs {
			if x.Name != "trusted.overlay.opaque" && x.Name != "user.overlay.opaque" {
				keep = append(keep, x)
			}
		}
		n.Xattrs = keep
		return nil
	})
}

// TestReaderMatchesComposefsInfo: printing Tree() of each generated
// reference image gives exactly what the reference `composefs-info dump`
// prints for it.
func TestReaderMatchesComposefsInfo(t *testing.T) {
	info := referenceTool(t, "composefs-info")
	dir := t.TempDir()
	for _, path := range genImages(t) {
		data := gunzipFile(t, path)
		file := filepath.Join(dir, "image.cfs")
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		want, err := exec.Command(info, "dump", file).Output()
		if err != nil {
			t.Fatalf("composefs-info dump %s: %v", path, err)
		}
		img, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		root, err := img.Tree()
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := WriteDump(&got, root); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: dump differs from composefs-info's", filepath.Base(path))
		}
	}
}
