package objstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

func TestInUse(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	data := content(1, 50000)
	res := importTree(t, s, map[string][]byte{"f": data, "d/g": content(2, 7000)})
	obj := verity.DigestBytes(data, verity.SHA256)
	m, mnt := mountImage(t, s, res.Digest)
	got, err := os.ReadFile(filepath.Join(mnt, "f"))
	if err != nil || string(got) != string(data) {
		t.Fatalf("reading through the mount: %v", err)
	}
	if !s.InUse(res.Digest) {
		t.Fatal("mounted image not in use")
	}
	// Held by the lock, and by the mount table after the lock is released.
	for _, release := range []bool{false, true} {
		if release {
			m.Release()
		}
		if _, err := s.GC(ctx, GCOptions{}); err != nil {
			t.Fatal(err)
		}
		err := s.Remove(ctx, res.Digest)
		if !release && !errors.Is(err, ErrInUse) {
			t.Fatalf("Remove of a mounted image: %v, want ErrInUse", err)
		}
		if _, err := s.GC(ctx, GCOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(mnt, "f"))
		if err != nil || string(got) != string(data) {
			t.Fatalf("mounted image lost a file (release=%v): %v", release, err)
		}
		if !s.HasObject(obj) {
			t.Error("object of a mounted image deleted from objects/")
		}
		if r, _ := s.GC(ctx, GCOptions{}); r.InUse != 1 {
			t.Errorf("gc reports %d removals in use, want 1", r.InUse)
		}
	}
	if err := erofs.Unmount(mnt); err != nil {
		t.Fatal(err)
	}
	r, err := s.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Images != 1 || s.HasObject(obj) {
		t.Errorf("after unmount gc finished %d removals, object present %v", r.Images, s.HasObject(obj))
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), dirRemoved))
	if len(ents) != 0 {
		t.Errorf("removed/ not empty: %v", ents)
	}
	mustFsckClean(t, s)
}

func TestMountinfoMentions(t *testing.T) {
	const img = "/s/images/abc"
	tests := []struct {
		line string
		want bool
	}{
		{"45 27 0:40 / /mnt ro - overlay composefs ro,lowerdir+=/proc/self/fd/11,datadir+=/s/images/abc,redirect_dir=on", true},
		{"45 27 0:40 / /mnt ro - overlay composefs ro,lowerdir=/x::/s/images/abc", true},
		{"46 27 7:0 / /mnt ro - erofs /s/images/abc/image.cfs ro", true},
		{"46 27 7:0 / /mnt ro - erofs /dev/loop0 ro", false},
		{"45 27 0:40 / /mnt ro - overlay composefs ro,datadir+=/s/images/abcd", false},
		{"45 27 0:40 / /s/images/abc rw - ext4 /dev/vda rw", false}, // the mount point is not a use
		{"45 27 0:40 / /mnt ro - overlay composefs ro,datadir+=/s/removed/abc.12ef", false},
		{"garbage", false},
	}
	for _, tc := range tests {
		if got := mountinfoMentions([]byte(tc.line+"\n"), []string{img}); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.line, got, tc.want)
		}
	}
	// A line too long to scan must not end the table silently: the image
	// counts as mounted.
	long := "50 22 0:1 / /long rw - overlay overlay rw,lowerdir=" + strings.Repeat("x", 2<<20) + "\n"
	if !mountinfoMentions([]byte(long+tests[0].line+"\n"), []string{"/nowhere"}) {
		t.Error("a table that could not be read to its end counted as not mounting the image")
	}
	if got := mountinfoEscape("/a b\\c"); got != `/a\040b\134c` {
		t.Errorf("escape: %q", got)
	}
}

// mountImage mounts committed image d with MountImage on a new directory;
// the test's cleanup unmounts it unless the test did.
func mountImage(t testing.TB, s *Store, d verity.Digest) (*Mount, string) {
	t.Helper()
	mnt := t.TempDir()
	m, err := s.MountImage(context.Background(), d, mnt, erofs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Unmount() }) // an error when the test unmounted already
	return m, mnt
}
