package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/internal/testshared"

	"golang.org/x/sys/unix"
)

var composefsVectors = testshared.Path("vectors", "composefs")

// gunzipTo writes the decompressed .gz file src to dst.
func gunzipTo(t *testing.T, src, dst string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Skipf("vector missing: %v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// TestImageCreateFromFile: image create --from-file gives the reference
// image (its published SHA-256), from a path or stdin, to a path or
// stdout; image dump --exact-hardlinks | image create --from-file gives it
// back; and
// image digest / --print-digest agree with `fsverity digest`.
func TestImageCreateFromFile(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"gen-1002", "gen-1033"} {
		t.Run(name, func(t *testing.T) {
			dump := filepath.Join(dir, name+".dump")
			gunzipTo(t, filepath.Join(composefsVectors, name+".dump.gz"), dump)
			want, err := os.ReadFile(filepath.Join(composefsVectors, name+".dump.gz.sha256"))
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, name+".cfs")
			code, stdout, stderr := runCLI(t, "image", "create", "--from-file", "--print-digest", dump, out)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if got := sha256File(t, out); got != strings.Fields(string(want))[0] {
				t.Errorf("image sha256 %s, reference %s", got, want)
			}
			fsv, err := exec.Command("fsverity", "digest", "--compact", out).Output()
			if err != nil {
				t.Fatal(err)
			}
			if stdout != string(fsv) {
				t.Errorf("--print-digest %q, fsverity digest %q", stdout, fsv)
			}
			if code, d, _ := runCLI(t, "image", "digest", out); code != 0 || d != string(fsv) {
				t.Errorf("image digest: exit %d, %q, want %q", code, d, fsv)
			}
			// Round trip through image dump, via the real binary's stdin/stdout.
			code, dumped, stderr := runCLI(t, "image", "dump", "--exact-hardlinks", out)
			if code != 0 {
				t.Fatalf("dump: exit %d: %s", code, stderr)
			}
			again := filepath.Join(dir, name+".again.dump")
			if err := os.WriteFile(again, []byte(dumped), 0o644); err != nil {
				t.Fatal(err)
			}
			code, img, stderr := runCLI(t, "image", "create", "--from-file", again, "-")
			if code != 0 {
				t.Fatalf("create from dump: exit %d: %s", code, stderr)
			}
			if fmt.Sprintf("%x", sha256.Sum256([]byte(img))) != strings.Fields(string(want))[0] {
				t.Error("image dump | image create gives a different image")
			}
		})
	}
}

// TestImageCreateMount creates an image from a directory through the CLI
// with --digest-store, mounts it with the CLI and compares the mount with
// the source; then unmounts it.
func TestImageCreateMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("needs root to mount (euid %d)", os.Geteuid())
	}
	src := filepath.Join(t.TempDir(), "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "d/e"), 0o750))
	for i, n := range []int{0, 1, 64, 65, 4096, 70000} {
		must(os.WriteFile(filepath.Join(src, fmt.Sprintf("d/f%d", i)), bytes.Repeat([]byte{byte('a' + i)}, n), 0o644))
	}
	must(os.Link(filepath.Join(src, "d/f5"), filepath.Join(src, "d/e/f5-link")))
	must(os.Symlink("../f1", filepath.Join(src, "d/e/sym")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	must(unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Lsetxattr(filepath.Join(src, "d/f4"), "user.k", []byte("v"), 0))
	must(os.Chown(filepath.Join(src, "d/f3"), 17, 18))

	store := filepath.Join(t.TempDir(), "objects")
	out := filepath.Join(t.TempDir(), "img.cfs")
	code, digest, stderr := runCLI(t, "image", "create", "--digest-store", store, "--print-digest", src, out)
	if code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	if len(strings.TrimSpace(digest)) != 64 {
		t.Errorf("digest %q", digest)
	}
	if o, err := exec.Command("fsck.erofs", out).CombinedOutput(); err != nil {
		t.Errorf("fsck.erofs: %v\n%s", err, o)
	}
	mnt := t.TempDir()
	code, _, stderr = runCLI(t, "image", "mount", "--verity", "off", out, store, mnt)
	if code != 0 {
		t.Fatalf("mount: exit %d: %s", code, stderr)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, 0)
		}
	}()
	n := 0
	must(filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		mp := filepath.Join(mnt, rel)
		var a, b unix.Stat_t
		must(unix.Lstat(p, &a))
		if err := unix.Lstat(mp, &b); err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		n++
		if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid || a.Mtim != b.Mtim || a.Rdev != b.Rdev {
			t.Errorf("%s: stat differs: %+v vs source %+v", rel, b, a)
		}
		if d.Type().IsRegular() {
			x, _ := os.ReadFile(p)
			y, err := os.ReadFile(mp)
			if err != nil || !bytes.Equal(x, y) {
				t.Errorf("%s: content differs (%v)", rel, err)
			}
		}
		return nil
	}))
	var a, b unix.Stat_t
	must(unix.Lstat(filepath.Join(mnt, "d/f5"), &a))
	must(unix.Lstat(filepath.Join(mnt, "d/e/f5-link"), &b))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hardlink: inodes %d %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if n != 13 {
		t.Errorf("compared %d paths", n)
	}
	code, _, stderr = runCLI(t, "image", "umount", mnt)
	if code != 0 {
		t.Fatalf("umount: exit %d: %s", code, stderr)
	}
	mounted = false
	if code, _, _ := runCLI(t, "image", "umount", mnt); code != 1 {
		t.Errorf("second umount: exit %d, want 1", code)
	}
}

// TestImageUsage checks exit codes of bad invocations.
func TestImageUsage(t *testing.T) {
	dir := t.TempDir()
	notImage := filepath.Join(dir, "x")
	os.WriteFile(notImage, []byte("not an image"), 0o644)
	tests := []struct {
		args []string
		code int
	}{
		{[]string{"image", "create"}, exitUsage},
		{[]string{"image", "create", dir}, exitUsage},
		{[]string{"image", "create", "--from-file", "--digest-store", dir, "a", "b"}, exitUsage},
		{[]string{"image", "create", "--max-version", "2", dir, "-"}, exitUsage},
		{[]string{"image", "create", "-", "-"}, exitUsage},
		{[]string{"image", "create", "--bogus", dir, "-"}, exitUsage},
		{[]string{"image", "create", filepath.Join(dir, "missing"), filepath.Join(dir, "out")}, exitFailure},
		{[]string{"image", "create", "--from-file", notImage, filepath.Join(dir, "out")}, exitFailure},
		{[]string{"image", "mount", "--verity", "maybe", "a", "b", "c"}, exitUsage},
		{[]string{"image", "mount", "a", "b"}, exitUsage},
		{[]string{"image", "dump", notImage}, exitFailure},
		{[]string{"image", "dump"}, exitUsage},
		{[]string{"image", "digest", notImage}, exitFailure},
		{[]string{"image", "umount"}, exitUsage},
		{[]string{"image", "frobnicate"}, exitUsage},
	}
	for _, tc := range tests {
		code, _, stderr := runCLI(t, tc.args...)
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d (%s)", tc.args, code, tc.code, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Error("a failed create left its output")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
	for _, verb := range []string{"create", "dump", "digest", "mount", "umount"} {
		if code, out, _ := runCLI(t, "image", verb, "--help"); code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("image %s --help: exit %d", verb, code)
		}
	}
}
