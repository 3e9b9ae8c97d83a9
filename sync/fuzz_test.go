package sync

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// digestAdder is an ObjectAdder that computes each object's fs-verity
// digest and keeps nothing: enough to exercise the tar reader on its own.
type digestAdder struct{ seen map[verity.Digest]bool }

func (a *digestAdder) AddObject(ctx context.Context, r io.Reader, size int64) (verity.Digest, bool, error) {
	d, n, err := verity.DigestReader(r, verity.SHA256)
	if err != nil {
		return d, false, err
	}
	if n != size {
		return d, false, io.ErrUnexpectedEOF
	}
	added := !a.seen[d]
	a.seen[d] = true
	return d, added, nil
}

func (a *digestAdder) LinkObject(ctx context.Context, d verity.Digest) error {
	if !a.seen[d] {
		return errors.New("no such object")
	}
	return nil
}

// FuzzLayer feeds arbitrary bytes as an uncompressed layer: reading and
// applying it must fail cleanly or give a tree the EROFS writer accepts.
func FuzzLayer(f *testing.F) {
	f.Add(tarBytes(f, dir("etc/", 0o755), reg("etc/a", 0o644, []byte("hello")), hardlink("etc/b", "etc/a"), symlink("c", "etc/a")))
	f.Add(tarBytes(f, reg("a/b/c", 0o644, make([]byte, 100)), whiteout("a/.wh.b"), reg("a/.wh..wh..opq", 0, nil)))
	f.Add(tarBytes(f, reg("../x", 0o644, nil)))
	f.Add([]byte("not a tar"))
	lim := DefaultLimits()
	lim.MaxFiles = 1000
	lim.MaxLayerSize = 1 << 20
	f.Fuzz(func(t *testing.T, b []byte) {
		objs := &digestAdder{seen: map[verity.Digest]bool{}}
		entries, _, err := readLayer(context.Background(), bytes.NewReader(b), objs, lim, nil)
		if err != nil {
			return
		}
		tr := newTree(lim.MaxFiles)
		for i := range entries {
			if err := tr.apply(&entries[i]); err != nil {
				return
			}
		}
		if err := erofs.Validate(tr.finish()); err != nil {
			t.Fatalf("applied layer gives an invalid tree: %v", err)
		}
	})
}
