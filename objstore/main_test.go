package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.podman.io/storage/pkg/reexec"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// Child processes of the concurrency and crash tests are this test binary,
// re-executed with OBJSTORE_CHILD=<role>.
const (
	envChild    = "OBJSTORE_CHILD"
	envRoot     = "OBJSTORE_ROOT"
	envSeed     = "OBJSTORE_SEED"
	envDeadline = "OBJSTORE_DEADLINE" // unix nanoseconds
	envUnsafe   = "OBJSTORE_UNSAFE"   // "1": no gc lock
	envCrashAt  = "OBJSTORE_CRASH_AT" // SIGKILL at this crash point call (1-based)
)

func TestMain(m *testing.M) {
	if reexec.Init() { // container storage re-executes itself for some work
		return
	}
	if role := os.Getenv(envChild); role != "" {
		if err := childMain(role); err != nil {
			fmt.Fprintf(os.Stderr, "child %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startChild runs the test binary in a child role.
func startChild(t testing.TB, role string, env ...string) *child {
	t.Helper()
	c := &child{role: role, cmd: exec.Command(os.Args[0], "-test.run=^$")}
	c.cmd.Env = append(os.Environ(), append([]string{envChild + "=" + role}, env...)...)
	c.cmd.Stdout = &c.out
	c.cmd.Stderr = &c.errs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return c
}

type child struct {
	role      string
	cmd       *exec.Cmd
	out, errs bytes.Buffer
}

// wait waits for the child and returns the number it printed last.
func (c *child) wait() (int, error) {
	err := c.cmd.Wait()
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", c.role, err, c.errs.String())
	}
	n, _ := strconv.Atoi(string(bytes.TrimSpace(c.out.Bytes())))
	return n, nil
}

func childMain(role string) error {
	ctx := context.Background()
	root := os.Getenv(envRoot)
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	opts := Options{unsafeNoGCL: os.Getenv(envUnsafe) == "1"}
	var calls atomic.Int64
	if n, err := strconv.ParseInt(os.Getenv(envCrashAt), 10, 64); err == nil {
		opts.crash = func(point string) {
			if calls.Add(1) == n {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	} else if role != "script" {
		// Widen the check-then-unlink window of gc so that a missing gc
		// lock shows within seconds (the protected run pays the same delay,
		// under the lock).
		opts.crash = func(point string) {
			if point == "gc.before-unlink" {
				time.Sleep(200 * time.Microsecond)
			}
		}
	} else {
		opts.crash = func(string) { calls.Add(1) }
	}
	s, err := Open(ctx, root, opts)
	if err != nil {
		return err
	}
	defer s.Close()
	deadline := time.Unix(0, mustInt(os.Getenv(envDeadline)))
	r := rand.New(rand.NewPCG(seed, seed+1))
	switch role {
	case "importer":
		n := 0
		for ; time.Now().Before(deadline); n++ {
			if _, err := poolImport(ctx, s, r); err != nil {
				return err
			}
		}
		fmt.Println(n)
	case "remover":
		n := 0
		for time.Now().Before(deadline) {
			ents, err := os.ReadDir(filepath.Join(root, dirImages))
			if err != nil {
				return err
			}
			if len(ents) < 10 {
				time.Sleep(time.Millisecond)
				continue
			}
			d, ok := s.parseImageName(ents[r.IntN(len(ents))].Name())
			if !ok {
				return fmt.Errorf("bad image name")
			}
			if err := s.Remove(ctx, d); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			n++
		}
		fmt.Println(n)
	case "gc":
		n := 0
		for ; time.Now().Before(deadline); n++ {
			if _, err := s.GC(ctx, GCOptions{}); err != nil {
				return err
			}
		}
		fmt.Println(n)
	case "script":
		if err := crashScript(ctx, s); err != nil {
			return err
		}
		fmt.Println(calls.Load())
	default:
		return fmt.Errorf("unknown role %q", role)
	}
	return nil
}

func mustInt(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// The pool of contents the concurrency test's images draw from.
const poolSize = 200

func poolContent(i int) []byte { return content(uint64(1000+i), 65+(i*397)%12000) }

// poolImportFixed commits an image of the given pool entries; with link,
// entries already in objects/ are linked instead of streamed.
func poolImportFixed(ctx context.Context, s *Store, idx []int, link bool) (verity.Digest, error) {
	st, err := s.NewStaging(ctx)
	if err != nil {
		return verity.Digest{}, err
	}
	defer st.Abort()
	root := erofs.NewRoot(0o755)
	for _, i := range idx {
		data := poolContent(i)
		d := verity.DigestBytes(data, verity.SHA256)
		if !link || st.LinkObject(ctx, d) != nil {
			if _, _, err := st.AddObject(ctx, bytes.NewReader(data), int64(len(data))); err != nil {
				return d, err
			}
		}
		n := &erofs.Node{Name: fmt.Sprintf("f%03d", i), Inode: erofs.Inode{
			Mode: erofs.ModeReg | 0o644, Nlink: 1, Size: uint64(len(data)), Payload: d.ObjectPath(), Digest: d}}
		if err := root.AddChild(n); err != nil {
			return d, err
		}
	}
	return st.Commit(ctx, root, ImageMeta{Source: "pool", Created: time.Unix(1, 0)})
}

// poolImport commits an image of 20 pool entries: file fNNN holds
// poolContent(NNN). Entries whose object exists are linked (the way sync
// reuses objects of applied layers), the others streamed; 4 workers share
// the staging, as ImportDir's do.
func poolImport(ctx context.Context, s *Store, r *rand.Rand) (verity.Digest, error) {
	st, err := s.NewStaging(ctx)
	if err != nil {
		return verity.Digest{}, err
	}
	defer st.Abort()
	idx := r.Perm(poolSize)[:20]
	tryLink := make([]bool, len(idx))
	for k := range tryLink {
		tryLink[k] = r.IntN(2) == 0
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for k, i := range idx {
		g.Go(func() error {
			data := poolContent(i)
			d := verity.DigestBytes(data, verity.SHA256)
			if tryLink[k] && s.HasObject(d) {
				err := st.LinkObject(gctx, d)
				if err == nil {
					return nil
				}
				if !errors.Is(err, ErrNotFound) { // deleted by gc meanwhile: stream it
					return err
				}
			}
			got, _, err := st.AddObject(gctx, bytes.NewReader(data), int64(len(data)))
			if err == nil && got != d {
				err = fmt.Errorf("AddObject digest %s, want %s", got, d)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return verity.Digest{}, err
	}
	root := erofs.NewRoot(0o755)
	for _, i := range idx {
		data := poolContent(i)
		d := verity.DigestBytes(data, verity.SHA256)
		n := &erofs.Node{Name: fmt.Sprintf("f%03d", i), Inode: erofs.Inode{
			Mode: erofs.ModeReg | 0o644, Nlink: 1, Size: uint64(len(data)), Payload: d.ObjectPath(), Digest: d}}
		if err := root.AddChild(n); err != nil {
			return d, err
		}
	}
	return st.Commit(ctx, root, ImageMeta{Source: "pool"})
}

// checkPoolImage reads every file of a mounted pool image and compares it
// with the pool.
func checkPoolImage(t testing.TB, mnt string) int {
	t.Helper()
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		i, err := strconv.Atoi(e.Name()[1:])
		if err != nil {
			t.Fatalf("unexpected file %s", e.Name())
		}
		got, err := os.ReadFile(mnt + "/" + e.Name())
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		if !bytes.Equal(got, poolContent(i)) {
			t.Fatalf("%s: wrong content", e.Name())
		}
	}
	return len(ents)
}

// mountTmpfs mounts a tmpfs on a new temporary directory (the concurrency
// and crash tests sync the filesystem thousands of times).
func mountTmpfs(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
