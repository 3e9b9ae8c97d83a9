package objstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

func TestRoots(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	a := importTree(t, s, map[string][]byte{"a": content(1, 5000)}).Digest
	b := importTree(t, s, map[string][]byte{"b": content(2, 5000)}).Digest

	var missing verity.Digest
	missing, _ = verity.ParseDigest("sha256:" + string(bytes.Repeat([]byte("ab"), 32)))
	if err := s.AddRoot(ctx, "deploy-x", missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AddRoot of a missing image: %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", ".hidden", "a/b", "a b", string(bytes.Repeat([]byte("x"), 201))} {
		if err := s.AddRoot(ctx, bad, a); err == nil {
			t.Errorf("AddRoot(%q) accepted", bad)
		}
	}
	for _, name := range []string{"deploy-abc.0", "deploy-abc.1"} {
		if err := s.AddRoot(ctx, name, a); err != nil {
			t.Fatal(err)
		}
	}
	roots, err := s.Roots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 2 || roots["deploy-abc.0"] != a || roots["deploy-abc.1"] != a {
		t.Fatalf("roots = %v", roots)
	}
	err = s.Remove(ctx, a)
	var re *RootedError
	if !errors.Is(err, ErrRooted) || !errors.As(err, &re) || len(re.Roots) != 2 || re.Roots[0] != "deploy-abc.0" {
		t.Fatalf("Remove of a rooted image: %v", err)
	}
	if _, err := os.Stat(s.ImageDir(a)); err != nil {
		t.Fatalf("rooted image touched: %v", err)
	}
	// gc never removes an image, rooted or not.
	if _, err := s.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []verity.Digest{a, b} {
		if _, err := s.Image(ctx, d); err != nil {
			t.Fatalf("after gc: %v", err)
		}
	}
	mustFsckClean(t, s)
	if err := s.RemoveRoot(ctx, "deploy-abc.0"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveRoot(ctx, "deploy-abc.0"); err != nil {
		t.Fatalf("second RemoveRoot: %v", err)
	}
	if err := s.Remove(ctx, a); !errors.Is(err, ErrRooted) {
		t.Fatalf("one root left: %v", err)
	}
	if err := s.RemoveRoot(ctx, "deploy-abc.1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, b); err != nil {
		t.Fatal(err)
	}
	mustFsckClean(t, s)

	// A root left naming a vanished image is a fsck finding.
	c := importTree(t, s, map[string][]byte{"c": content(3, 5000)}).Digest
	if err := s.AddRoot(ctx, "r", c); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(s.ImageDir(c), filepath.Join(t.TempDir(), "gone")); err != nil {
		t.Fatal(err)
	}
	res, err := s.Fsck(ctx, FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range res.Problems {
		found = found || p.Kind == ProblemDanglingRoot
	}
	if !found {
		t.Fatalf("fsck did not report the dangling root: %v", res.Problems)
	}
}

// TestRootsRaceRemove runs AddRoot and Remove of the same images at the
// same time: afterwards every root must name a committed image (fsck
// clean), whatever order they ran in.
func TestRootsRaceRemove(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	for round := range 40 {
		d := importTree(t, s, map[string][]byte{"f": content(uint64(round), 3000)}).Digest
		var wg sync.WaitGroup
		var addErr, rmErr error
		wg.Add(2)
		go func() { defer wg.Done(); addErr = s.AddRoot(ctx, "r", d) }()
		go func() { defer wg.Done(); rmErr = s.Remove(ctx, d) }()
		wg.Wait()
		switch {
		case addErr == nil && errors.Is(rmErr, ErrRooted):
		case errors.Is(addErr, ErrNotFound) && rmErr == nil:
		default:
			t.Fatalf("round %d: AddRoot: %v, Remove: %v", round, addErr, rmErr)
		}
		mustFsckClean(t, s)
		if err := s.RemoveRoot(ctx, "r"); err != nil {
			t.Fatal(err)
		}
		if addErr == nil {
			if err := s.Remove(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestImageFS(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	dir := t.TempDir()
	files := map[string][]byte{
		"etc/small":     []byte("inline"),
		"etc/big":       content(7, 70000),
		"etc/sub/other": content(8, 4097),
		"usr/empty":     {},
	}
	writeTree(t, dir, files)
	if err := os.Symlink("sub/other", filepath.Join(dir, "etc/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "etc/big"), 12, 34); err != nil {
		t.Fatal(err)
	}
	d := importDir(t, s, dir).Digest
	ifs, err := s.OpenImageFS(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range files {
		got, err := ifs.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("ReadFile(%s): %d bytes, %v", p, len(got), err)
		}
		f, err := ifs.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err = io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("Open(%s): %d bytes, %v", p, len(got), err)
		}
	}
	if got, err := fs.ReadFile(ifs, "etc/link"); err != nil || !bytes.Equal(got, files["etc/sub/other"]) {
		t.Errorf("through the symlink: %v", err)
	}
	if tgt, err := ifs.ReadLink("etc/link"); err != nil || tgt != "sub/other" {
		t.Errorf("ReadLink = %q, %v", tgt, err)
	}
	fi, err := ifs.Lstat("etc/big")
	if err != nil {
		t.Fatal(err)
	}
	if in, ok := fi.Sys().(*erofs.Inode); !ok || in.UID != 12 || in.GID != 34 {
		t.Errorf("Sys() = %#v", fi.Sys())
	}
	if o, err := ifs.OpenObject(fi.Sys().(*erofs.Inode)); err != nil {
		t.Errorf("OpenObject: %v", err)
	} else {
		got, _ := io.ReadAll(o)
		o.Close()
		if !bytes.Equal(got, files["etc/big"]) {
			t.Errorf("OpenObject read %d bytes", len(got))
		}
	}
	if fi, _ := ifs.Lstat("etc/small"); fi != nil {
		if _, err := ifs.OpenObject(fi.Sys().(*erofs.Inode)); err == nil {
			t.Error("OpenObject of an inline file accepted")
		}
	}
	f, _ := ifs.Open("etc/big")
	if fi, _ := f.Stat(); fi.Size() != 70000 || fi.Sys().(*erofs.Inode).UID != 12 {
		t.Errorf("open file's Stat: %v", fi)
	}
	f.Close()
	n := 0
	if err := fs.WalkDir(ifs, ".", func(p string, de fs.DirEntry, err error) error {
		n++
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != 9 { // . etc small big sub other link usr empty
		t.Errorf("walked %d entries", n)
	}
	// While open, a removal is deferred and the content stays readable.
	if err := s.Remove(ctx, d); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove while open: %v", err)
	}
	if got, err := ifs.ReadFile("etc/big"); err != nil || !bytes.Equal(got, files["etc/big"]) {
		t.Errorf("after Remove: %v", err)
	}
	if err := ifs.Close(); err != nil {
		t.Fatal(err)
	}
	// Use after Close is an error, not a fault on the unmapped image.
	if _, err := ifs.ReadFile("etc/small"); err == nil {
		t.Error("ReadFile after Close succeeded")
	}
	if _, err := s.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), dirRemoved)); len(ents) != 0 {
		t.Errorf("removal not finished: %v", ents)
	}
	if _, err := s.OpenImageFS(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenImageFS of a removed image: %v", err)
	}
}

// TestRemovedForeignEntries: entries of removed/ not named after an image
// belong to another package and are left alone.
func TestRemovedForeignEntries(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	p := filepath.Join(s.Root(), dirRemoved, "deploy-abc.0.1234")
	if err := os.MkdirAll(filepath.Join(p, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p, "etc")); err != nil {
		t.Fatalf("gc touched deploy's entry: %v", err)
	}
}
