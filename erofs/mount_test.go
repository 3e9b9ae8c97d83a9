package erofs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// requireRoot skips tests that mount, create devices or chown.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to mount and create devices (euid %d)", os.Geteuid())
	}
}

// treeSpec tunes makeRichTree.
type treeSpec struct {
	bigDirEntries int   // entries in the many-entry directory
	sparseSize    int64 // apparent size of the sparse file
	noHardlinks   bool  // mkcomposefs turns hardlinks into copies
}

// makeRichTree fills dir with every file type and the edge cases the
// composefs writer and mount must keep: inline-size limits, large and
// sparse files, hardlinks, owners, special mode bits, xattrs (user,
// trusted, security.capability, and a trusted.overlay.* one that the
// image must escape), 255-byte names, deep paths, a many-entry directory,
// and nanosecond mtimes on everything (set last, leaves first).
func makeRichTree(t testing.TB, dir string, spec treeSpec) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	write := func(rel string, b []byte, perm os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, b, perm))
		must(os.Chmod(p, perm))
	}
	for _, n := range []int{0, 1, 64, 65, 4095, 4096, 4097, 8192, 1 << 20} {
		write(fmt.Sprintf("sizes/file-%d", n), data(n), 0o644)
	}
	write("sizes/large", data(5<<20+123), 0o600)
	// Identical content twice: one object serves both.
	same := data(10000)
	write("dup/a", same, 0o644)
	write("dup/b", same, 0o640)

	// Sparse: data at both ends of a mostly-hole file.
	sp, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = sp.Write(data(5000))
	must(err)
	_, err = sp.WriteAt(data(3000), spec.sparseSize-3000)
	must(err)
	must(sp.Close())

	// Modes and owners.
	write("modes/setuid", data(100), 0o4755)
	write("modes/setgid", data(10), 0o2711)
	write("modes/none", data(70), 0)
	must(os.Mkdir(filepath.Join(dir, "modes/sticky"), 0o755))
	must(os.Chmod(filepath.Join(dir, "modes/sticky"), 0o1777|os.ModeSticky))
	write("owners/u1234", data(200), 0o644)
	must(os.Lchown(filepath.Join(dir, "owners/u1234"), 1234, 5678))
	write("owners/big-ids", data(3), 0o644)
	must(os.Lchown(filepath.Join(dir, "owners/big-ids"), 100000, 4000000000))

	// Special files.
	must(os.MkdirAll(filepath.Join(dir, "dev"), 0o755))
	must(unix.Mknod(filepath.Join(dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(filepath.Join(dir, "dev/bigminor"), unix.S_IFCHR|0o600, int(unix.Mkdev(240, 70000))))
	must(unix.Mknod(filepath.Join(dir, "dev/loopX"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 200))))
	must(unix.Mkfifo(filepath.Join(dir, "dev/fifo"), 0o644))
	// A real socket: bound at a short path, then moved into the tree.
	short, err := os.MkdirTemp(filepath.Dir(dir), "sk") // same file system, short path
	must(err)
	defer os.RemoveAll(short)
	l, err := net.Listen("unix", filepath.Join(short, "s"))
	must(err)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	must(os.Rename(filepath.Join(short, "s"), filepath.Join(dir, "dev/socket")))

	// Symlinks, dangling and long.
	must(os.MkdirAll(filepath.Join(dir, "links"), 0o755))
	must(os.Symlink("../sizes/file-1", filepath.Join(dir, "links/rel")))
	must(os.Symlink("/nonexistent/target", filepath.Join(dir, "links/dangling")))
	must(os.Symlink("x", filepath.Join(dir, "links/one")))
	must(os.Symlink(strings.Repeat("d/", 2047)+"e", filepath.Join(dir, "links/long")))
	must(os.Lchown(filepath.Join(dir, "links/rel"), 42, 43))

	// Hardlinks: one external file with three names, one inline with two.
	if !spec.noHardlinks {
		write("hard/one", data(9000), 0o644)
		must(os.MkdirAll(filepath.Join(dir, "hard/sub"), 0o755))
		must(os.Link(filepath.Join(dir, "hard/one"), filepath.Join(dir, "hard/sub/two")))
		must(os.Link(filepath.Join(dir, "hard/one"), filepath.Join(dir, "zz-three")))
		write("hard/small", data(10), 0o600)
		must(os.Link(filepath.Join(dir, "hard/small"), filepath.Join(dir, "hard/sub/small2")))
	}

	// Xattrs.
	xp := filepath.Join(dir, "xattrs/file")
	write("xattrs/file", data(300), 0o755)
	capv := make([]byte, 20) // VFS_CAP_REVISION_2, cap_net_bind_service permitted
	binary.LittleEndian.PutUint32(capv[0:], 0x02000000)
	binary.LittleEndian.PutUint32(capv[4:], 1<<10)
	must(unix.Lsetxattr(xp, "security.capability", capv, 0))
	must(unix.Lsetxattr(xp, "user.empty", nil, 0))
	must(unix.Lsetxattr(xp, "user.bin", []byte{0, 1, 2, 255, '=', ' ', '\n'}, 0))
	must(unix.Lsetxattr(xp, "user.big", data(3000), 0))
	must(unix.Lsetxattr(xp, "trusted.plain", []byte("t"), 0))
	must(unix.Lsetxattr(xp, "trusted.overlay.foo", []byte("escaped"), 0))
	must(unix.Lsetxattr(filepath.Join(dir, "xattrs"), "user.dir", []byte("on a dir"), 0))
	// A POSIX ACL (the image then gets the HAS_ACL flag: no "noacl").
	acl := []byte{2, 0, 0, 0} // POSIX_ACL_XATTR_VERSION
	for _, e := range [][3]uint32{{0x01, 6, 0xffffffff}, {0x02, 4, 1000}, {0x04, 4, 0xffffffff}, {0x10, 4, 0xffffffff}, {0x20, 0, 0xffffffff}} {
		acl = binary.LittleEndian.AppendUint16(acl, uint16(e[0]))
		acl = binary.LittleEndian.AppendUint16(acl, uint16(e[1]))
		acl = binary.LittleEndian.AppendUint32(acl, e[2])
	}
	write("xattrs/acl", data(500), 0o640)
	must(unix.Lsetxattr(filepath.Join(dir, "xattrs/acl"), "system.posix_acl_access", acl, 0))
	for i := 0; i < 5; i++ { // a shared pair
		p := filepath.Join(dir, fmt.Sprintf("xattrs/shared-%d", i))
		write(fmt.Sprintf("xattrs/shared-%d", i), data(i*50), 0o644)
		must(unix.Lsetxattr(p, "user.shared", []byte("same value"), 0))
	}

	// Long names and deep paths (kept under PATH_MAX).
	long := strings.Repeat("n", MaxNameLen)
	write("names/"+long, data(80), 0o644)
	must(os.MkdirAll(filepath.Join(dir, "names", strings.Repeat("m", 254)+"d"), 0o755))
	for _, name := range []string{" space", "-dash", "new\nline", "tab\there", "ünïcödé", "=eq", "\x01ctl", "back\\slash"} {
		write("names/"+name, data(3), 0o644)
	}
	deep := "deep"
	for i := 0; i < 30; i++ {
		deep = filepath.Join(deep, fmt.Sprintf("%02d-%s", i, strings.Repeat("p", 90)))
	}
	write(filepath.Join(deep, "leaf"), data(100), 0o644)

	// A directory with many entries (several directory blocks).
	big := filepath.Join(dir, "many")
	must(os.Mkdir(big, 0o755))
	for i := 0; i < spec.bigDirEntries; i++ {
		must(os.WriteFile(filepath.Join(big, fmt.Sprintf("entry-%05d-%s", i, strings.Repeat("x", i%40))), data(i%130), 0o644))
	}

	// Nanosecond mtimes, children before parents.
	var paths []string
	must(filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		ts := unix.Timespec{Sec: int64(1_600_000_000 + rng.IntN(100_000_000)), Nsec: int64(rng.IntN(1_000_000_000))}
		if i%7 == 0 {
			ts.Nsec = 0
		}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// xattrMap returns all xattrs of path (not following symlinks).
func xattrMap(t testing.TB, path string) map[string]string {
	t.Helper()
	out := map[string]string{}
	sz, err := unix.Llistxattr(path, nil)
	if err != nil || sz == 0 {
		return out
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(path, buf)
	if err != nil {
		t.Fatalf("llistxattr %s: %v", path, err)
	}
	for _, name := range strings.Split(string(buf[:sz]), "\x00") {
		if name == "" {
			continue
		}
		n, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			t.Fatalf("lgetxattr %s %q: %v", path, name, err)
		}
		v := make([]byte, n)
		n, err = unix.Lgetxattr(path, name, v)
		if err != nil {
			t.Fatalf("lgetxattr %s %q: %v", path, name, err)
		}
		out[name] = string(v[:n])
	}
	return out
}

func fileHash(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// compareTrees checks that every path of src exists in mnt with the same
// type, mode, owner, nanosecond mtime, rdev, size, xattrs, symlink target
// and content, nothing more, and that hardlinks share an inode in mnt.
// It returns how many paths it compared.
func compareTrees(t testing.TB, src, mnt string) int {
	t.Helper()
	srcGroups := map[uint64]string{} // source ino -> first path
	mntIno := map[string]uint64{}    // first path -> mount ino
	seenMnt := map[uint64]string{}
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		mp := filepath.Join(mnt, rel)
		var a, b unix.Stat_t
		if err := unix.Lstat(p, &a); err != nil {
			return err
		}
		if err := unix.Lstat(mp, &b); err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		n++
		typ := a.Mode & unix.S_IFMT
		if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid || a.Mtim != b.Mtim {
			t.Errorf("%s: mode %o uid %d gid %d mtime %v, source %o %d %d %v", rel, b.Mode, b.Uid, b.Gid, b.Mtim, a.Mode, a.Uid, a.Gid, a.Mtim)
		}
		if typ != unix.S_IFDIR && (a.Size != b.Size || a.Nlink != b.Nlink) {
			t.Errorf("%s: size %d nlink %d, source %d %d", rel, b.Size, b.Nlink, a.Size, a.Nlink)
		}
		if typ == unix.S_IFDIR && a.Nlink != b.Nlink {
			t.Errorf("%s: directory nlink %d, source %d", rel, b.Nlink, a.Nlink)
		}
		if (typ == unix.S_IFCHR || typ == unix.S_IFBLK) && a.Rdev != b.Rdev {
			t.Errorf("%s: rdev %#x, source %#x", rel, b.Rdev, a.Rdev)
		}
		xa, xb := xattrMap(t, p), xattrMap(t, mp)
		if fmt.Sprint(xa) != fmt.Sprint(xb) {
			t.Errorf("%s: xattrs %q, source %q", rel, xb, xa)
		}
		switch typ {
		case unix.S_IFLNK:
			ta, _ := os.Readlink(p)
			tb, err := os.Readlink(mp)
			if err != nil || ta != tb {
				t.Errorf("%s: link target %q (%v), source %q", rel, tb, err, ta)
			}
		case unix.S_IFREG:
			if fileHash(t, p) != fileHash(t, mp) {
				t.Errorf("%s: content differs", rel)
			}
		}
		if typ != unix.S_IFDIR {
			if first, ok := srcGroups[a.Ino]; ok {
				if mntIno[first] != b.Ino {
					t.Errorf("%s: inode %d in the mount, but its hardlink %s has %d", rel, b.Ino, first, mntIno[first])
				}
			} else {
				srcGroups[a.Ino] = rel
				mntIno[rel] = b.Ino
				if other, ok := seenMnt[b.Ino]; ok {
					t.Errorf("%s and %s share inode %d in the mount but not in the source", rel, other, b.Ino)
				}
				seenMnt[b.Ino] = rel
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing extra in the mount.
	err = filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(mnt, p)
		if _, err := os.Lstat(filepath.Join(src, rel)); err != nil {
			t.Errorf("%s: in the mount only", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// buildDirImage makes an image of src with FromDir (objects into store) and
// Write, and returns its path.
func buildDirImage(t testing.TB, src, store string) string {
	t.Helper()
	root, err := FromDir(context.Background(), src, FromDirOptions{DigestStore: store})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "image.cfs")
	if err := os.WriteFile(img, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestMountRichTree builds an image of a tree with every file type and
// edge case, mounts it for real and compares every path with the source.
func TestMountRichTree(t *testing.T) {
	requireRoot(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	makeRichTree(t, src, treeSpec{bigDirEntries: 10000, sparseSize: 64 << 20})
	store := filepath.Join(t.TempDir(), "objects")
	img := buildDirImage(t, src, store)

	if out, err := exec.Command("fsck.erofs", img).CombinedOutput(); err != nil {
		t.Errorf("fsck.erofs rejects the image: %v\n%s", err, out)
	}

	// The store holds exactly the external files' contents, named by digest.
	objs := 0
	err := filepath.WalkDir(store, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		objs++
		if strings.HasPrefix(d.Name(), ".tmp") {
			t.Errorf("temp file left in the store: %s", p)
		}
		st, _ := d.Info()
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", p, st.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if objs < 100 {
		t.Errorf("only %d objects in the store", objs)
	}

	mnt := t.TempDir()
	if err := Mount(context.Background(), img, store, mnt, MountOptions{Verity: VerityOff}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(mnt); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	n := compareTrees(t, src, mnt)
	t.Logf("compared %d paths, %d objects", n, objs)
	if im, err := OpenFile(img); err != nil || !im.HasACL() {
		t.Errorf("image has no HAS_ACL flag (%v)", err)
	} else {
		im.Close()
	}

	// The mount is read-only and its private EROFS mount is not visible.
	if err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644); err == nil {
		t.Error("created a file in the read-only mount")
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, " - erofs ") && strings.Contains(line, img) {
			t.Errorf("EROFS mount visible: %s", line)
		}
	}
}

// TestMountMissingObject: a file whose object is missing fails to open
// (the rest of the image still works).
func TestMountMissingObject(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "a"), bytes.Repeat([]byte("a"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "b"), bytes.Repeat([]byte("b"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	img := buildDirImage(t, src, store)
	root, _ := FromDir(context.Background(), src, FromDirOptions{})
	a, _ := root.Lookup("/a")
	if err := os.Remove(filepath.Join(store, a.Payload)); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	if err := Mount(context.Background(), img, store, mnt, MountOptions{Verity: VerityOff}); err != nil {
		t.Fatal(err)
	}
	defer Unmount(mnt)
	if _, err := os.ReadFile(filepath.Join(mnt, "a")); err == nil {
		t.Error("reading a file whose object is missing succeeded")
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "b")); err != nil || len(b) != 1000 {
		t.Errorf("b: %d bytes, %v", len(b), err)
	}
}

// TestMountErrors: bad inputs fail with clear errors and leave nothing
// mounted.
func TestMountErrors(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	notImage := filepath.Join(dir, "not-an-image")
	if err := os.WriteFile(notImage, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	img := buildDirImage(t, src, t.TempDir())
	mnt := t.TempDir()
	tests := []struct {
		name, image, objects, target string
	}{
		{"missing image", filepath.Join(dir, "nope"), dir, mnt},
		{"not an image", notImage, dir, mnt},
		{"missing objects", img, filepath.Join(dir, "nope"), mnt},
		{"objects not a dir", img, notImage, mnt},
		{"missing target", img, dir, filepath.Join(dir, "nope")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Mount(context.Background(), tc.image, tc.objects, tc.target, MountOptions{Verity: VerityOff})
			if err == nil {
				Unmount(tc.target)
				t.Fatal("mount succeeded")
			}
			t.Log(err)
		})
	}
	if err := Unmount(mnt); err == nil {
		t.Error("something was mounted")
	}
}

// TestVerityAutoWithoutKernelSupport: on a filesystem without fs-verity,
// auto mode mounts with verity off and says so in a warning.
func TestVerityAutoWarns(t *testing.T) {
	requireRoot(t)
	store := t.TempDir()
	if ok, _ := verityWorks(store); ok {
		t.Skip("fs-verity works here; the warning path is not taken")
	}
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), make([]byte, 5000), 0o644)
	img := buildDirImage(t, src, store)
	var logBuf bytes.Buffer
	mnt := t.TempDir()
	err := Mount(context.Background(), img, store, mnt, MountOptions{Logger: newTestLogger(&logBuf)})
	if err != nil {
		t.Fatal(err)
	}
	defer Unmount(mnt)
	if !strings.Contains(logBuf.String(), "WITHOUT verity") {
		t.Errorf("no warning logged: %q", logBuf.String())
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || len(b) != 5000 {
		t.Errorf("f: %d bytes, %v", len(b), err)
	}
}

func TestParseVerityMode(t *testing.T) {
	for _, s := range []string{"auto", "require", "on", "off"} {
		m, err := ParseVerityMode(s)
		if err != nil || m.String() != s {
			t.Errorf("%s: %v %v", s, m, err)
		}
	}
	if _, err := ParseVerityMode("yes"); err == nil {
		t.Error("accepted yes")
	}
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}

// TestMountLoopFallback runs the loop-device path that Mount takes on
// kernels without file-backed EROFS (ENOTBLK): attach the image to a loop
// device, mount EROFS from it, build the overlay, read a file.
func TestMountLoopFallback(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	want := bytes.Repeat([]byte("loop"), 3000)
	if err := os.WriteFile(filepath.Join(src, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	img := buildDirImage(t, src, store)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	loop, err := attachLoop(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loop device %s", loop.Name())
	mfd, err := fsmountErofs(loop.Name(), false)
	loop.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	mnt := t.TempDir()
	err = mountOverlay("/proc/self/fd/"+fmt.Sprint(mfd), store, mnt, VerityOff, newTestLogger(io.Discard))
	if errors.Is(err, unix.EINVAL) {
		err = mountOverlayViaDir(mfd, store, mnt, VerityOff, newTestLogger(io.Discard))
	}
	if err != nil {
		t.Fatal(err)
	}
	defer Unmount(mnt)
	if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("f: %d bytes, %v", len(got), err)
	}
}

// countingTB counts Errorf calls instead of failing.
type countingTB struct {
	testing.TB
	errs int
}

func (c *countingTB) Errorf(format string, args ...any) { c.errs++ }
func (c *countingTB) Helper()                           {}

// TestCompareTreesDetects shows that compareTrees, which the mount tests
// rely on, notices a changed xattr, content and mode.
func TestCompareTreesDetects(t *testing.T) {
	requireRoot(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	makeRichTree(t, src, treeSpec{bigDirEntries: 10, sparseSize: 1 << 20})
	store := t.TempDir()
	img := buildDirImage(t, src, store)
	mnt := t.TempDir()
	if err := Mount(context.Background(), img, store, mnt, MountOptions{Verity: VerityOff}); err != nil {
		t.Fatal(err)
	}
	defer Unmount(mnt)
	if c := (&countingTB{TB: t}); compareTrees(c, src, mnt) > 0 && c.errs != 0 {
		t.Fatalf("%d differences before any change", c.errs)
	}
	if err := unix.Lsetxattr(filepath.Join(src, "xattrs/file"), "user.new", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sizes/file-65"), make([]byte, 65), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "modes/setgid"), 0o711); err != nil {
		t.Fatal(err)
	}
	c := &countingTB{TB: t}
	compareTrees(c, src, mnt)
	if c.errs < 3 {
		t.Errorf("compareTrees found %d of 3 changes", c.errs)
	}
}
