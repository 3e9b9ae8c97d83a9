package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// entry is one file of an /etc tree as the merge sees it: everything that
// makes two versions of a path the same or different (type, mode, owner,
// xattrs, content, target, device number), not the modification time.
type entry struct {
	mode   uint32 // st_mode, type bits included
	uid    uint32
	gid    uint32
	rdev   uint64
	size   int64
	target string        // symlinks
	xattrs []erofs.Xattr // sorted by name
	mtime  unix.Timespec

	inline []byte        // image files: inline content (nil when external or empty)
	digest verity.Digest // image files: external content's digest, when known
	inode  *erofs.Inode  // image files: the inode, for objectOpener

	dev, ino uint64 // local files: identity, for hardlinks
	nlink    uint64

	children []string // directories: names, sorted
}

func (e *entry) typ() uint32 { return e.mode & unix.S_IFMT }
func (e *entry) isDir() bool { return e != nil && e.typ() == unix.S_IFDIR }

// typeName names a file type for messages.
func typeName(e *entry) string {
	if e == nil {
		return "nothing"
	}
	switch e.typ() {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "file"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "file"
}

// tree is one side of the merge: the entries of an /etc by path relative
// to it ("." is /etc itself), and how to read a regular file's content.
type tree struct {
	name    string // for messages: "image <digest> /etc", "/path/etc"
	entries map[string]*entry
	open    func(p string) (io.ReadCloser, error)
	// fsys and prefix, or dir: where the tree is read from (Apply copies
	// from there).
	fsys   fs.FS
	prefix string
	dir    string
}

func (t *tree) get(p string) *entry {
	if t == nil {
		return nil
	}
	return t.entries[p]
}

// join makes a path of the tree's root relative one ("." + name = name).
func join(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

// objectOpener is what objstore.ImageFS offers beyond fs.FS: opening a
// file's object by its inode.
type objectOpener interface {
	OpenObject(in *erofs.Inode) (*os.File, error)
}

var _ objectOpener = (*objstore.ImageFS)(nil)

// loadFS reads the tree under prefix ("etc") of an image file system. Its
// FileInfo.Sys must be an *erofs.Inode (objstore.ImageFS, erofs.Image) or
// a *syscall.Stat_t (os.DirFS); ok is false when prefix is absent or not
// a directory.
func loadFS(fsys fs.FS, prefix, name string) (t *tree, ok bool, err error) {
	fi, err := lstatFS(fsys, prefix)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("deploy: %s: %w", name, err)
	}
	if !fi.IsDir() {
		return nil, false, nil
	}
	t = &tree{name: name, entries: map[string]*entry{}, fsys: fsys, prefix: prefix}
	t.open = func(p string) (io.ReadCloser, error) { return fsys.Open(path.Join(prefix, p)) }
	if oo, ok := fsys.(objectOpener); ok {
		// External content straight from its object, without a path
		// lookup in the image.
		t.open = func(p string) (io.ReadCloser, error) {
			if e := t.entries[p]; e != nil && e.inode != nil && e.inline == nil && e.size > 0 && e.typ() == unix.S_IFREG {
				return oo.OpenObject(e.inode)
			}
			return fsys.Open(path.Join(prefix, p))
		}
	}
	root, err := entryOfFileInfo(fi)
	if err != nil {
		return nil, false, fmt.Errorf("deploy: %s: %w", name, err)
	}
	t.entries["."] = root
	var walk func(rel string, e *entry) error
	walk = func(rel string, e *entry) error {
		ents, err := fs.ReadDir(fsys, path.Join(prefix, rel))
		if errors.Is(err, erofs.ErrCorrupt) {
			// The reader refuses a crafted directory itself (an entry
			// name holding '/', say): an unusable image, not an I/O error.
			return fmt.Errorf("deploy: %s: %w: %w", name, ErrBadImage, err)
		}
		if err != nil {
			return fmt.Errorf("deploy: %s: %w", name, err)
		}
		for _, de := range ents {
			// The format does not forbid '/' or ".." in an entry of a
			// crafted image, and Apply joins names onto the new /etc.
			if n := de.Name(); n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
				return fmt.Errorf("deploy: %s: %w: entry %q in %s", name, ErrBadImage, n, join(rel, "."))
			}
			fi, err := de.Info()
			if err != nil {
				return fmt.Errorf("deploy: %s: %w", name, err)
			}
			ce, err := entryOfFileInfo(fi)
			if err != nil {
				return fmt.Errorf("deploy: %s: %s: %w", name, join(rel, de.Name()), err)
			}
			cp := join(rel, de.Name())
			e.children = append(e.children, de.Name())
			t.entries[cp] = ce
			if ce.isDir() {
				if err := walk(cp, ce); err != nil {
					return err
				}
			}
		}
		sort.Strings(e.children)
		return nil
	}
	if err := walk(".", root); err != nil {
		return nil, false, err
	}
	return t, true, nil
}

