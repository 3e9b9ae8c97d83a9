package erofs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/verity"
)

// MaxInlineFromDir is the largest regular file FromDir stores inside the
// image rather than as an external object (mkcomposefs's
// LCFS_RECOMMENDED_INLINE_CONTENT_MAX).
const MaxInlineFromDir = 64

// FromDirOptions tune FromDir.
type FromDirOptions struct {
	// DigestStore, when set, is an object directory that receives a copy of
	// every external file's content at DigestStore/xx/rest (its digest's
	// ObjectPath), as `mkcomposefs --digest-store` does. Present objects
	// are left alone.
	DigestStore string
	// Workers bounds how many files are digested (and copied) at once;
	// 0 means runtime.GOMAXPROCS(0).
	Workers int
	// Logger receives debug messages; nil discards them.
	Logger *slog.Logger
}

// FromDir builds a composefs tree from the directory dir, the way
// `mkcomposefs DIR` does: symlinks are not followed; mode, uid, gid,
// mtime (with nanoseconds), rdev and every xattr are copied; regular files
// of 1..64 bytes are inlined, larger ones get their fs-verity (SHA-256)
// digest, computed on a bounded pool of workers, and Payload =
// digest.ObjectPath(). Unlike mkcomposefs, hardlinks are kept: the
// second and later names of an inode (same device and inode number,
// met in sorted depth-first order) become Link entries to the first,
// whose Nlink counts the names found inside dir.
func FromDir(ctx context.Context, dir string, opts FromDirOptions) (*Node, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if opts.DigestStore != "" {
		if err := os.MkdirAll(opts.DigestStore, 0o755); err != nil {
			return nil, fmt.Errorf("erofs: digest store: %w", err)
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)

	g, gctx := errgroup.WithContext(ctx)
	w := &dirWalker{
		ctx:    gctx,
		log:    log,
		opts:   opts,
		links:  make(map[devIno]*Node),
		jobs:   make(chan digestJob, workers),
		stores: make(map[string]bool),
	}
	for i := 0; i < workers; i++ {
		g.Go(w.worker)
	}
	root := &Node{}
	g.Go(func() error {
		defer close(w.jobs)
		if err := w.load(fd, ".", dir, root); err != nil {
			return err
		}
		if !root.IsDir() {
			return fmt.Errorf("erofs: %s: %w", dir, ErrNotDir)
		}
		return w.walkDir(fd, dir, root, 0)
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := w.syncStoreDirs(); err != nil {
		return nil, err
	}
	return root, nil
}

type devIno struct{ dev, ino uint64 }

// digestJob is one external regular file to digest: an open file and
// the node that gets the result.
type digestJob struct {
	f    *os.File
	node *Node
}

type dirWalker struct {
	ctx   context.Context
	log   *slog.Logger
	opts  FromDirOptions
	links map[devIno]*Node
	jobs  chan digestJob

	mu     sync.Mutex
	stores map[string]bool // fan-out directories of the store that got new objects
}

// walkDir reads the entries of the open directory dfd (at path p) into n,
// in sorted name order, descending into subdirectories.
func (w *dirWalker) walkDir(dfd int, p string, n *Node, depth int) error {
	if depth > rdMaxTreeDepth {
		return fmt.Errorf("erofs: %s: directory tree deeper than %d", p, rdMaxTreeDepth)
	}
	names, err := readDirNames(dfd)
	if err != nil {
		return &os.PathError{Op: "readdir", Path: p, Err: err}
	}
	sort.Strings(names)
	for _, name := range names {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		cp := filepath.Join(p, name)
		c := &Node{Name: name}
		if err := validName(name); err != nil {
			return fmt.Errorf("erofs: %s: %w", cp, err)
		}
		if err := w.load(dfd, name, cp, c); err != nil {
			return err
		}
		c.Parent = n
		n.Children = append(n.Children, c)
		if c.IsDir() && c.Link == nil {
			cfd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return &os.PathError{Op: "open", Path: cp, Err: err}
			}
			err = w.walkDir(cfd, cp, c, depth+1)
			unix.Close(cfd)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// readDirNames lists the names in the open directory fd.
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}

// load fills n from the file name in directory dfd (p is its path for
// messages and name its entry name).
func (w *dirWalker) load(dfd int, name, p string, n *Node) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	typ := st.Mode & ModeType
	if typ != ModeDir && st.Nlink > 1 {
		key := devIno{uint64(st.Dev), st.Ino}
		if prim, ok := w.links[key]; ok {
			n.Link = prim
			prim.Nlink++
			return nil
		}
		w.links[key] = n
	}
	n.Mode = st.Mode
	n.Nlink = 1
	n.UID, n.GID = st.Uid, st.Gid
	n.Mtime = Timespec{Sec: st.Mtim.Sec, Nsec: uint32(st.Mtim.Nsec)}
	if typ == ModeChar || typ == ModeBlock {
		n.Rdev = uint32(st.Rdev)
	}
	switch typ {
	case ModeLink:
		t, err := readlinkat(dfd, name)
		if err != nil {
			return &os.PathError{Op: "readlink", Path: p, Err: err}
		}
		n.Inode.Target = t
		n.Size = uint64(len(t))
	case ModeReg:
		n.Size = uint64(st.Size)
	}
	pfd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	xs, err := readXattrs("/proc/self/fd/" + strconv.Itoa(pfd))
	unix.Close(pfd)
	if err != nil {
		return &os.PathError{Op: "listxattr", Path: p, Err: err}
	}
	n.Xattrs = xs
	if typ == ModeReg && n.Size > 0 {
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		f := os.NewFile(uintptr(fd), p)
		if n.Size <= MaxInlineFromDir {
			defer f.Close()
			buf := make([]byte, n.Size)
			if _, err := io.ReadFull(f, buf); err != nil {
				return fmt.Errorf("erofs: reading %s: %w", p, err)
			}
			n.Content = buf
			return nil
		}
		select {
		case w.jobs <- digestJob{f: f, node: n}:
		case <-w.ctx.Done():
			f.Close()
			return w.ctx.Err()
		}
	}
	return nil
}

// readlinkat returns the target of the symlink name in directory dfd.
func readlinkat(dfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// readXattrs returns all extended attributes of path (following a final
// /proc/self/fd magic link), sorted by name.
func readXattrs(path string) ([]Xattr, error) {
	var list []byte
	for {
		sz, err := unix.Listxattr(path, nil)
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				return nil, nil
			}
			return nil, err
		}
		if sz == 0 {
			return nil, nil
		}
		list = make([]byte, sz)
		sz, err = unix.Listxattr(path, list)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		list = list[:sz]
		break
	}
	var xs []Xattr
	for len(list) > 0 {
		i := 0
		for i < len(list) && list[i] != 0 {
			i++
		}
		name := string(list[:i])
		if i < len(list) {
			i++
		}
		list = list[i:]
		if name == "" {
			continue
		}
		v, err := getxattr(path, name)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		xs = append(xs, Xattr{Name: name, Value: v})
	}
	rdSortXattrs(xs)
	return xs, nil
}

func getxattr(path, name string) ([]byte, error) {
	for {
		sz, err := unix.Getxattr(path, name, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, sz)
		if sz == 0 {
			return buf, nil
		}
		sz, err = unix.Getxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:sz], nil
	}
}

// worker digests queued files and fills the digest store.
func (w *dirWalker) worker() error {
	for job := range w.jobs {
		err := w.digest(job)
		job.f.Close()
		if err != nil {
			// Drain so the walker never blocks on a full queue.
			for j := range w.jobs {
				j.f.Close()
			}
			return err
		}
	}
	return nil
}

func (w *dirWalker) digest(job digestJob) error {
	d, err := verity.DigestFileHandle(w.ctx, job.f, verity.SHA256)
	if err != nil {
		return fmt.Errorf("erofs: digest of %s: %w", job.f.Name(), err)
	}
	job.node.Digest = d
	job.node.Payload = d.ObjectPath()
	if w.opts.DigestStore == "" {
		return nil
	}
	added, err := storeObject(w.opts.DigestStore, d, job.f, w.log)
	if err != nil {
		return fmt.Errorf("erofs: storing %s: %w", job.f.Name(), err)
	}
	if added {
		w.mu.Lock()
		w.stores[filepath.Dir(filepath.Join(w.opts.DigestStore, d.ObjectPath()))] = true
		w.mu.Unlock()
	}
	return nil
}

// syncStoreDirs fsyncs every store directory that got a new object.
func (w *dirWalker) syncStoreDirs() error {
	for d := range w.stores {
		if err := atomicfile.SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// storeObject copies src's content to store/<digest path> unless that
// exists: a temp file in the store, reflinked or copied, chmod 0644,
// fsynced, fs-verity enabled where the filesystem can, then renamed.
func storeObject(store string, d verity.Digest, src *os.File, log *slog.Logger) (added bool, err error) {
	dst := filepath.Join(store, d.ObjectPath())
	if _, err := os.Lstat(dst); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(store, ".tmp")
	if err != nil {
		return false, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := copyContent(tmp, src); err != nil {
		return false, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := enableVerity(tmp.Name(), log); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return false, err
	}
	return true, nil
}

// copyContent copies all of src into the empty file dst: a reflink when
// the filesystem can share extents, else copy_file_range (through
// io.Copy), from the start of src.
func copyContent(dst, src *os.File) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		return nil
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(dst, src)
	return err
}

// enableVerity tries to turn on fs-verity for the file at path; a
// filesystem without fs-verity is not an error.
func enableVerity(path string, log *slog.Logger) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := verity.Enable(f, verity.SHA256); err != nil {
		if errors.Is(err, verity.ErrNotSupported) {
			return nil
		}
		log.Debug("enabling fs-verity failed", "path", path, "err", err)
	}
	return nil
}
