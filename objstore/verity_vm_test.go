package objstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/internal/vmtest"
	"github.com/twinroot/twinroot/verity"
)

// TestStoreVerityVM runs the store on a filesystem with fs-verity, which the
// development host lacks: in the vmtest guest (Debian's kernel), on an ext4
// made with -O verity. It checks that the store finds fs-verity, that every
// object and every image-directory link and image.cfs are sealed with the
// measurement their name promises, that an image mounts with
// verity=require and reads back, that sealed objects refuse writes even to
// root, that a re-import links the cached files' sealed objects without
// opening the files, and that a byte flipped under an object on the block
// device makes reads of that file fail with EIO while the other files still
// read (and that fsck then blames nothing else).
func TestStoreVerityVM(t *testing.T) {
	if !vmtest.InGuest() {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			t.Skip("qemu-system-x86_64 not installed: cannot boot the vmtest guest")
		}
		if _, err := vmtest.Prepare(t.Context()); err != nil {
			t.Skipf("no guest kernel: %v", err)
		}
		vmtest.RunTestInGuest(t, vmtest.Config{
			Disks:   []vmtest.Disk{{Size: 128 << 20, Verity: true}},
			Timeout: 300 * time.Second,
		})
		return
	}
	ctx := context.Background()
	start := time.Now()
	lap := func(what string) {
		t.Logf("%-28s %v", what, time.Since(start).Round(time.Millisecond))
		start = time.Now()
	}
	s, err := Open(ctx, filepath.Join(vmtest.ScratchDir(), "store"), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// 1. The store finds fs-verity on the guest's verity ext4.
	if !s.VeritySupported() {
		t.Fatal("VeritySupported() = false on an ext4 made with -O verity under a kernel with fs-verity")
	}

	// 2. Import a tree; every object, every image link and image.cfs are
	// sealed and measure to their names.
	src := t.TempDir()
	files := map[string][]byte{
		"big":        content(101, 5<<20+4321), // several MiB, several extents of Merkle tree
		"small":      content(102, 100),
		"dir/block":  content(103, 4096),
		"dir/victim": content(104, 3*4096+1), // corrupted on disk at the end
		"dir/x64":    content(105, 64),       // inline (InlineMax)
		"dir/x65":    content(106, 65),       // smallest object
		"copy":       content(102, 100),      // same content as small: one object
		"empty":      nil,
	}
	writeTree(t, src, files)
	if err := os.Link(filepath.Join(src, "dir/block"), filepath.Join(src, "hardlink")); err != nil {
		t.Fatal(err)
	}
	files["hardlink"] = files["dir/block"]
	want := map[verity.Digest]bool{}
	for _, c := range files {
		if len(c) > InlineMax {
			want[verity.DigestBytes(c, s.Algorithm())] = true
		}
	}
	victim := verity.DigestBytes(files["dir/victim"], s.Algorithm())

	res, err := s.ImportDir(ctx, src, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lap("import")
	t.Logf("import: %d files, %d added, %d bytes, image %s", res.Files, res.Added, res.Bytes, res.Digest)
	if res.Added != len(want) {
		t.Errorf("import added %d objects, want %d", res.Added, len(want))
	}
	if got := sealedObjects(t, s); !maps.Equal(got, want) {
		t.Errorf("objects/ holds %d objects, want %d (%v vs %v)", len(got), len(want), got, want)
	}
	checkSealedImage(t, s, res.Digest, want)
	lap("seal checks")

	// 3. Mounted with verity=require, every file reads back.
	mnt := t.TempDir()
	m, err := s.MountImage(ctx, res.Digest, mnt, erofs.MountOptions{Verity: erofs.VerityRequire})
	if err != nil {
		t.Fatalf("MountImage with verity=require: %v", err)
	}
	defer func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	}()
	if opts := mountOptionsOf(t, mnt); !slices.Contains(opts, "verity=require") {
		t.Errorf("overlay at %s mounted with %v, no verity=require", mnt, opts)
	}
	for name, c := range files {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(got, c) {
			t.Errorf("%s through the mount: %d bytes, %v; want %d bytes", name, len(got), err, len(c))
		}
	}
	if a, b := stat(t, filepath.Join(mnt, "hardlink")), stat(t, filepath.Join(mnt, "dir/block")); a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hardlink in the mount: inodes %d and %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	lap("mount and read")

	// 4. Sealed files refuse writes, even to root (the modes alone would
	// not stop root): open for writing and truncate fail with EPERM.
	for _, p := range []string{
		s.ObjectPath(victim),
		filepath.Join(s.ImageDir(res.Digest), victim.ObjectPath()),
		filepath.Join(s.ImageDir(res.Digest), fileImage),
	} {
		for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND} {
			f, err := os.OpenFile(p, flag, 0)
			if err == nil {
				f.Close()
				t.Errorf("%s opened for writing (flags %#x)", p, flag)
			} else if !errors.Is(err, syscall.EPERM) {
				t.Errorf("opening %s for writing (flags %#x): %v, want EPERM", p, flag, err)
			}
		}
		if err := unix.Truncate(p, 1); !errors.Is(err, syscall.EPERM) {
			t.Errorf("truncate %s: %v, want EPERM", p, err)
		}
	}
	if got, err := os.ReadFile(s.ObjectPath(victim)); err != nil || !bytes.Equal(got, files["dir/victim"]) {
		t.Errorf("object changed by the refused writes: %v", err)
	}

	// 5. A re-import of the tree with one new file: the files the import
	// cache knows are linked from objects/ without being opened (fanotify
	// watches them), only the new one is read and added, and the new
	// image's links are all sealed.
	if cache, _ := filepath.Glob(filepath.Join(s.Root(), dirState, "import", "*.cache")); len(cache) != 1 {
		t.Errorf("import cache files: %v, want one", cache)
	}
	files2 := map[string][]byte{"new": content(107, 9000)}
	writeTree(t, src, files2)
	newFile := filepath.Join(src, "new")
	watched := []string{newFile}
	for name, c := range files {
		if len(c) > InlineMax { // inline files are read into the image every time
			watched = append(watched, filepath.Join(src, name))
		}
	}
	w := watchOpens(t, watched)
	want2 := maps.Clone(want)
	want2[verity.DigestBytes(files2["new"], s.Algorithm())] = true
	res2, err := s.ImportDir(ctx, src, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lap("re-import")
	if opened := w.opened(t); !slices.Equal(opened, []string{newFile}) {
		t.Errorf("re-import opened %v; want only %s (the others are in the import cache)", opened, newFile)
	}
	t.Logf("re-import: %d files, %d added, %d bytes, image %s", res2.Files, res2.Added, res2.Bytes, res2.Digest)
	if res2.Added != 1 || res2.Digest == res.Digest {
		t.Errorf("re-import added %d objects (want 1), new image %v", res2.Added, res2.Digest != res.Digest)
	}
	if got := sealedObjects(t, s); !maps.Equal(got, want2) {
		t.Errorf("objects/ after re-import holds %d objects, want %d", len(got), len(want2))
	}
	checkSealedImage(t, s, res2.Digest, want2)
	fr, err := s.Fsck(ctx, FsckOptions{})
	if err != nil || !fr.Clean() || fr.Objects != len(want2) || fr.Images != 2 {
		t.Errorf("fsck before corruption: %+v, %v", fr, err)
	}
	lap("re-import checks and fsck")

	// 6. Flip one byte of the victim's data (its second block) on the block
	// device under the mounted filesystem, drop the caches, and read it
	// again: fs-verity refuses the block with EIO, through the mount and
	// through objects/, while every other file still reads.
	const off = 4096 + 100
	dev := vmtest.DiskDevice(0)
	phys := physicalOffset(t, s.ObjectPath(victim), off)
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := d.ReadAt(b, phys); err != nil {
		t.Fatal(err)
	}
	if b[0] != files["dir/victim"][off] {
		t.Fatalf("%s at %d holds %#x, the object's byte %d is %#x: wrong physical offset", dev, phys, b[0], off, files["dir/victim"][off])
	}
	b[0] = ^b[0]
	if _, err := d.WriteAt(b, phys); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, "dir/victim")); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the corrupted file through the verity=require mount: %v, want EIO", err)
	}
	for name, c := range files {
		if name == "dir/victim" {
			continue
		}
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, c) {
			t.Errorf("intact %s after the corruption: %d bytes, %v", name, len(got), err)
		}
	}
	// The object itself: the flipped block fails, the others read.
	f, err := os.Open(s.ObjectPath(victim))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for blk := range 4 {
		n, err := f.ReadAt(buf, int64(blk)*4096)
		wantData := files["dir/victim"][blk*4096 : min((blk+1)*4096, len(files["dir/victim"]))]
		switch {
		case blk == off/4096 && !errors.Is(err, syscall.EIO):
			t.Errorf("object block %d (corrupted): %v, want EIO", blk, err)
		case blk != off/4096 && (!bytes.Equal(buf[:n], wantData) || (err != nil && n != len(wantData))):
			t.Errorf("object block %d (intact): %d bytes, %v", blk, n, err)
		}
	}
	f.Close()
	lap("corruption")

	// 7. fsck after the corruption: whatever it reports concerns the victim
	// only, as corrupt-object. It does not yet report the victim at all:
	// contentDigest takes a sealed file's measurement, which lives in the
	// verity metadata the flipped data byte does not touch, and reads no
	// data, so the kernel never checks the blocks. Once fsck reads sealed
	// files, the Logf below should become an Errorf.
	fr, err = s.Fsck(ctx, FsckOptions{})
	if err != nil {
		t.Fatalf("fsck after corruption: %v", err)
	}
	for _, p := range fr.Problems {
		t.Logf("fsck after corruption: %s", p)
		if p.Object != victim || p.Kind != ProblemCorruptObject {
			t.Errorf("fsck after corruption: unexpected problem %s (object %s)", p, p.Object)
		}
	}
	if !slices.ContainsFunc(fr.Problems, func(p Problem) bool { return p.Object == victim }) {
		t.Errorf("fsck found no problem with the corrupted object %s (%d objects checked)", victim, fr.Objects)
	}
	lap("fsck")
}

