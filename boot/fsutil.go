package boot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// The boot partition is usually vfat: no chmod, no hardlinks, no O_TMPFILE.
// Files are written under a temporary name, fsynced, renamed into place
// (rename: the renamed file or directory is fsynced again) and the
// directory fsynced (syncDir) by the caller.
//
// Why fsync after the rename: vfat keeps a file's start cluster and size in
// its directory entry, and a rename writes the new entry with neither; they
// are filled in when the renamed inode is written back. An fsync of the
// directory alone makes the new name durable with an empty file behind it
// (TestVfatPowerCutVM found entries with no content after a power cut).

// rename renames oldpath to newpath and fsyncs what now has the new name,
// so its vfat directory entry is complete on disk; the caller fsyncs the
// parent.
func rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	return syncPath(newpath)
}

// syncPath fsyncs a file or directory.
func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("boot: fsync %s: %w", p, err)
	}
	return nil
}

// syncDir fsyncs a directory, making renames and new names in it durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("boot: fsync %s: %w", dir, err)
	}
	return nil
}

// mkdirSync creates dir (and missing parents), syncing each parent that got
// a new name.
func mkdirSync(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("boot: %s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirSync(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("boot: %w", err)
	}
	return syncDir(parent)
}

func randSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// writeTemp writes r to a new temporary file in dir and fsyncs it; it
// returns the temporary path and what w returned. The file is removed on
// error.
func writeTemp(ctx context.Context, dir, name string, r io.Reader, w io.Writer) (string, int64, error) {
	tmp := filepath.Join(dir, tmpPrefix+name+"-"+randSuffix())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("boot: %w", mapNoSpace(err, dir))
	}
	var dst io.Writer = f
	if w != nil {
		dst = io.MultiWriter(f, w)
	}
	n, err := io.Copy(dst, ctxReader{ctx, r})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", n, fmt.Errorf("boot: writing %s: %w", tmp, mapNoSpace(err, dir))
	}
	return tmp, n, nil
}

// writeFile replaces dir/name with data: temporary name, fsync, rename. The
// caller syncs dir.
func writeFile(ctx context.Context, dir, name string, data []byte) error {
	tmp, _, err := writeTemp(ctx, dir, name, bytesReader(data), nil)
	if err != nil {
		return err
	}
	if err := rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func mapNoSpace(err error, dir string) error {
	if errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%w %s: %w", ErrNoSpace, dir, err)
	}
	return err
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type byteReader struct {
	b []byte
}

func bytesReader(b []byte) io.Reader { return &byteReader{b} }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func sleepCtx(ctx context.Context) error {
	t := time.NewTimer(20 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// exchange swaps the names a and b in dir atomically and fsyncs both (see
// rename); the caller fsyncs dir.
func exchange(dir, a, b string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer d.Close()
	fd := int(d.Fd())
	if err := unix.Renameat2(fd, a, fd, b, unix.RENAME_EXCHANGE); err != nil {
		return &os.LinkError{Op: "renameat2 RENAME_EXCHANGE", Old: filepath.Join(dir, a), New: filepath.Join(dir, b), Err: err}
	}
	if err := syncPath(filepath.Join(dir, a)); err != nil {
		return err
	}
	return syncPath(filepath.Join(dir, b))
}

// exchangeUnsupported reports whether err says the file system cannot
// exchange names.
func exchangeUnsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP)
}

// freeBytes returns the bytes an unprivileged writer may still use in dir's
// file system.
func freeBytes(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("boot: statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
