package objstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/twinroot/twinroot/erofs"
)

func span(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// crashScript is what the crash test's child does: overlapping imports,
// removals and gc sweeps, in a fixed order so that crash point N is the
// same moment in every run.
func crashScript(ctx context.Context, s *Store) error {
	a, err := poolImportFixed(ctx, s, span(0, 30), false)
	if err != nil {
		return err
	}
	b, err := poolImportFixed(ctx, s, span(15, 45), true)
	if err != nil {
		return err
	}
	// A root keeps a until it is dropped.
	if err := s.AddRoot(ctx, "deploy-a.0", a); err != nil {
		return err
	}
	if err := s.Remove(ctx, a); !errors.Is(err, ErrRooted) {
		return fmt.Errorf("remove of a rooted image: %v", err)
	}
	if err := s.RemoveRoot(ctx, "deploy-a.0"); err != nil {
		return err
	}
	if err := s.Remove(ctx, a); err != nil {
		return err
	}
	if _, err := s.GC(ctx, GCOptions{}); err != nil {
		return err
	}
	c, err := poolImportFixed(ctx, s, span(0, 20), true)
	if err != nil {
		return err
	}
	if err := s.Remove(ctx, b); err != nil {
		return err
	}
	if _, err := poolImportFixed(ctx, s, span(10, 50), false); err != nil {
		return err
	}
	if err := s.Remove(ctx, c); err != nil {
		return err
	}
	_, err = s.GC(ctx, GCOptions{})
	return err
}

// TestCrashPoints kills a child running crashScript with SIGKILL at crash
// point N, for every N, then opens the store and checks: no leftovers in
// tmp/ or removed/, fsck clean (every surviving image has all its objects
// with the right content, every object its right content), and, every few
// points, that the surviving images mount and read back correctly.
func TestCrashPoints(t *testing.T) {
	ctx := context.Background()
	base := mountTmpfs(t, "1g")
	// A run without a crash counts the crash points.
	root := filepath.Join(base, "count")
	if s, err := Open(ctx, root, Options{Create: true}); err != nil {
		t.Fatal(err)
	} else {
		s.Close()
	}
	c := startChild(t, "script", envRoot+"="+root)
	total, err := c.wait()
	if err != nil {
		t.Fatal(err)
	}
	if total < 100 {
		t.Fatalf("only %d crash points", total)
	}
	t.Logf("%d crash points", total)
	mounts := 0
	for n := 1; n <= total; n++ {
		root := filepath.Join(base, strconv.Itoa(n))
		s, err := Open(ctx, root, Options{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		c := startChild(t, "script", envRoot+"="+root, envCrashAt+"="+strconv.Itoa(n))
		if _, err := c.wait(); err == nil {
			t.Fatalf("point %d: child was not killed", n)
		}
		s, err = Open(ctx, root, Options{})
		if err != nil {
			t.Fatalf("point %d: open after crash: %v", n, err)
		}
		for _, d := range []string{dirTmp, dirRemoved} {
			if ents, _ := os.ReadDir(filepath.Join(root, d)); len(ents) != 0 {
				t.Errorf("point %d: %s/ not empty after open: %v", n, d, ents)
			}
		}
		res, err := s.Fsck(ctx, FsckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range res.Problems {
			t.Errorf("point %d: fsck: %s", n, p)
		}
		if n%25 == 0 {
			imgs, _ := s.Images(ctx)
			for _, im := range imgs {
				mnt := t.TempDir()
				m, err := s.MountImage(ctx, im.Digest, mnt, erofs.MountOptions{Verity: erofs.VerityOff})
				if err != nil {
					t.Fatalf("point %d: %v", n, err)
				}
				checkPoolImage(t, mnt)
				m.Unmount()
				mounts++
			}
		}
		// The store keeps working: gc, then fsck again.
		if _, err := s.GC(ctx, GCOptions{}); err != nil {
			t.Fatal(err)
		}
		if res, _ := s.Fsck(ctx, FsckOptions{}); !res.Clean() {
			t.Errorf("point %d: fsck after gc: %v", n, res.Problems)
		}
		s.Close()
		os.RemoveAll(root)
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d crash points survived, %d image mounts verified", total, mounts)
	_ = fmt.Sprint
}
