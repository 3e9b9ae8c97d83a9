package boot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A power cut on FAT can leave loader/entries.staged reading back as EIO
// until fsck.fat runs. Such a set must not stop status, a new upgrade or
// the finalize: it is ignored, and replaced or removed by the next write.
// Here the set file is made a directory, so reading it fails (EISDIR).
func TestUnreadableStagedSet(t *testing.T) {
	ctx := context.Background()
	p := openScratch(t, Options{})
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	b := deployment(t, p, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), testImage("kB", "iB"), "2")
	c := deployment(t, p, "cccccccccccc.0", digestOf(t, 0xcc), testImage("kC", "iC"), "3")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	damage := func() {
		t.Helper()
		if err := p.Stage(ctx, b, &a); err != nil {
			t.Fatal(err)
		}
		unreadableSet(t, p)
	}

	damage()
	if st, ok, err := p.Staged(ctx); err != nil || ok || st != nil {
		t.Fatalf("Staged on an unreadable set = %v, %v, %v; want nothing and no error", st, ok, err)
	}
	if err := p.CommitStaged(ctx); !errors.Is(err, ErrNoStaged) {
		t.Fatalf("CommitStaged of an unreadable set: %v, want ErrNoStaged", err)
	}
	if _, err := os.Stat(filepath.Join(p.Dir(), "loader", stagedName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the unreadable staged set is still there: %v", err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0+3.conf")

	damage()
	if err := p.Stage(ctx, c, &a); err != nil {
		t.Fatalf("Stage over an unreadable staged set: %v", err)
	}
	if st, ok, err := p.Staged(ctx); err != nil || !ok || st[0].ID != c.ID {
		t.Fatalf("Staged after restaging = %v, %v, %v; want %s first", st, ok, err, c.ID)
	}

	damage()
	if err := p.DiscardStaged(ctx); err != nil {
		t.Fatalf("DiscardStaged of an unreadable set: %v", err)
	}
	if err := p.DiscardStaged(ctx); err != nil {
		t.Fatalf("DiscardStaged with nothing staged: %v", err)
	}
}

// unreadableSet replaces the staged set's set file by a directory, so that
// reading the set fails (EISDIR), and returns its path.
func unreadableSet(t *testing.T, p *Partition) string {
	t.Helper()
	set := filepath.Join(p.Dir(), "loader", stagedName, setFile)
	if err := os.Remove(set); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(set, 0o755); err != nil {
		t.Fatal(err)
	}
	return set
}

// A staged set that cannot even be removed (FAT gives EIO on its entries;
// here a mount point inside it gives EBUSY) is set aside under a hidden
// name that systemd-boot never reads, and removed by a later cleanup once
// it can be.
func TestUnremovableStagedSet(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to bind-mount inside the staged set")
	}
	ctx := context.Background()
	p := openScratch(t, Options{})
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	b := deployment(t, p, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), testImage("kB", "iB"), "2")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Stage(ctx, b, &a); err != nil {
		t.Fatal(err)
	}
	set := unreadableSet(t, p)
	if err := unix.Mount(t.TempDir(), set, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(set, unix.MNT_DETACH)
		}
	}()
	if err := p.Stage(ctx, b, &a); err != nil {
		t.Fatalf("Stage over an unremovable staged set: %v", err)
	}
	if st, ok, err := p.Staged(ctx); err != nil || !ok || st[0].ID != b.ID {
		t.Fatalf("Staged = %v, %v, %v; want %s first", st, ok, err, b.ID)
	}
	aside := func() []string {
		des, err := os.ReadDir(filepath.Join(p.Dir(), "loader"))
		if err != nil {
			t.Fatal(err)
		}
		var l []string
		for _, de := range des {
			if strings.HasPrefix(de.Name(), brokenPrefix) {
				l = append(l, de.Name())
			}
		}
		return l
	}
	l := aside()
	if len(l) != 1 {
		t.Fatalf("set-aside directories %q, want one", l)
	}
	if err := unix.Unmount(filepath.Join(p.Dir(), "loader", l[0], setFile), 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if err := p.CommitStaged(ctx); err != nil {
		t.Fatal(err)
	}
	if l := aside(); len(l) != 0 {
		t.Fatalf("set-aside directories %q remain after a cleanup that can remove them", l)
	}
	wantFiles(t, p, "twinroot1_bbbbbbbbbbbb.0+3.conf", "twinroot0_aaaaaaaaaaaa.0+3.conf")
}
