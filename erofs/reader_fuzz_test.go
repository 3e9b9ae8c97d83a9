package erofs

import (
	"bytes"
	"io/fs"
	"path/filepath"
	"testing"
)

// FuzzReader feeds arbitrary bytes to Open, the fs.FS view and Tree: they
// must return an error or a result, never panic, hang or allocate beyond a
// multiple of the input's size.
// Seeds: testdata/fuzz/FuzzReader (small reference images, whole and cut
// short) plus the generated vectors when they are present.
func FuzzReader(f *testing.F) {
	imgs, _ := filepath.Glob(filepath.Join(vectorDir, "gen-1039.cfs.gz"))
	for _, p := range imgs {
		f.Add(gunzipFile(f, p))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		// The fs.FS view: a few lookups and the root directory.
		if ents, err := fs.ReadDir(img, "."); err == nil && len(ents) > 0 {
			_, _ = fs.Stat(img, ents[0].Name())
			_, _ = fs.ReadFile(img, ents[len(ents)-1].Name())
		}
		_, _ = fs.ReadLink(img, "a/b")
		root, err := img.Tree()
		if err != nil {
			return
		}
		nodes := 0
		_ = root.Walk(func(n *Node) error {
			nodes++
			_ = n.Path()
			return nil
		})
		if nodes > len(data) {
			t.Fatalf("%d nodes from %d bytes", nodes, len(data))
		}
	})
}