// sealedObjects lists objects/ and checks that each object has fs-verity
// enabled and measures to its name.
func sealedObjects(t *testing.T, s *Store) map[verity.Digest]bool {
	t.Helper()
	got := map[verity.Digest]bool{}
	objDir := filepath.Join(s.Root(), dirObjects)
	fans, err := os.ReadDir(objDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, fan := range fans {
		names, err := readNames(filepath.Join(objDir, fan.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			d, ok := s.parseObjectName(fan.Name(), n)
			if !ok {
				t.Errorf("objects/%s/%s: not an object name", fan.Name(), n)
				continue
			}
			checkSealed(t, filepath.Join(objDir, fan.Name(), n), d)
			got[d] = true
		}
	}
	return got
}

// checkSealedImage checks image d's directory: image.cfs is sealed and
// measures to d, the directory holds exactly a link of each object of want,
// each sealed, measuring to its name and the same inode as in objects/.
func checkSealedImage(t *testing.T, s *Store, d verity.Digest, want map[verity.Digest]bool) {
	t.Helper()
	dir := s.ImageDir(d)
	if filepath.Base(dir) != d.Hex() {
		t.Fatalf("image directory %s is not named by the digest %s", dir, d.Hex())
	}
	checkSealed(t, filepath.Join(dir, fileImage), d)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[verity.Digest]bool{}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		names, err := readNames(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			od, ok := s.parseObjectName(e.Name(), n)
			if !ok {
				t.Errorf("%s/%s/%s: not an object name", dir, e.Name(), n)
				continue
			}
			p := filepath.Join(dir, e.Name(), n)
			checkSealed(t, p, od)
			if a, b := stat(t, p), stat(t, s.ObjectPath(od)); a.Ino != b.Ino {
				t.Errorf("%s: inode %d, objects/ has %d", p, a.Ino, b.Ino)
			}
			got[od] = true
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("image %s links %d objects, want %d", d, len(got), len(want))
	}
}

// checkSealed checks that the file at p has fs-verity enabled and that the
// kernel measures it as d.
func checkSealed(t *testing.T, p string, d verity.Digest) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if on, err := verity.IsEnabled(f); err != nil || !on {
		t.Errorf("%s: fs-verity enabled = %v, %v", p, on, err)
	}
	m, err := verity.Measure(f)
	if err != nil {
		t.Errorf("%s: %v", p, err)
	} else if m != d {
		t.Errorf("%s: kernel measures %s, name says %s", p, m, d)
	}
}

// physicalOffset returns the byte offset on the filesystem's device of
// byte off of the file at p (FIEMAP).
func physicalOffset(t *testing.T, p string, off uint64) int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exts, err := fileExtents(f)
	if err != nil {
		t.Fatalf("FIEMAP %s: %v", p, err)
	}
	for _, e := range exts {
		if e.logical <= off && off < e.logical+e.length {
			if e.flags&fiemapExtentVague != 0 {
				t.Fatalf("%s: extent %+v has no usable physical address", p, e)
			}
			return int64(e.physical + off - e.logical)
		}
	}
	t.Fatalf("%s: no extent holds byte %d: %+v", p, off, exts)
	return 0
}

