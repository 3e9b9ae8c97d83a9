package objstore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cstorage "go.podman.io/storage"
	ctypes "go.podman.io/storage/types"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/internal/vmtest"
	"github.com/twinroot/twinroot/verity"
)

// mountXFS makes an XFS filesystem (reflink is on by default) in a loop
// file and mounts it twice: the whole filesystem, and its subdirectory
// "other" bound on a second mount point. Links between the two mounts fail
// with EXDEV; FICLONE works (same superblock).
func mountXFS(t *testing.T) (whole, other string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a loop filesystem")
	}
	mkfs, err := exec.LookPath("mkfs.xfs")
	if err != nil {
		t.Skip("mkfs.xfs not installed (xfsprogs; make deps)")
	}
	base := t.TempDir()
	img := filepath.Join(base, "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 300<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	whole = filepath.Join(base, "whole")
	other = filepath.Join(base, "other")
	for _, d := range []string{whole, other} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("mount", "-t", "xfs", "-o", "loop", img, whole).CombinedOutput(); err != nil {
		t.Skipf("cannot mount an XFS loop filesystem here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", whole).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", whole, err, out)
		}
	})
	sub := filepath.Join(whole, "other")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(sub, other, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(other, 0); err != nil {
			t.Errorf("unmount %s: %v", other, err)
		}
	})
	return whole, other
}

// vfsLayer creates a vfs container storage at graph holding one image
// layer with files, and returns its options and the layer's directory.
func vfsLayer(t *testing.T, graph, run string, files map[string][]byte) (ctypes.StoreOptions, string) {
	t.Helper()
	so := ctypes.StoreOptions{GraphRoot: graph, RunRoot: run, GraphDriverName: "vfs"}
	cs, err := cstorage.GetStore(so)
	if err != nil {
		t.Fatalf("creating container storage: %v", err)
	}
	defer cs.Shutdown(false)
	layer, _, err := cs.PutLayer("", "", nil, "", false, nil, bytes.NewReader(tarOf(t, files)))
	if err != nil {
		t.Fatal(err)
	}
	return so, filepath.Join(graph, "vfs", "dir", layer.ID)
}

