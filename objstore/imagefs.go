package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// ImageFS is a committed image read as a file system, external content
// included: what erofs.Image serves, except that a regular file whose
// content is an external object reads from that object in the image's own
// directory. FileInfo.Sys returns the file's *erofs.Inode (mode, owner,
// xattrs, digest). While it is open it holds a shared flock on the image's
// .lock, so a concurrent Remove is deferred and the objects stay readable.
type ImageFS struct {
	d    verity.Digest
	img  *erofs.Image
	m    *mappedFile // image.cfs, which img reads
	dir  *os.Root
	lock *os.File
}

var (
	_ fs.ReadLinkFS = (*ImageFS)(nil)
	_ fs.ReadFileFS = (*ImageFS)(nil)
	_ fs.StatFS     = (*ImageFS)(nil)
)

// holdImage opens images/<d>/.lock and takes it shared, the lock a
// removal must get exclusively before it deletes the image (MountImage,
// OpenImageFS). A removal renames the directory before it tries that
// lock: when the lock file is still at its place once locked, the removal
// will see the lock; when not, the image is going away (ErrNotFound).
// Closing the file drops the lock.
func (s *Store) holdImage(d verity.Digest) (*os.File, error) {
	lp := filepath.Join(s.ImageDir(d), fileLock)
	f, err := os.Open(lp)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("objstore: image %s: %w", d, ErrNotFound)
		}
		return nil, fmt.Errorf("objstore: image %s: %w", d, err)
	}
	if err := flock(f, unix.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("objstore: locking %s: %w", lp, err)
	}
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(lp, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
		f.Close()
		return nil, fmt.Errorf("objstore: image %s: %w (being removed)", d, ErrNotFound)
	}
	return f, nil
}

// OpenImageFS opens image d for reading (see ImageFS). Close it.
func (s *Store) OpenImageFS(ctx context.Context, d verity.Digest) (*ImageFS, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir := s.ImageDir(d)
	f, err := s.holdImage(d)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("objstore: image %s: %w", d, err)
	}
	m, err := mapFile(filepath.Join(dir, fileImage))
	if err != nil {
		root.Close()
		f.Close()
		return nil, fmt.Errorf("objstore: image %s: %w", d, err)
	}
	img, err := erofs.Open(m, int64(len(m.b)))
	if err != nil {
		m.Close()
		root.Close()
		f.Close()
		return nil, fmt.Errorf("objstore: image %s: %w", d, err)
	}
	return &ImageFS{d: d, img: img, dir: root, lock: f, m: m}, nil
}

// mappedFile is a read-only memory map of a whole file, as an io.ReaderAt:
// the EROFS reader makes many small reads (an inode, a directory block),
// which through a file would each be a pread. Committed image files are
// never written or truncated, so the mapping cannot fault.
type mappedFile struct {
	mu sync.RWMutex // Close waits for reads in flight; reads after it fail
	b  []byte
}

func mapFile(path string) (*mappedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("%s: %w: empty image file", path, ErrCorrupt)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	return &mappedFile{b: b}, nil
}

func (m *mappedFile) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.b == nil {
		return 0, ErrClosed
	}
	if off < 0 || off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *mappedFile) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.b == nil {
		return nil
	}
	err := unix.Munmap(m.b)
	m.b = nil
	return err
}

// Image returns the underlying EROFS image (its tree, without content).
func (f *ImageFS) Image() *erofs.Image { return f.img }

// Close releases the image and its lock.
func (f *ImageFS) Close() error {
	err := f.img.Close()
	if f.m != nil {
		f.m.Close()
		f.m = nil
	}
	f.dir.Close()
	if f.lock != nil {
		f.lock.Close()
		f.lock = nil
	}
	return err
}

// external reports whether fi is a regular file whose content is an
// object, and returns its inode.
func external(fi fs.FileInfo) (*erofs.Inode, bool) {
	in, _ := fi.Sys().(*erofs.Inode)
	return externalInode(in)
}

func externalInode(in *erofs.Inode) (*erofs.Inode, bool) {
	if in == nil || in.Type() != erofs.ModeReg || in.Size == 0 || in.Content != nil {
		return in, false
	}
	return in, true
}

// openObject opens the object backing inode in (named by its payload,
// inside the image directory only).
func (f *ImageFS) openObject(op, name string, in *erofs.Inode) (*os.File, error) {
	if in.Payload == "" || !fs.ValidPath(in.Payload) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fmt.Errorf("%w: image %s: bad payload %q", ErrCorrupt, f.d, in.Payload)}
	}
	o, err := f.dir.Open(in.Payload)
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: fmt.Errorf("image %s: object %s: %w", f.d, in.Payload, err)}
	}
	return o, nil
}

// OpenObject opens the object holding the content of a regular file of
// this image, given its inode (from FileInfo.Sys): no path lookup in the
// image, for callers that walked it already. The object is looked up
// inside the image's own directory only.
func (f *ImageFS) OpenObject(in *erofs.Inode) (*os.File, error) {
	if _, ext := externalInode(in); !ext {
		return nil, fmt.Errorf("objstore: image %s: %w: not a file with external content", f.d, fs.ErrInvalid)
	}
	return f.openObject("open", in.Payload, in)
}

// Open opens the named file, following symlinks inside the image.
func (f *ImageFS) Open(name string) (fs.File, error) {
	file, err := f.img.Open(name)
	if err != nil {
		return nil, err
	}
	fi, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, err
	}
	in, ext := external(fi)
	if !ext {
		return file, nil
	}
	file.Close()
	o, err := f.openObject("open", name, in)
	if err != nil {
		return nil, err
	}
	return &objectFile{File: o, fi: fi}, nil
}

// ReadFile returns the content of the named regular file.
func (f *ImageFS) ReadFile(name string) ([]byte, error) {
	fi, err := f.img.Stat(name)
	if err != nil {
		return nil, err
	}
	in, ext := external(fi)
	if !ext {
		return f.img.ReadFile(name)
	}
	o, err := f.openObject("read", name, in)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: name, Err: err}
	}
	return b, nil
}

// Stat describes the named file, following symlinks inside the image.
func (f *ImageFS) Stat(name string) (fs.FileInfo, error) { return f.img.Stat(name) }

// Lstat describes the named file without following a final symlink.
func (f *ImageFS) Lstat(name string) (fs.FileInfo, error) { return f.img.Lstat(name) }

// ReadLink returns the target of the named symlink.
func (f *ImageFS) ReadLink(name string) (string, error) { return f.img.ReadLink(name) }

// objectFile is an image file whose content is read from its object; Stat
// describes the image's inode, not the object file.
type objectFile struct {
	*os.File
	fi fs.FileInfo
}

func (o *objectFile) Stat() (fs.FileInfo, error) { return o.fi, nil }

// Object returns the open object file (for copy_file_range or reflinks).
func (o *objectFile) Object() *os.File { return o.File }
