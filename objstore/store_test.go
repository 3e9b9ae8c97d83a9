package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// newTestStore creates a store in a fresh temporary directory.
func newTestStore(t testing.TB, opts Options) *Store {
	t.Helper()
	opts.Create = true
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "store"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// content returns deterministic pseudo-random bytes.
func content(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed*7+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeTree creates files (relative path → content) under dir.
func writeTree(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func importTree(t testing.TB, s *Store, files map[string][]byte) ImportResult {
	t.Helper()
	dir := t.TempDir()
	writeTree(t, dir, files)
	return importDir(t, s, dir)
}

func importDir(t testing.TB, s *Store, dir string) ImportResult {
	t.Helper()
	res, err := s.ImportDir(context.Background(), dir, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func mustFsckClean(t testing.TB, s *Store) FsckResult {
	t.Helper()
	res, err := s.Fsck(context.Background(), FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Clean() {
		for _, p := range res.Problems {
			t.Errorf("fsck: %s", p)
		}
		t.FailNow()
	}
	return res
}

func stat(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestImportCommitFsck(t *testing.T) {
	s := newTestStore(t, Options{})
	files := map[string][]byte{
		"a":         content(1, 5000),
		"dir/b":     content(2, 100),
		"dir/c":     content(1, 5000), // same as a
		"small":     []byte("inline"),
		"empty":     nil,
		"big/large": content(3, 3<<20+17),
	}
	src := t.TempDir()
	writeTree(t, src, files)
	res := importDir(t, s, src)
	if res.Files != 4 || res.Added != 3 {
		t.Errorf("files %d added %d, want 4 and 3", res.Files, res.Added)
	}
	dir := s.ImageDir(res.Digest)
	// image.cfs is named by its fs-verity digest.
	got, err := verity.DigestFile(context.Background(), filepath.Join(dir, fileImage), verity.SHA256)
	if err != nil || got != res.Digest {
		t.Fatalf("image digest %v (%v), want %v", got, err, res.Digest)
	}
	// Objects are read-only, in the image dir and objects/, same inode.
	d := verity.DigestBytes(files["a"], verity.SHA256)
	a := stat(t, filepath.Join(dir, d.ObjectPath()))
	b := stat(t, s.ObjectPath(d))
	if a.Ino != b.Ino || a.Nlink != 2 || a.Mode&0o777 != 0o444 {
		t.Errorf("object: ino %d/%d nlink %d mode %o", a.Ino, b.Ino, a.Nlink, a.Mode&0o777)
	}
	// The tree in image.cfs references exactly the staged objects.
	root := imageTree(t, s, res.Digest)
	n, err := root.Lookup("/dir/c")
	if err != nil || n.Payload != d.ObjectPath() || n.Digest != d {
		t.Errorf("/dir/c: %+v %v", n, err)
	}
	if n, _ := root.Lookup("/small"); n == nil || string(n.Content) != "inline" {
		t.Errorf("/small not inline: %+v", n)
	}
	infos, err := s.Images(context.Background())
	if err != nil || len(infos) != 1 || infos[0].Objects != 3 || !strings.HasPrefix(infos[0].Meta.Source, "import:") {
		t.Fatalf("Images: %+v %v", infos, err)
	}
	fr := mustFsckClean(t, s)
	if fr.Objects != 3 || fr.Images != 1 {
		t.Errorf("fsck counted %d objects, %d images", fr.Objects, fr.Images)
	}
	// Importing the same tree again: same digest, nothing new.
	res2 := importDir(t, s, src)
	if res2.Digest != res.Digest || res2.Added != 0 {
		t.Errorf("re-import: %v added %d", res2.Digest, res2.Added)
	}
	mustFsckClean(t, s)
}

func TestSharedObjectsAndRemoval(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	common := content(10, 10000)
	r1 := importTree(t, s, map[string][]byte{"common": common, "only1": content(11, 9000)})
	r2 := importTree(t, s, map[string][]byte{"x/common": common, "only2": content(12, 9000)})
	if r2.Added != 1 {
		t.Errorf("second import added %d objects, want 1", r2.Added)
	}
	dc := verity.DigestBytes(common, verity.SHA256)
	d1 := verity.DigestBytes(content(11, 9000), verity.SHA256)
	if st := stat(t, s.ObjectPath(dc)); st.Nlink != 3 {
		t.Errorf("shared object nlink %d, want 3", st.Nlink)
	}
	if err := s.Remove(ctx, r1.Digest); err != nil {
		t.Fatal(err)
	}
	if s.HasObject(d1) {
		t.Error("object only image 1 used survived its removal")
	}
	if !s.HasObject(dc) || stat(t, s.ObjectPath(dc)).Nlink != 2 {
		t.Error("shared object lost or wrong link count")
	}
	if err := s.Remove(ctx, r1.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("second removal: %v, want ErrNotFound", err)
	}
	mustFsckClean(t, s)
	if err := s.Remove(ctx, r2.Digest); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Objects != 0 {
		t.Errorf("after removing everything: %+v %v", st, err)
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), dirRemoved))
	if len(ents) != 0 {
		t.Errorf("removed/ not empty: %v", ents)
	}
}

func TestStagingAPI(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	tests := []struct {
		name    string
		data    []byte
		size    int64
		wantErr error
	}{
		{"exact size", content(1, 8193), 8193, nil},
		{"unknown size", content(2, 100), -1, nil},
		{"too short", content(3, 100), 101, ErrSizeMismatch},
		{"too long", content(4, 100), 99, ErrSizeMismatch},
		{"empty", nil, 0, nil},
	}
	st, err := s.NewStaging(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, added, err := st.AddObject(ctx, bytes.NewReader(tc.data), tc.size)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == nil && (!added || d != verity.DigestBytes(tc.data, verity.SHA256)) {
				t.Errorf("digest %v added %v", d, added)
			}
		})
	}
	// Adding the same content twice in one staging.
	if _, added, err := st.AddObject(ctx, bytes.NewReader(content(1, 8193)), -1); err != nil || added {
		t.Errorf("duplicate add: added=%v err=%v", added, err)
	}
	// LinkObject of an object that does not exist.
	missing := verity.DigestBytes([]byte("nope"), verity.SHA256)
	if err := st.LinkObject(ctx, missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("LinkObject(missing) = %v", err)
	}
	// Commit with a tree referencing an object that is not staged fails and aborts.
	root := erofs.NewRoot(0o755)
	f := &erofs.Node{Name: "f", Inode: erofs.Inode{Mode: erofs.ModeReg | 0o644, Nlink: 1, Size: 4, Payload: missing.ObjectPath(), Digest: missing}}
	if err := root.AddChild(f); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Commit(ctx, root, ImageMeta{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("commit with a missing object: %v", err)
	}
	if _, err := os.Stat(st.Dir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed commit left %s", st.Dir())
	}
	if err := st.Abort(); err != nil {
		t.Errorf("Abort after failed Commit: %v", err)
	}
	// A commit makes objects available to LinkObject; an unreferenced
	// staged object is dropped from the image.
	st2, _ := s.NewStaging(ctx)
	data := content(9, 7000)
	d, _, err := st2.AddObject(ctx, bytes.NewReader(data), -1)
	if err != nil {
		t.Fatal(err)
	}
	extra, _, _ := st2.AddObject(ctx, bytes.NewReader(content(8, 700)), -1)
	root = erofs.NewRoot(0o755)
	root.AddChild(&erofs.Node{Name: "f", Inode: erofs.Inode{Mode: erofs.ModeReg | 0o644, Nlink: 1, Size: 7000, Payload: d.ObjectPath(), Digest: d}})
	id, err := st2.Commit(ctx, root, ImageMeta{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.ImageDir(id), extra.ObjectPath())); err == nil {
		t.Error("unreferenced staged object kept in the image directory")
	}
	st3, _ := s.NewStaging(ctx)
	if err := st3.LinkObject(ctx, d); err != nil {
		t.Fatal(err)
	}
	id3, err := st3.Commit(ctx, root, ImageMeta{Source: "again"})
	if err != nil || id3 != id {
		t.Fatalf("recommit: %v %v", id3, err)
	}
	mustFsckClean(t, s)
	if s.HasObject(extra) {
		t.Error("an object no committed image references reached objects/")
	}
	if r, _ := s.GC(ctx, GCOptions{}); r.Objects != 0 {
		t.Errorf("gc deleted %d objects, want 0", r.Objects)
	}
	mustFsckClean(t, s)
}

func TestOpenCleansTmp(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	live, err := s.NewStaging(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := live.AddObject(ctx, bytes.NewReader(content(1, 1000)), -1); err != nil {
		t.Fatal(err)
	}
	// A leftover of a dead process: its lock file is not locked.
	dead := filepath.Join(s.Root(), dirTmp, "st-1-dead")
	os.MkdirAll(filepath.Join(dead, "ab"), 0o700)
	os.WriteFile(filepath.Join(dead, "ab", "x"), []byte("x"), 0o444)
	os.WriteFile(dead+".lock", nil, 0o600)
	os.MkdirAll(filepath.Join(s.Root(), dirTmp, "orphan-dir"), 0o700)
	os.WriteFile(filepath.Join(s.Root(), dirTmp, "stray"), nil, 0o600)

	s2, err := Open(ctx, s.Root(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	ents, _ := os.ReadDir(filepath.Join(s.Root(), dirTmp))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{filepath.Base(live.Dir()), filepath.Base(live.Dir()) + ".lock"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("tmp/ after open: %v, want %v", names, want)
	}
	live.Abort()
	ents, _ = os.ReadDir(filepath.Join(s.Root(), dirTmp))
	if len(ents) != 0 {
		t.Errorf("tmp/ after abort: %v", ents)
	}
}

func TestFsckFindsProblems(t *testing.T) {
	ctx := context.Background()
	type setup func(t *testing.T, s *Store, img verity.Digest, obj verity.Digest)
	tests := []struct {
		name       string
		setup      setup
		want       ProblemKind
		repairable bool
	}{
		{"corrupt object", func(t *testing.T, s *Store, img, obj verity.Digest) {
			p := s.ObjectPath(obj)
			os.Chmod(p, 0o644)
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt([]byte("garbage"), 10)
			f.Close()
		}, ProblemCorruptObject, false},
		{"foreign file in objects", func(t *testing.T, s *Store, img, obj verity.Digest) {
			os.WriteFile(filepath.Join(s.Root(), dirObjects, obj.Hex()[:2], "not-a-digest"), []byte("x"), 0o644)
		}, ProblemForeignFile, true},
		{"object missing from image", func(t *testing.T, s *Store, img, obj verity.Digest) {
			os.Remove(filepath.Join(s.ImageDir(img), obj.ObjectPath()))
		}, ProblemMissingObject, true},
		{"object missing from objects", func(t *testing.T, s *Store, img, obj verity.Digest) {
			os.Remove(s.ObjectPath(obj))
		}, ProblemNotIndexed, true},
		{"unreferenced object in image", func(t *testing.T, s *Store, img, obj verity.Digest) {
			d := verity.DigestBytes([]byte("other"), verity.SHA256)
			os.MkdirAll(filepath.Join(s.ImageDir(img), d.Hex()[:2]), 0o700)
			os.WriteFile(filepath.Join(s.ImageDir(img), d.ObjectPath()), []byte("other"), 0o444)
		}, ProblemUnreferenced, true},
		{"image renamed", func(t *testing.T, s *Store, img, obj verity.Digest) {
			other := verity.DigestBytes([]byte("x"), verity.SHA256)
			os.Rename(s.ImageDir(img), s.ImageDir(other))
		}, ProblemBadImage, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, Options{})
			data := content(5, 20000)
			res := importTree(t, s, map[string][]byte{"f": data, "g": content(6, 300)})
			obj := verity.DigestBytes(data, verity.SHA256)
			tc.setup(t, s, res.Digest, obj)
			fr, err := s.Fsck(ctx, FsckOptions{})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range fr.Problems {
				if p.Kind == tc.want {
					found = true
				}
			}
			if !found {
				t.Fatalf("fsck did not report %s; got %v", tc.want, fr.Problems)
			}
			fr, err = s.Fsck(ctx, FsckOptions{Repair: true})
			if err != nil {
				t.Fatal(err)
			}
			after, _ := s.Fsck(ctx, FsckOptions{})
			if tc.repairable && !after.Clean() {
				t.Errorf("not repaired: %v (repair run: %v)", after.Problems, fr.Problems)
			}
			// The other image object is never affected.
			g := verity.DigestBytes(content(6, 300), verity.SHA256)
			if !s.HasObject(g) {
				t.Error("an unrelated object was lost")
			}
		})
	}
}

func TestBadRoots(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := Open(ctx, file, Options{Create: true}); !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("store root is a file: %v", err)
	}
	if _, err := Open(ctx, filepath.Join(dir, "absent"), Options{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("absent store without Create: %v", err)
	}
	// An existing empty directory becomes a private store.
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o755)
	if s, err := Open(ctx, open, Options{Create: true}); err != nil {
		t.Error(err)
	} else if st := stat(t, s.Root()); st.Mode&0o777 != 0o700 {
		t.Errorf("store root mode %o, want 700", st.Mode&0o777)
	}
	s := newTestStore(t, Options{})
	if _, err := Open(ctx, s.Root(), Options{Algorithm: verity.SHA512}); !errors.Is(err, ErrAlgorithm) {
		t.Errorf("algorithm mismatch: %v", err)
	}
	// images/ on another filesystem.
	mnt := filepath.Join(s.Root(), dirImages)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	defer unix.Unmount(mnt, 0)
	if _, err := Open(ctx, s.Root(), Options{}); !errors.Is(err, ErrCrossDevice) {
		t.Errorf("images/ on another filesystem: %v", err)
	}
}

func TestReadOnlyFilesystem(t *testing.T) {
	ctx := context.Background()
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	root := filepath.Join(mnt, "store")
	s, err := Open(ctx, root, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	res := importTree(t, s, map[string][]byte{"f": content(1, 5000)})
	if err := unix.Mount("", mnt, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	// Creating a store there fails clearly; the existing one still reads.
	if _, err := Open(ctx, filepath.Join(mnt, "other"), Options{Create: true}); !errors.Is(err, unix.EROFS) {
		t.Errorf("create on read-only fs: %v", err)
	}
	s2, err := Open(ctx, root, Options{})
	if err != nil {
		t.Fatalf("open on read-only fs: %v", err)
	}
	if _, err := s2.Image(ctx, res.Digest); err != nil {
		t.Error(err)
	}
	if _, err := s2.NewStaging(ctx); !errors.Is(err, unix.EROFS) {
		t.Errorf("staging on read-only fs: %v", err)
	}
	if err := s2.Remove(ctx, res.Digest); !errors.Is(err, unix.EROFS) {
		t.Errorf("remove on read-only fs: %v", err)
	}
	fr := mustFsckClean(t, s2)
	if fr.Images != 1 {
		t.Errorf("fsck saw %d images", fr.Images)
	}
}

func TestDiskFull(t *testing.T) {
	ctx := context.Background()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatalf("mkfs.ext4 missing (e2fsprogs is in DEB_PACKAGES): %v", err)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount: %v %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	s, err := Open(ctx, filepath.Join(mnt, "store"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	first := importTree(t, s, map[string][]byte{"keep": content(1, 1<<20)})
	// 20 MiB of new content into a 16 MiB filesystem.
	src := t.TempDir()
	files := map[string][]byte{}
	for i := range 20 {
		files[fmt.Sprintf("f%02d", i)] = content(uint64(100+i), 1<<20)
	}
	writeTree(t, src, files)
	_, err = s.ImportDir(ctx, src, ImportOptions{})
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("import into a full filesystem: %v, want ENOSPC", err)
	}
	// Nothing else lost, nothing left over.
	ents, _ := os.ReadDir(filepath.Join(s.Root(), dirTmp))
	if len(ents) != 0 {
		t.Errorf("tmp/ not cleaned after failed import: %v", ents)
	}
	if _, err := s.Image(ctx, first.Digest); err != nil {
		t.Error(err)
	}
	mustFsckClean(t, s)
	if _, err := s.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	mustFsckClean(t, s)
}

// The import cache must never hide a change: a rewritten file (even with
// its old mtime restored) is read again, and a cached digest whose object
// gc deleted is read again too.
func TestImportCache(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	src := t.TempDir()
	writeTree(t, src, map[string][]byte{"a": content(1, 5000), "b": content(2, 5000)})
	r1 := importDir(t, s, src)
	fi, _ := os.Stat(filepath.Join(src, "a"))
	os.WriteFile(filepath.Join(src, "a"), content(3, 5000), 0o644)
	os.Chtimes(filepath.Join(src, "a"), fi.ModTime(), fi.ModTime())
	r2 := importDir(t, s, src)
	if r2.Added != 1 || r2.Digest == r1.Digest {
		t.Fatalf("changed file not re-read: added %d", r2.Added)
	}
	if n, _ := imageTree(t, s, r2.Digest).Lookup("/a"); n == nil || n.Digest != verity.DigestBytes(content(3, 5000), verity.SHA256) {
		t.Fatalf("image has the stale digest for /a")
	}
	// Remove both images: objects gone; the cache still names them.
	s.Remove(ctx, r1.Digest)
	s.Remove(ctx, r2.Digest)
	r3 := importDir(t, s, src)
	if r3.Digest != r2.Digest || r3.Added != 2 {
		t.Errorf("re-import after gc: added %d, digest equal %v", r3.Added, r3.Digest == r2.Digest)
	}
	// The cache keeps a file's xattrs: a cached file's image entry has
	// them, and a changed xattr (which moves ctime) is seen.
	xattrOf := func(d verity.Digest) string {
		n, _ := imageTree(t, s, d).Lookup("/b")
		for _, x := range n.Primary().Xattrs {
			if x.Name == "user.twinroot" {
				return string(x.Value)
			}
		}
		return ""
	}
	if err := unix.Lsetxattr(filepath.Join(src, "b"), "user.twinroot", []byte("one"), 0); err != nil {
		t.Fatalf("user xattrs: %v", err)
	}
	if r := importDir(t, s, src); xattrOf(r.Digest) != "one" || r.Added != 0 {
		t.Errorf("xattr set: image has %q, added %d", xattrOf(r.Digest), r.Added)
	}
	if r := importDir(t, s, src); xattrOf(r.Digest) != "one" {
		t.Errorf("cached file lost its xattr: %q", xattrOf(r.Digest))
	}
	if err := unix.Lsetxattr(filepath.Join(src, "b"), "user.twinroot", []byte("two"), 0); err != nil {
		t.Fatal(err)
	}
	if r := importDir(t, s, src); xattrOf(r.Digest) != "two" {
		t.Errorf("changed xattr not seen: %q", xattrOf(r.Digest))
	}
	mustFsckClean(t, s)
}

// ImportDir builds the same tree as erofs.FromDir (the mkcomposefs
// semantics), whatever order its parallel walk ran in: the image digests
// are equal, for a tree with hardlinks, symlinks, xattrs, a FIFO, inline,
// empty and external files.
func TestImportMatchesFromDir(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	files := map[string][]byte{"a/big": content(1, 70000), "a/small": []byte("small"), "b/empty": nil, "c/d/e/f": content(2, 100)}
	for i := range 40 {
		files[fmt.Sprintf("many/f%02d", i)] = content(uint64(10+i%7), 200+i)
	}
	writeTree(t, src, files)
	for _, l := range [][2]string{{"a/big", "hl-big"}, {"a/big", "c/hl-big2"}, {"a/small", "b/hl-small"}} {
		if err := os.Link(filepath.Join(src, l[0]), filepath.Join(src, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("a/big", filepath.Join(src, "sym"))
	unix.Mkfifo(filepath.Join(src, "fifo"), 0o600)
	if err := unix.Lsetxattr(filepath.Join(src, "a", "big"), "user.twinroot", []byte("v"), 0); err != nil {
		t.Logf("no user xattrs here: %v", err)
	}
	tree, err := erofs.FromDir(ctx, src, erofs.FromDirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := verity.New(verity.SHA256)
	if err := erofs.Write(h, tree, erofs.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	want := h.Sum()
	for i := range 3 {
		s := newTestStore(t, Options{})
		res := importDir(t, s, src)
		if res.Digest != want {
			t.Fatalf("run %d: ImportDir digest %s, FromDir+Write %s", i, res.Digest, want)
		}
		mustFsckClean(t, s)
	}
}

// imageTree reads the tree of committed image d.
func imageTree(t testing.TB, s *Store, d verity.Digest) *erofs.Node {
	t.Helper()
	img, err := erofs.OpenFile(filepath.Join(s.ImageDir(d), fileImage))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	root, err := img.Tree()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// Committing an image that exists already gives it the new provenance
// (the same content got from elsewhere), keeping its first commit time;
// a commit with the same provenance leaves meta.json alone.
func TestCommitExistingUpdatesProvenance(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	src := t.TempDir()
	writeTree(t, src, map[string][]byte{"a": content(1, 3000)})
	first := importDir(t, s, src)
	info1, err := s.Image(ctx, first.Digest)
	if err != nil || !strings.HasPrefix(info1.Meta.Source, "import:") {
		t.Fatalf("first: %+v %v", info1.Meta, err)
	}
	meta := ImageMeta{Source: "docker://registry.example/os:1", Manifest: "sha256:" + strings.Repeat("ab", 32)}
	res, err := s.ImportDir(ctx, src, ImportOptions{Meta: meta})
	if err != nil || res.Digest != first.Digest {
		t.Fatalf("second: %v, digest equal %v", err, res.Digest == first.Digest)
	}
	info2, err := s.Image(ctx, first.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if info2.Meta.Source != meta.Source || info2.Meta.Manifest != meta.Manifest || !info2.Meta.Created.Equal(info1.Meta.Created) {
		t.Errorf("after the second commit: %+v (first %+v)", info2.Meta, info1.Meta)
	}
	p := filepath.Join(s.ImageDir(first.Digest), fileMeta)
	before := stat(t, p)
	if _, err := s.ImportDir(ctx, src, ImportOptions{Meta: meta}); err != nil {
		t.Fatal(err)
	}
	if after := stat(t, p); after.Ino != before.Ino {
		t.Error("meta.json rewritten with the same provenance")
	}
	mustFsckClean(t, s)
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), dirTmp)); len(ents) != 0 {
		t.Errorf("tmp/ not empty: %v", ents)
	}
}