// Reflink on the host: the store and container storage are on two mounts
// of one XFS filesystem, so objects are shared by FICLONE, not hardlinks.
func TestDedupReflink(t *testing.T) {
	whole, other := mountXFS(t)
	s, err := Open(context.Background(), filepath.Join(whole, "store"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	testReflinkDedup(t, s, filepath.Join(other, "graph"), filepath.Join(t.TempDir(), "run"))
}

// testReflinkDedup checks Dedup between store s and a vfs container storage
// created at graph, which must be on the store's filesystem but on another
// mount (so hardlinks fail with EXDEV and clones work).
func testReflinkDedup(t *testing.T, s *Store, graph, run string) {
	ctx := context.Background()
	x, y := content(11, 300000), content(12, 70000)
	so, layerDir := vfsLayer(t, graph, run, map[string][]byte{"usr/x": x, "usr/y": y})
	ours := importTree(t, s, map[string][]byte{"x": x, "y": y, "w": content(13, 9000)})
	dx, dy := verity.DigestBytes(x, verity.SHA256), verity.DigestBytes(y, verity.SHA256)
	theirs := map[verity.Digest]string{dx: filepath.Join(layerDir, "usr", "x"), dy: filepath.Join(layerDir, "usr", "y")}
	if err := os.Link(theirs[dx], filepath.Join(s.Root(), dirTmp, "probe")); err == nil {
		t.Fatal("hardlink across the two mounts worked: the test would not exercise reflinks")
	}

	opts := DedupOptions{GraphRoot: graph, RunRoot: run, Driver: "vfs"}
	res, err := s.Dedup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dedup: %+v", res)
	if res.Skipped != "" || res.Reflinked != 2 || res.Hardlinked != 0 || res.NotShareable != 0 ||
		res.ReflinkedBytes != int64(len(x)+len(y)) {
		t.Fatalf("dedup result %+v, want 2 reflinked", res)
	}
	verityOn := s.VeritySupported()
	for d, their := range theirs {
		obj := s.ObjectPath(d)
		o, img, th := stat(t, obj), stat(t, filepath.Join(s.ImageDir(ours.Digest), d.ObjectPath())), stat(t, their)
		if o.Ino != img.Ino || o.Nlink != 2 {
			t.Errorf("%s: image name not moved to the clone: inode %d vs %d, nlink %d", d, o.Ino, img.Ino, o.Nlink)
		}
		if th.Nlink != 1 {
			t.Errorf("%s: their file got a link (nlink %d)", d, th.Nlink)
		}
		assertExtentsShared(t, obj, their)
		if verityOn {
			f, err := os.Open(obj)
			if err != nil {
				t.Fatal(err)
			}
			m, err := verity.Measure(f)
			f.Close()
			if err != nil || m != d {
				t.Errorf("%s: clone's fs-verity measurement %v, %v", d, m, err)
			}
		}
	}
	mustFsckClean(t, s)

	// A second run finds the extents shared and clones nothing again.
	res, err = s.Dedup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reflinked != 0 || res.AlreadyShared != 2 {
		t.Errorf("second dedup: %+v, want 2 already shared", res)
	}

	// Mounted with verity=require where the store has fs-verity: the clones
	// must be sealed or reading fails.
	mnt := t.TempDir()
	m, err := s.MountImage(ctx, ours.Digest, mnt, erofs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"x": x, "y": y} {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("reading %s through the mount (verity %v): %v", name, verityOn, err)
		}
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}

	// Container storage removes its layer: our objects keep their content.
	cs, err := cstorage.GetStore(so)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := cs.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %v %v", layers, err)
	}
	if err := cs.DeleteLayer(layers[0].ID); err != nil {
		t.Fatal(err)
	}
	cs.Shutdown(false)
	if _, err := os.Stat(layerDir); !os.IsNotExist(err) {
		t.Fatalf("container layer still there: %v", err)
	}
	for d, want := range map[verity.Digest][]byte{dx: x, dy: y} {
		if got, err := os.ReadFile(filepath.Join(s.ImageDir(ours.Digest), d.ObjectPath())); err != nil || !bytes.Equal(got, want) {
			t.Errorf("object %s lost or changed with the container layer: %v", d, err)
		}
	}
	fr := mustFsckClean(t, s)
	if fr.Objects != 3 {
		t.Errorf("fsck checked %d objects, want 3", fr.Objects)
	}
}

// assertExtentsShared checks with FIEMAP that a and b map every byte to
// the same physical extents and that the filesystem flags them shared.
func assertExtentsShared(t *testing.T, a, b string) {
	t.Helper()
	var ext [2][]fileExtent
	for i, p := range []string{a, b} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		ext[i], err = fileExtents(f)
		f.Close()
		if err != nil {
			t.Fatalf("FIEMAP %s: %v", p, err)
		}
	}
	if len(ext[0]) == 0 || len(ext[0]) != len(ext[1]) {
		t.Errorf("%s: %d extents, %s: %d", a, len(ext[0]), b, len(ext[1]))
		return
	}
	for i := range ext[0] {
		x, y := ext[0][i], ext[1][i]
		if x.physical != y.physical || x.logical != y.logical || x.length != y.length {
			t.Errorf("extent %d differs: %+v vs %+v", i, x, y)
		}
		if x.flags&fiemapExtentShared == 0 || y.flags&fiemapExtentShared == 0 {
			t.Errorf("extent %d not flagged shared: %#x %#x", i, x.flags, y.flags)
		}
	}
	if !extentsShared(a, b) {
		t.Errorf("extentsShared(%s, %s) = false", a, b)
	}
}

// envBtrfsModules lists, in load order, the guest paths of the modules
// TestDedupReflinkVerityVM passes in for btrfs (not in vmtest's base set).
const envBtrfsModules = "OBJSTORE_BTRFS_MODULES"

