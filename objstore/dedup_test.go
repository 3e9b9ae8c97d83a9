package objstore

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	cstorage "go.podman.io/storage"
	ctypes "go.podman.io/storage/types"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

func tarOf(t *testing.T, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	return buf.Bytes()
}

func TestDedupContainerStorage(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	graph, run := filepath.Join(base, "graph"), filepath.Join(base, "run")
	so := ctypes.StoreOptions{GraphRoot: graph, RunRoot: run, GraphDriverName: "vfs"}
	x, y, z := content(1, 30000), content(2, 5000), content(3, 7000)
	cs, err := cstorage.GetStore(so)
	if err != nil {
		t.Fatalf("creating container storage: %v", err)
	}
	layer, _, err := cs.PutLayer("", "", nil, "", false, nil, bytes.NewReader(tarOf(t, map[string][]byte{
		"usr/x": x, "usr/y": y, "usr/z": z, "usr/tiny": []byte("tiny")})))
	if err != nil {
		t.Fatal(err)
	}
	img, err := cs.CreateImage("", []string{"localhost/test:1"}, layer.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := cs.CreateContainer("", nil, img.ID, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A container's read-write layer is never shared, even with known content.
	rwFile := filepath.Join(graph, "vfs", "dir", ctr.LayerID, "usr", "rw-copy")
	if err := os.WriteFile(rwFile, y, 0o644); err != nil {
		t.Fatal(err)
	}
	cs.Shutdown(false)

	s, err := Open(ctx, filepath.Join(base, "store"), Options{Create: true}) // same filesystem as the graph root
	if err != nil {
		t.Fatal(err)
	}
	ours := importTree(t, s, map[string][]byte{"x": x, "y": y, "w": content(4, 9000)})
	theirs := func(name string) unix.Stat_t {
		return stat(t, filepath.Join(graph, "vfs", "dir", layer.ID, "usr", name))
	}

	res, err := s.Dedup(ctx, DedupOptions{GraphRoot: graph, RunRoot: run, Driver: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dedup: %+v", res)
	if res.Skipped != "" || res.Hardlinked != 2 || res.Indexed != 1 {
		t.Fatalf("dedup result %+v, want 2 hardlinked and 1 indexed", res)
	}
	dx, dy, dz := verity.DigestBytes(x, verity.SHA256), verity.DigestBytes(y, verity.SHA256), verity.DigestBytes(z, verity.SHA256)
	for _, c := range []struct {
		d    verity.Digest
		name string
	}{{dx, "x"}, {dy, "y"}, {dz, "z"}} {
		if o, th := stat(t, s.ObjectPath(c.d)), theirs(c.name); o.Ino != th.Ino {
			t.Errorf("%s: objects/ inode %d, container inode %d", c.name, o.Ino, th.Ino)
		}
	}
	if o, im := stat(t, s.ObjectPath(dx)), stat(t, filepath.Join(s.ImageDir(ours.Digest), dx.ObjectPath())); o.Ino != im.Ino || o.Nlink != 3 {
		t.Errorf("image dir not relinked: inode %d vs %d, nlink %d", o.Ino, im.Ino, o.Nlink)
	}
	if rw := stat(t, rwFile); rw.Nlink != 1 {
		t.Errorf("container rw layer file got linked (nlink %d)", rw.Nlink)
	}
	fr := mustFsckClean(t, s)
	if fr.Shared != 3 {
		t.Errorf("fsck counts %d shared objects, want 3", fr.Shared)
	}
	st, _ := s.Stats(ctx)
	if st.SharedBytes != int64(len(x)+len(y)+len(z)) {
		t.Errorf("stats shared bytes %d", st.SharedBytes)
	}
	// A second run finds everything shared (and uses its digest cache).
	res, _ = s.Dedup(ctx, DedupOptions{GraphRoot: graph, RunRoot: run, Driver: "vfs"})
	if res.AlreadyShared != 3 || res.Hardlinked != 0 {
		t.Errorf("second dedup: %+v", res)
	}
	// Our gc keeps what containers still link, even if no image uses it.
	if _, err := s.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	if !s.HasObject(dz) {
		t.Error("gc deleted an object container storage still links")
	}
	// Container storage removes its layer: our objects stay intact.
	cs, err = cstorage.GetStore(so)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.DeleteContainer(ctr.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DeleteImage(img.ID, true); err != nil {
		t.Fatal(err)
	}
	cs.Shutdown(false)
	if _, err := os.Stat(filepath.Join(graph, "vfs", "dir", layer.ID)); !os.IsNotExist(err) {
		t.Fatalf("container layer still there: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(s.ImageDir(ours.Digest), dx.ObjectPath()))
	if err != nil || !bytes.Equal(got, x) {
		t.Fatalf("object lost with the container layer: %v", err)
	}
	mustFsckClean(t, s)
	// Now nothing links z but objects/: gc deletes it.
	if r, _ := s.GC(ctx, GCOptions{}); r.Objects != 1 || s.HasObject(dz) {
		t.Errorf("gc after layer removal: %+v", r)
	}
	mustFsckClean(t, s)
}

func TestDedupWithoutContainerStorage(t *testing.T) {
	s := newTestStore(t, Options{})
	res, err := s.Dedup(context.Background(), DedupOptions{GraphRoot: filepath.Join(t.TempDir(), "absent")})
	if err != nil || res.Skipped == "" {
		t.Errorf("absent container storage: %+v %v", res, err)
	}
	// A graph root that is a file: GetStore fails, no sharing, no error.
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	res, err = s.Dedup(context.Background(), DedupOptions{GraphRoot: f, Driver: "vfs"})
	if err != nil || res.Skipped == "" {
		t.Errorf("broken container storage: %+v %v", res, err)
	}
	t.Logf("skipped: %s", res.Skipped)
}

// Container storage on another filesystem: no hardlinks; without reflink
// support (tmpfs, ext4) nothing is shared, and that is reported.
func TestDedupOtherFilesystem(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	graph, run := filepath.Join(base, "graph"), filepath.Join(base, "run")
	so := ctypes.StoreOptions{GraphRoot: graph, RunRoot: run, GraphDriverName: "vfs"}
	x := content(1, 30000)
	cs, err := cstorage.GetStore(so)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cs.PutLayer("", "", nil, "", false, nil, bytes.NewReader(tarOf(t, map[string][]byte{"x": x, "z": content(3, 700)}))); err != nil {
		t.Fatal(err)
	}
	cs.Shutdown(false)
	s, err := Open(ctx, filepath.Join(mountTmpfs(t, "64m"), "store"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	importTree(t, s, map[string][]byte{"x": x})
	res, err := s.Dedup(ctx, DedupOptions{GraphRoot: graph, RunRoot: run, Driver: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Hardlinked+res.Reflinked+res.Indexed != 0 || res.NotShareable != 1 {
		t.Errorf("cross-filesystem dedup: %+v, want 1 not shareable", res)
	}
	mustFsckClean(t, s)
}

// An image in use keeps its names: while its .lock is held shared (as
// MountImage holds it), or while the mount table names it after its lock
// was released, Dedup leaves its directory alone and moves only objects/
// and idle images; a run after it is free moves its names too.
func TestDedupSkipsImageInUse(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	graph, run := filepath.Join(base, "graph"), filepath.Join(base, "run")
	x := content(21, 40000)
	_, layerDir := vfsLayer(t, graph, run, map[string][]byte{"usr/x": x})
	theirs := filepath.Join(layerDir, "usr", "x")
	// Each time Dedup is about to rename over an image's name, some image
	// lock must be impossible to take shared (as MountImage would): the one
	// Dedup holds from its in-use check until after the rename.
	var renames, unguarded int
	root := filepath.Join(base, "store")
	hook := func(point string) {
		if point != "dedup.image-locked" {
			return
		}
		renames++
		ents, _ := os.ReadDir(filepath.Join(root, dirImages))
		for _, e := range ents {
			f, err := os.Open(filepath.Join(root, dirImages, e.Name(), fileLock))
			if err != nil {
				continue
			}
			err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
			f.Close()
			if err != nil {
				return
			}
		}
		unguarded++
	}
	s, err := Open(ctx, root, Options{Create: true, crash: hook}) // same filesystem as the graph root
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	busy := importTree(t, s, map[string][]byte{"x": x, "a": content(22, 5000)})
	idle := importTree(t, s, map[string][]byte{"x": x, "b": content(23, 6000)})
	dx := verity.DigestBytes(x, verity.SHA256)
	busyName := filepath.Join(s.ImageDir(busy.Digest), dx.ObjectPath())
	idleName := filepath.Join(s.ImageDir(idle.Digest), dx.ObjectPath())
	ours := stat(t, busyName)
	opts := DedupOptions{GraphRoot: graph, RunRoot: run, Driver: "vfs"}
	dedup := func(step string) DedupResult {
		t.Helper()
		res, err := s.Dedup(ctx, opts)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		t.Logf("%s: %+v", step, res)
		return res
	}
	is := func(p string, want unix.Stat_t) bool {
		st := stat(t, p)
		return st.Dev == want.Dev && st.Ino == want.Ino
	}

	// 1. The busy image's lock is held shared.
	lk, err := os.Open(filepath.Join(s.ImageDir(busy.Digest), fileLock))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(lk.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	res := dedup("lock held")
	th := stat(t, theirs)
	if res.Hardlinked != 1 {
		t.Errorf("lock held: want 1 hardlinked, got %+v", res)
	}
	if !is(busyName, ours) {
		t.Error("lock held: the busy image's name was replaced")
	}
	if !is(idleName, th) || !is(s.ObjectPath(dx), th) {
		t.Error("lock held: objects/ or the idle image not moved to their inode")
	}
	// Dedup dropped every image lock it took.
	lk.Close()
	for _, d := range []verity.Digest{busy.Digest, idle.Digest} {
		f, err := os.Open(filepath.Join(s.ImageDir(d), fileLock))
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Errorf("image %s still locked after Dedup: %v", d, err)
		}
		f.Close()
	}

	// 2. Mounted, lock released: the mount table keeps it in use.
	m, mnt := mountImage(t, s, busy.Digest)
	m.Release()
	res = dedup("mounted")
	if res.AlreadyShared != 1 || res.Hardlinked != 0 {
		t.Errorf("mounted: want 1 already shared, got %+v", res)
	}
	if !is(busyName, ours) {
		t.Error("mounted: the busy image's name was replaced")
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "x")); err != nil || !bytes.Equal(got, x) {
		t.Errorf("reading through the mount: %v", err)
	}
	if err := erofs.Unmount(mnt); err != nil {
		t.Fatal(err)
	}

	// 3. Free: its name moves too, although objects/ is already shared.
	res = dedup("free")
	if res.Hardlinked != 1 {
		t.Errorf("free: want 1 hardlinked, got %+v", res)
	}
	if !is(busyName, th) {
		t.Error("free: the image's name was not moved")
	}
	if o := stat(t, theirs); o.Nlink != 4 {
		t.Errorf("their inode has %d links, want 4 (theirs, objects/, two images)", o.Nlink)
	}
	mustFsckClean(t, s)
	res = dedup("again")
	if res.AlreadyShared != 1 || res.Hardlinked != 0 {
		t.Errorf("again: want 1 already shared, got %+v", res)
	}
	if renames != 2 || unguarded != 0 {
		t.Errorf("%d image renames, %d of them without the image's lock held", renames, unguarded)
	}
	// Nothing left in tmp/ by the renames.
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), dirTmp)); len(ents) != 0 {
		t.Errorf("tmp/ not empty: %v", ents)
	}
}