// lstatFS is fs.Lstat where the file system has it, else fs.Stat.
func lstatFS(fsys fs.FS, name string) (fs.FileInfo, error) {
	if l, ok := fsys.(fs.ReadLinkFS); ok {
		return l.Lstat(name)
	}
	return fs.Stat(fsys, name)
}

func entryOfFileInfo(fi fs.FileInfo) (*entry, error) {
	switch sys := fi.Sys().(type) {
	case *erofs.Inode:
		e := &entry{mode: sys.Mode, uid: sys.UID, gid: sys.GID, rdev: uint64(sys.Rdev), size: int64(sys.Size),
			target: sys.Target, inline: sys.Content, digest: sys.Digest, inode: sys,
			mtime: unix.Timespec{Sec: sys.Mtime.Sec, Nsec: int64(sys.Mtime.Nsec)}}
		if e.typ() == unix.S_IFLNK {
			e.size = int64(len(e.target))
		}
		for _, x := range sys.Xattrs {
			e.xattrs = append(e.xattrs, erofs.Xattr{Name: x.Name, Value: x.Value})
		}
		sort.Slice(e.xattrs, func(i, j int) bool { return e.xattrs[i].Name < e.xattrs[j].Name })
		return e, nil
	case *syscall.Stat_t:
		e := &entry{mode: sys.Mode, uid: sys.Uid, gid: sys.Gid, rdev: sys.Rdev, size: sys.Size,
			mtime: unix.Timespec{Sec: sys.Mtim.Sec, Nsec: sys.Mtim.Nsec}}
		return e, nil
	}
	return nil, fmt.Errorf("no owner information in %T", fi.Sys())
}

// loadDir reads the tree of a local /etc directory.
func loadDir(dir string) (*tree, error) {
	t := &tree{name: dir, entries: map[string]*entry{}, dir: dir}
	t.open = func(p string) (io.ReadCloser, error) {
		return os.OpenFile(filepath.Join(dir, p), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	var walk func(rel string) (*entry, error)
	walk = func(rel string) (*entry, error) {
		full := filepath.Join(dir, rel)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			return nil, fmt.Errorf("deploy: %s: %w", full, err)
		}
		e := &entry{mode: st.Mode, uid: st.Uid, gid: st.Gid, rdev: st.Rdev, size: st.Size,
			mtime: st.Mtim, dev: st.Dev, ino: st.Ino, nlink: st.Nlink}
		xs, err := readXattrs(full)
		if err != nil {
			return nil, fmt.Errorf("deploy: %s: xattrs: %w", full, err)
		}
		e.xattrs = xs
		switch e.typ() {
		case unix.S_IFLNK:
			tgt, err := os.Readlink(full)
			if err != nil {
				return nil, fmt.Errorf("deploy: %w", err)
			}
			e.target = tgt
			e.size = int64(len(tgt))
		case unix.S_IFDIR:
			f, err := os.Open(full)
			if err != nil {
				return nil, fmt.Errorf("deploy: %w", err)
			}
			names, err := f.Readdirnames(-1)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("deploy: %s: %w", full, err)
			}
			sort.Strings(names)
			e.children = names
			for _, n := range names {
				ce, err := walk(join(rel, n))
				if err != nil {
					return nil, err
				}
				t.entries[join(rel, n)] = ce
			}
		}
		return e, nil
	}
	root, err := walk(".")
	if err != nil {
		return nil, err
	}
	if !root.isDir() {
		return nil, fmt.Errorf("deploy: %s: %w", dir, unix.ENOTDIR)
	}
	t.entries["."] = root
	return t, nil
}