// Reflink and fs-verity together, which the host lacks: in the guest kernel
// (fs-verity built in), on btrfs (reflink and fs-verity), the clones Dedup
// links into the store must be sealed so a verity=require mount reads them.
// The btrfs filesystem is made on the host; its modules come from the
// guest kernel's package that vmtest keeps in its cache.
func TestDedupReflinkVerityVM(t *testing.T) {
	if !vmtest.InGuest() {
		mkfs, err := exec.LookPath("mkfs.btrfs")
		if err != nil {
			t.Skip("mkfs.btrfs not installed (btrfs-progs; make deps)")
		}
		mods, files := btrfsModules(t)
		img := filepath.Join(t.TempDir(), "btrfs.img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 256<<20); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(mkfs, "-q", img).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.btrfs: %v\n%s", err, out)
		}
		vmtest.RunTestInGuest(t, vmtest.Config{
			Disks:     []vmtest.Disk{{Image: img}},
			Files:     files,
			Env:       []string{envBtrfsModules + "=" + strings.Join(mods, ":")},
			MemoryMiB: 1024,
			Timeout:   300 * time.Second,
		})
		return
	}
	for _, m := range strings.Split(os.Getenv(envBtrfsModules), ":") {
		f, err := os.Open(m)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			t.Fatalf("loading %s: %v", m, err)
		}
	}
	whole, other := "/mnt/btrfs", "/mnt/other"
	for _, d := range []string{whole, other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(vmtest.DiskDevice(0), whole, "btrfs", 0, ""); err != nil {
		t.Fatalf("mounting btrfs: %v", err)
	}
	sub := filepath.Join(whole, "other")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(sub, other, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	s, err := Open(context.Background(), filepath.Join(whole, "store"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.VeritySupported() {
		t.Fatal("no fs-verity on btrfs in the guest: the test would not exercise sealing")
	}
	testReflinkDedup(t, s, filepath.Join(other, "graph"), filepath.Join(t.TempDir(), "run"))
}

// btrfsModules unpacks the guest kernel's package from vmtest's cache and
// returns the btrfs module and its dependencies (modprobe --show-depends
// order, decompressed) as guest paths and files for the initramfs.
func btrfsModules(t *testing.T) ([]string, []vmtest.File) {
	t.Helper()
	k, err := vmtest.Prepare(t.Context())
	if err != nil {
		t.Skipf("no guest kernel: %v", err)
	}
	debs, _ := filepath.Glob(filepath.Join(filepath.Dir(k.Dir), "debs", "linux-image-"+k.Version+"_*.deb"))
	if len(debs) == 0 {
		t.Skipf("the guest kernel's package is not in %s/debs (vmtest cache layout changed?)", filepath.Dir(k.Dir))
	}
	for _, tool := range []string{"dpkg-deb", "depmod", "modprobe", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	work := t.TempDir()
	root := filepath.Join(work, "root")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return string(out)
	}
	run("dpkg-deb", "-x", debs[len(debs)-1], root)
	var moddir string
	for _, d := range []string{"usr/lib/modules", "lib/modules"} {
		if p := filepath.Join(root, d, k.Version); dirExists(p) {
			moddir = p
		}
	}
	if moddir == "" {
		t.Fatalf("no modules for %s in %s", k.Version, debs[len(debs)-1])
	}
	base := filepath.Join(work, "base")
	if err := os.MkdirAll(filepath.Join(base, "lib", "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moddir, filepath.Join(base, "lib", "modules", k.Version)); err != nil {
		t.Fatal(err)
	}
	run("depmod", "-b", base, k.Version)
	var mods []string
	var files []vmtest.File
	for _, line := range strings.Split(run("modprobe", "-d", base, "-S", k.Version, "--show-depends", "btrfs"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "insmod" {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(f[1]), ".xz")
		host := filepath.Join(work, fmt.Sprintf("%02d-%s", len(mods), name))
		if strings.HasSuffix(f[1], ".xz") {
			out := run("xz", "-dc", f[1])
			if err := os.WriteFile(host, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		} else if out, err := os.ReadFile(f[1]); err != nil || os.WriteFile(host, out, 0o644) != nil {
			t.Fatalf("copying %s: %v", f[1], err)
		}
		guest := "/lib/modules/dedup/" + filepath.Base(host)
		mods = append(mods, guest)
		files = append(files, vmtest.File{Host: host, Guest: guest})
	}
	if len(mods) == 0 || !strings.HasPrefix(filepath.Base(mods[len(mods)-1]), fmt.Sprintf("%02d-btrfs.ko", len(mods)-1)) {
		t.Fatalf("no btrfs module in %s: %v", k.Version, mods)
	}
	return mods, files
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