// mountOptionsOf returns the superblock options of the mount at target
// from /proc/self/mountinfo.
func mountOptionsOf(t *testing.T, target string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[4] != target {
			continue
		}
		for i, x := range f {
			if x == "-" && i+3 < len(f) {
				return strings.Split(f[i+3], ",")
			}
		}
	}
	t.Fatalf("%s is not in /proc/self/mountinfo", target)
	return nil
}

// openWatch reports which files are opened, through fanotify inode marks.
type openWatch struct {
	fd    int
	names map[uint64]string // inode → path
}

// watchOpens starts watching paths for FAN_OPEN; the watch ends with the test.
func watchOpens(t *testing.T, paths []string) *openWatch {
	t.Helper()
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		t.Fatalf("fanotify_init: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	w := &openWatch{fd: fd, names: map[uint64]string{}}
	for _, p := range paths {
		if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_OPEN, unix.AT_FDCWD, p); err != nil {
			t.Fatalf("fanotify_mark %s: %v", p, err)
		}
		w.names[stat(t, p).Ino] = p
	}
	return w
}

// opened drains the events and returns the watched paths opened since the
// last call (a hardlinked inode under one of its names).
func (w *openWatch) opened(t *testing.T) []string {
	t.Helper()
	seen := map[string]bool{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatalf("reading fanotify events: %v", err)
		}
		// struct fanotify_event_metadata: event_len u32, vers u8,
		// reserved u8, metadata_len u16, mask u64, fd s32, pid s32.
		for off := 0; off+24 <= n; {
			ne := binary.NativeEndian
			size := int(ne.Uint32(buf[off:]))
			if size < 24 {
				t.Fatalf("fanotify event of %d bytes", size)
			}
			if fd := int(int32(ne.Uint32(buf[off+16:]))); fd >= 0 {
				var sb unix.Stat_t
				if err := unix.Fstat(fd, &sb); err == nil {
					if p, ok := w.names[sb.Ino]; ok {
						seen[p] = true
					}
				}
				unix.Close(fd)
			}
			off += size
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
