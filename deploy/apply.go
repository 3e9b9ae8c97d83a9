package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/verity"
)

// applyOptions are Apply's knobs for Manager (tests and benchmarks).
type applyOptions struct {
	crash func(point string) // called after each path
}

// Apply writes the merged /etc of plan into dst, which must not exist:
// every path with its type, content, mode, owner (lchown, so run as
// root), xattrs and modification time; device nodes and FIFOs are made
// with mknod, and regular files that were hardlinked in the local /etc
// stay hardlinked when both names come from it. An image's external file
// is checked against the digest its inode records while it is copied (an
// error wrapping ErrBadImage names it). Nothing is fsynced: the
// caller makes the result durable (Create runs one syncfs of the store's
// filesystem before it renames the deployment into place). On an error
// dst holds part of the tree; the caller removes it (Create builds in a
// temp directory the store deletes).
func Apply(ctx context.Context, plan Plan, dst string) error {
	return apply(ctx, plan, dst, applyOptions{})
}

type inodeKey struct{ dev, ino uint64 }

// applyWorkers bounds the files Apply writes at once: creating files is
// mostly waiting on the filesystem's metadata updates.
const applyWorkers = 4

func apply(ctx context.Context, plan Plan, dst string, o applyOptions) error {
	type job struct {
		t      *tree
		rel    string
		e      *entry
		target string
	}
	var dirs, files, links []job
	first := map[inodeKey]string{}
	for _, a := range plan.Actions {
		t := plan.new
		if a.From == FromLocal {
			t = plan.local
		}
		e := t.get(a.Path)
		if e == nil {
			return fmt.Errorf("deploy: apply: %s: not in the %s tree", a.Path, a.From)
		}
		j := job{t, a.Path, e, filepath.Join(dst, a.Path)}
		switch {
		case e.isDir():
			dirs = append(dirs, j)
		case e.typ() == unix.S_IFREG && a.From == FromLocal && e.nlink > 1:
			k := inodeKey{e.dev, e.ino}
			if f, ok := first[k]; ok {
				j.rel = f // the link's target
				links = append(links, j)
				continue
			}
			first[k] = j.target
			files = append(files, j)
		default:
			files = append(files, j)
		}
	}
	// Directories first, in order (parents before children), then every
	// other path on a few workers, then the hardlinks, then the
	// directories' times (children first, since creating an entry changes
	// its directory's mtime).
	for _, j := range dirs {
		if err := makeDir(j.target, j.e); err != nil {
			return err
		}
		if o.crash != nil {
			o.crash("apply.path")
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(applyWorkers)
	for _, j := range files {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			var err error
			switch j.e.typ() {
			case unix.S_IFREG:
				err = copyFile(j.t, j.rel, j.e, j.target)
			case unix.S_IFLNK:
				err = makeSymlink(j.target, j.e)
			default:
				err = makeNode(j.target, j.e)
			}
			if err == nil && o.crash != nil {
				o.crash("apply.path")
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, j := range links {
		if err := os.Link(j.rel, j.target); err != nil {
			return fmt.Errorf("deploy: %w", err)
		}
		if o.crash != nil {
			o.crash("apply.path")
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := setTimes(dirs[i].target, dirs[i].e); err != nil {
			return err
		}
	}
	return nil
}

// setMeta sets owner, mode and xattrs of a path just created (chown first:
// it clears set-id bits and file capabilities).
func setMeta(p string, e *entry, symlink bool) error {
	if err := unix.Lchown(p, int(e.uid), int(e.gid)); err != nil {
		return fmt.Errorf("deploy: chown %s: %w", p, err)
	}
	if !symlink {
		if err := unix.Chmod(p, e.mode&0o7777); err != nil {
			return fmt.Errorf("deploy: chmod %s: %w", p, err)
		}
	}
	for _, x := range e.xattrs {
		if err := unix.Lsetxattr(p, x.Name, x.Value, 0); err != nil {
			return fmt.Errorf("deploy: %s: xattr %s: %w", p, x.Name, err)
		}
	}
	return nil
}

func setTimes(p string, e *entry) error {
	ts := []unix.Timespec{e.mtime, e.mtime}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("deploy: %s: %w", p, err)
	}
	return nil
}

func makeDir(p string, e *entry) error {
	if err := os.Mkdir(p, 0o700); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	return setMeta(p, e, false)
}

func makeSymlink(p string, e *entry) error {
	if err := os.Symlink(e.target, p); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	if err := setMeta(p, e, true); err != nil {
		return err
	}
	return setTimes(p, e)
}

func makeNode(p string, e *entry) error {
	if err := unix.Mknod(p, e.mode&^0o7777|0o600, int(e.rdev)); err != nil {
		return fmt.Errorf("deploy: mknod %s: %w", p, err)
	}
	if err := setMeta(p, e, false); err != nil {
		return err
	}
	return setTimes(p, e)
}

// copyFile creates p with the content of path rel of tree t, then sets
// owner, mode and xattrs through the open descriptor.
func copyFile(t *tree, rel string, e *entry, p string) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("deploy: create %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	err = writeContent(f, t, rel, e)
	if err == nil {
		err = fsetMeta(fd, e)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("deploy: %s: %w", p, err)
	}
	return setTimes(p, e)
}

// fsetMeta is setMeta on an open regular file.
func fsetMeta(fd int, e *entry) error {
	if err := unix.Fchown(fd, int(e.uid), int(e.gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, e.mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	for _, x := range e.xattrs {
		if err := unix.Fsetxattr(fd, x.Name, x.Value, 0); err != nil {
			return fmt.Errorf("xattr %s: %w", x.Name, err)
		}
	}
	return nil
}

func writeContent(f *os.File, t *tree, rel string, e *entry) error {
	switch {
	case e.size == 0:
		return nil
	case e.inline != nil:
		_, err := f.Write(e.inline)
		return err
	}
	r, err := t.open(rel)
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	defer r.Close()
	// An image's file is checked against the digest its inode records: an
	// object damaged or replaced in the store (fs-verity off, or a file
	// other than the one measured) must not become the deployment's /etc.
	var w io.Writer = f
	var h *verity.Hasher
	if t.dir == "" && !e.digest.IsZero() {
		h = verity.New(e.digest.Algorithm())
		w = io.MultiWriter(f, h)
	}
	n, err := io.Copy(w, r)
	if err != nil {
		return fmt.Errorf("copying from %s: %w", t.name, err)
	}
	if h != nil && n == e.size && h.Sum() != e.digest {
		return fmt.Errorf("%s: %s: %w: content does not match its digest %s", t.name, rel, ErrBadImage, e.digest)
	}
	// A local file (a live /etc) may have been rewritten since Merge read
	// it: its current content is the user's latest. An image's file must
	// be what its inode says.
	if n != e.size && t.dir == "" {
		return fmt.Errorf("copying from %s: %d bytes, expected %d: %w", t.name, n, e.size, errors.New("file changed while copied"))
	}
	return nil
}
