package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// applyOptions are Apply's knobs for Manager (tests and benchmarks).
type applyOptions struct {
	fsync bool               // fsync each file (else the caller's syncfs is the barrier)
	crash func(point string) // called after each path
}

// Apply writes the merged /etc of plan into dst, which must not exist:
// every path with its type, content, mode, owner (lchown, so run as
// root), xattrs and modification time; device nodes and FIFOs are made
// with mknod, and regular files that were hardlinked in the local /etc
// stay hardlinked when both names come from it. Nothing is fsynced: the
// caller makes the result durable (Create runs one syncfs of the store's
// filesystem before it renames the deployment into place).
func Apply(ctx context.Context, plan Plan, dst string) error {
	return apply(ctx, plan, dst, applyOptions{})
}

type inodeKey struct{ dev, ino uint64 }

func apply(ctx context.Context, plan Plan, dst string, o applyOptions) error {
	links := map[inodeKey]string{}
	type dirTime struct {
		path string
		e    *entry
	}
	var dirs []dirTime
	for i, a := range plan.Actions {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		t := plan.new
		if a.From == FromLocal {
			t = plan.local
		}
		e := t.get(a.Path)
		if e == nil {
			return fmt.Errorf("deploy: apply: %s: not in the %s tree", a.Path, a.From)
		}
		target := filepath.Join(dst, a.Path)
		var err error
		switch e.typ() {
		case unix.S_IFDIR:
			err = makeDir(target, e)
			dirs = append(dirs, dirTime{target, e})
		case unix.S_IFREG:
			k := inodeKey{e.dev, e.ino}
			if a.From == FromLocal && e.nlink > 1 {
				if first, ok := links[k]; ok {
					if err := os.Link(first, target); err != nil {
						return fmt.Errorf("deploy: %w", err)
					}
					break
				}
				links[k] = target
			}
			err = copyFile(t, a.Path, e, target, o.fsync)
		case unix.S_IFLNK:
			err = makeSymlink(target, e)
		default:
			err = makeNode(target, e)
		}
		if err != nil {
			return err
		}
		if o.crash != nil {
			o.crash("apply.path")
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := setTimes(dirs[i].path, dirs[i].e); err != nil {
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

// copyFile creates p with the content of path rel of tree t.
func copyFile(t *tree, rel string, e *entry, p string, fsync bool) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	err = writeContent(f, t, rel, e)
	if err == nil && fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("deploy: %s: %w", p, err)
	}
	if err := setMeta(p, e, false); err != nil {
		return err
	}
	return setTimes(p, e)
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
	n, err := io.Copy(f, r)
	if err != nil {
		return fmt.Errorf("copying from %s: %w", t.name, err)
	}
	if n != e.size {
		return fmt.Errorf("copying from %s: %d bytes, expected %d: %w", t.name, n, e.size, errors.New("file changed while copied"))
	}
	return nil
}