// readXattrs returns a file's extended attributes, sorted by name (none on
// a filesystem without xattr support).
func readXattrs(p string) ([]erofs.Xattr, error) {
	buf := make([]byte, 1024)
	var sz int
	var err error
	for {
		sz, err = unix.Llistxattr(p, buf)
		if err == unix.ERANGE {
			buf = make([]byte, 2*len(buf))
			continue
		}
		break
	}
	if err == unix.ENOTSUP {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []erofs.Xattr
	for _, name := range strings.Split(string(buf[:sz]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 256)
		for {
			n, err := unix.Lgetxattr(p, name, v)
			if err == unix.ERANGE {
				v = make([]byte, 2*len(v))
				continue
			}
			if err == unix.ENODATA {
				v = nil
				break
			}
			if err != nil {
				return nil, err
			}
			v = v[:n]
			break
		}
		if v != nil {
			out = append(out, erofs.Xattr{Name: name, Value: v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// sameMeta compares what two entries are, except content and children:
// type, mode, owner, device number, symlink target and xattrs.
func sameMeta(a, b *entry) bool {
	if a.mode != b.mode || a.uid != b.uid || a.gid != b.gid || a.target != b.target {
		return false
	}
	if (a.typ() == unix.S_IFCHR || a.typ() == unix.S_IFBLK) && a.rdev != b.rdev {
		return false
	}
	if len(a.xattrs) != len(b.xattrs) {
		return false
	}
	for i := range a.xattrs {
		if a.xattrs[i].Name != b.xattrs[i].Name || !bytes.Equal(a.xattrs[i].Value, b.xattrs[i].Value) {
			return false
		}
	}
	return true
}

// sameContent compares two regular files' content: by digest or inline
// bytes when both come from images, else by reading (only the side that
// is not inline). buf is scratch space of at least 64 KiB.
func sameContent(ta *tree, a *entry, tb *tree, b *entry, p string, buf []byte) (bool, error) {
	if a.size != b.size {
		return false, nil
	}
	if a.size == 0 {
		return true, nil
	}
	if !a.digest.IsZero() && !b.digest.IsZero() && a.digest.Algorithm() == b.digest.Algorithm() {
		return a.digest == b.digest, nil
	}
	if a.inline != nil && b.inline != nil {
		return bytes.Equal(a.inline, b.inline), nil
	}
	if b.inline != nil || (a.digest.IsZero() && !b.digest.IsZero()) {
		ta, a, tb, b = tb, b, ta, a
	}
	// a has its content's digest (an image's external file), b does not (a
	// local file): hash b instead of reading a's object too.
	if !a.digest.IsZero() && b.inline == nil {
		rb, err := tb.open(p)
		if err != nil {
			return false, fmt.Errorf("deploy: %s: %s: %w", tb.name, p, err)
		}
		defer rb.Close()
		// Through buf: the Hasher's own ReadFrom allocates a buffer per call.
		h := verity.New(a.digest.Algorithm())
		for {
			n, err := rb.Read(buf)
			h.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				return false, fmt.Errorf("deploy: %s: %s: %w", tb.name, p, err)
			}
		}
		return h.Size() == a.size && h.Sum() == a.digest, nil
	}
	rb, err := tb.open(p)
	if err != nil {
		return false, fmt.Errorf("deploy: %s: %s: %w", tb.name, p, err)
	}
	defer rb.Close()
	half := len(buf) / 2
	bufA, bufB := buf[:half], buf[half:]
	if a.inline != nil {
		n, err := io.ReadFull(rb, bufB[:min(len(bufB), len(a.inline)+1)])
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return false, fmt.Errorf("deploy: %s: %s: %w", tb.name, p, err)
		}
		return bytes.Equal(bufB[:n], a.inline), nil
	}
	ra, err := ta.open(p)
	if err != nil {
		return false, fmt.Errorf("deploy: %s: %s: %w", ta.name, p, err)
	}
	defer ra.Close()
	for {
		na, ea := io.ReadFull(ra, bufA)
		nb, eb := io.ReadFull(rb, bufB)
		if na != nb || !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		aEnd := ea == io.EOF || ea == io.ErrUnexpectedEOF
		bEnd := eb == io.EOF || eb == io.ErrUnexpectedEOF
		switch {
		case ea != nil && !aEnd:
			return false, fmt.Errorf("deploy: %s: %s: %w", ta.name, p, ea)
		case eb != nil && !bEnd:
			return false, fmt.Errorf("deploy: %s: %s: %w", tb.name, p, eb)
		case aEnd || bEnd:
			return aEnd == bEnd, nil
		}
	}
}
