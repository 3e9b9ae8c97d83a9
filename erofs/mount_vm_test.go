package erofs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/vmtest"
	"github.com/twinroot/twinroot/verity"
)

// TestMountVerityVM runs in a QEMU guest whose kernel has fs-verity, on an
// ext4 made with the verity feature: FromDir with a digest store enables
// fs-verity on every object (with the digest the image records), the image
// mounts with verity=require (and auto picks require) and every file
// reads back; then an object replaced by same-size different content,
// with or without fs-verity of its own, makes opening that file fail with
// EIO while the others still read.
func TestMountVerityVM(t *testing.T) {
	if !vmtest.InGuest() {
		vmtest.RunTestInGuest(t, vmtest.Config{Disks: []vmtest.Disk{{Size: 128 << 20, Verity: true}}})
		return
	}
	ctx := context.Background()
	dir := vmtest.ScratchDir()
	src := filepath.Join(dir, "src")
	files := map[string][]byte{
		"inline":     []byte("ten bytes!"),
		"small":      bytes.Repeat([]byte("s"), 100),
		"block":      bytes.Repeat([]byte("b"), 4096),
		"sub/medium": bytes.Repeat([]byte("m"), 70000),
		"sub/large":  bytes.Repeat([]byte("0123456789"), 200000),
		"victim":     bytes.Repeat([]byte("v"), 9000),
		"victim2":    bytes.Repeat([]byte("w"), 9000),
	}
	for name, c := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(src, "sub/medium"), filepath.Join(src, "hardlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/large", filepath.Join(src, "symlink")); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "objects")
	root, err := FromDir(ctx, src, FromDirOptions{DigestStore: store})
	if err != nil {
		t.Fatal(err)
	}
	// Every object has fs-verity, measuring to the digest in the tree.
	err = root.Walk(func(n *Node) error {
		if n.Link != nil || n.Payload == "" {
			return nil
		}
		f, err := os.Open(filepath.Join(store, n.Payload))
		if err != nil {
			return err
		}
		defer f.Close()
		d, err := verity.Measure(f)
		if err != nil {
			return err
		}
		if d != n.Digest {
			t.Errorf("%s: object measures %s, tree has %s", n.Path(), d, n.Digest)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "image.cfs")
	if err := os.WriteFile(img, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, err := verityWorks(store); !ok {
		t.Fatalf("fs-verity probe fails on the verity ext4: %v", err)
	}

	mnt := filepath.Join(os.TempDir(), "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	readAll := func(mode VerityMode) {
		t.Helper()
		if err := Mount(ctx, img, store, mnt, MountOptions{Verity: mode}); err != nil {
			t.Fatalf("mount verity=%s: %v", mode, err)
		}
		defer func() {
			if err := Unmount(mnt); err != nil {
				t.Errorf("unmount: %v", err)
			}
		}()
		if mode == VerityAuto && !strings.Contains(mountOptions(t, mnt), "verity=require") {
			t.Errorf("auto did not pick verity=require: %s", mountOptions(t, mnt))
		}
		for name, want := range files {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("verity=%s: %s: %d bytes, %v", mode, name, len(got), err)
			}
		}
		if got, err := os.ReadFile(filepath.Join(mnt, "symlink")); err != nil || !bytes.Equal(got, files["sub/large"]) {
			t.Errorf("symlink: %v", err)
		}
	}
	readAll(VerityRequire)
	readAll(VerityAuto)

	// Tamper: same size, different content. victim's object loses
	// fs-verity; victim2's gets fs-verity of the wrong content.
	replace := func(name string, enable bool) {
		t.Helper()
		obj := filepath.Join(store, root.Child(name).Payload)
		tmp := obj + ".evil"
		if err := os.WriteFile(tmp, bytes.Repeat([]byte("X"), len(files[name])), 0o644); err != nil {
			t.Fatal(err)
		}
		if enable {
			f, err := os.Open(tmp)
			if err != nil {
				t.Fatal(err)
			}
			if err := verity.Enable(f, verity.SHA256); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		if err := os.Rename(tmp, obj); err != nil {
			t.Fatal(err)
		}
	}
	replace("victim", false)
	replace("victim2", true)
	if err := Mount(ctx, img, store, mnt, MountOptions{Verity: VerityRequire}); err != nil {
		t.Fatal(err)
	}
	defer Unmount(mnt)
	for _, name := range []string{"victim", "victim2"} {
		_, err := os.ReadFile(filepath.Join(mnt, name))
		if !errors.Is(err, unix.EIO) {
			t.Errorf("%s with a tampered object: %v, want EIO", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "small")); err != nil || !bytes.Equal(got, files["small"]) {
		t.Errorf("untampered file: %v", err)
	}
}

// mountOptions returns the /proc/self/mounts options of the mount at mnt.
func mountOptions(t *testing.T, mnt string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == mnt {
			return f[3]
		}
	}
	return ""
}

// TestMountRichTreeVM is TestMountRichTree with verity=require, in a guest
// whose kernel has fs-verity (and, at 6.12, cannot use a detached EROFS
// mount as an overlay layer, so the temp-dir path of Mount runs): every
// file type and edge case, objects with fs-verity on a verity ext4.
func TestMountRichTreeVM(t *testing.T) {
	if !vmtest.InGuest() {
		vmtest.RunTestInGuest(t, vmtest.Config{
			Disks:   []vmtest.Disk{{Size: 512 << 20, Verity: true}},
			Timeout: 5 * time.Minute,
		})
		return
	}
	dir := vmtest.ScratchDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	makeRichTree(t, src, treeSpec{bigDirEntries: 1500, sparseSize: 16 << 20})
	store := filepath.Join(dir, "objects")
	root, err := FromDir(context.Background(), src, FromDirOptions{DigestStore: store})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "image.cfs")
	if err := os.WriteFile(img, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(os.TempDir(), "mnt-rich")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Mount(context.Background(), img, store, mnt, MountOptions{Verity: VerityRequire}); err != nil {
		t.Fatal(err)
	}
	defer Unmount(mnt)
	if opts := mountOptions(t, mnt); !strings.Contains(opts, "verity=require") {
		t.Errorf("mount options %s", opts)
	}
	n := compareTrees(t, src, mnt)
	t.Logf("compared %d paths with verity=require", n)
}
