package erofs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"
)

// ErrExternalContent is returned when reading a regular file whose content
// is not in the image but in an external object (its Inode's Payload and
// Digest, from FileInfo.Sys, name it).
var ErrExternalContent = errors.New("erofs: file content is in an external object")

// Image serves its tree as a read-only file system, straight from the image
// without reading the whole tree. Each lookup is bounded, and a path that
// enters a directory already above it (a cycle or a directory hardlink,
// which only a corrupt image has) fails with ErrCorrupt, so that fs.WalkDir
// over a hostile image ends.
var (
	_ fs.ReadLinkFS = (*Image)(nil)
	_ fs.ReadFileFS = (*Image)(nil)
	_ fs.StatFS     = (*Image)(nil)
)

// maxPathLen is the longest name the fs.FS methods accept (PATH_MAX).
const maxPathLen = 4096

// maxSymlinkHops bounds symlink resolution in Open and Stat.
const maxSymlinkHops = 40

// fsEntry is a resolved path: the inode's nid and its decoded node (no
// children).
type fsEntry struct {
	nid  uint64
	node *Node
}

// shallowNode decodes inode nid without its directory entries; skip reports
// a whiteout.
func (img *Image) shallowNode(nid uint64, name string) (*Node, bool, error) {
	tb := &rdTreeBuilder{img: img, seen: make(map[uint64]*Node), ino: make(map[*Node]uint32),
		links: make(map[*Node][]*Node), ents: make(map[*Node][]*Node),
		budget: rdExpansion*img.size + rdBudgetSlack, shared: make(map[int64]Xattr), shallow: true}
	return tb.node(nid, name, 0)
}

// child finds name among the entries of directory nid.
func (img *Image) child(nid uint64, name string) (uint64, bool, error) {
	ri, err := img.inode(nid)
	if err != nil {
		return 0, false, err
	}
	if ri.mode&ModeType != ModeDir {
		return 0, false, ErrNotDir
	}
	ents, err := img.dirents(ri)
	if err != nil {
		return 0, false, err
	}
	for _, e := range ents {
		if e.name == name {
			return e.nid, true, nil
		}
	}
	return 0, false, nil
}

// resolve looks name (an fs.ValidPath) up from the root. Symlinks met on
// the way are followed, inside the image (absolute targets start at its
// root), and so is the final one when follow is set.
func (img *Image) resolve(op, name string, follow bool) (fsEntry, error) {
	if !fs.ValidPath(name) || len(name) > maxPathLen {
		return fsEntry{}, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	fail := func(err error) (fsEntry, error) {
		return fsEntry{}, &fs.PathError{Op: op, Path: name, Err: err}
	}
	root, skip, err := img.shallowNode(img.rootNid, "")
	if err != nil {
		return fail(err)
	}
	if skip || !root.IsDir() {
		return fail(fmt.Errorf("%w: root nid %d is not a directory", ErrCorrupt, img.rootNid))
	}
	cur := fsEntry{img.rootNid, root}
	var stack []fsEntry // directories above cur, for ".."
	todo := strings.Split(name, "/")
	if name == "." {
		todo = nil
	}
	hops := 0
	for len(todo) > 0 {
		part := todo[0]
		todo = todo[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if len(stack) > 0 {
				cur, stack = stack[len(stack)-1], stack[:len(stack)-1]
			}
			continue
		}
		if !cur.node.IsDir() {
			return fail(ErrNotDir)
		}
		nid, ok, err := img.child(cur.nid, part)
		if err != nil {
			return fail(err)
		}
		if !ok {
			return fail(fs.ErrNotExist)
		}
		n, skip, err := img.shallowNode(nid, part)
		if err != nil {
			return fail(err)
		}
		if skip {
			return fail(fs.ErrNotExist)
		}
		if n.IsDir() {
			// Symlinks re-walk from the root or pop the stack, so a directory
			// met twice on the way down is one an entry names again.
			for _, a := range append(stack, cur) {
				if a.nid == nid {
					return fail(fmt.Errorf("%w: nid %d: directory %q is its own ancestor (cycle or directory hardlink)", ErrCorrupt, nid, part))
				}
			}
		}
		if n.Type() == ModeLink && (len(todo) > 0 || follow) {
			if hops++; hops > maxSymlinkHops {
				return fail(errors.New("too many levels of symbolic links"))
			}
			t := n.Inode.Target
			if strings.HasPrefix(t, "/") {
				cur, stack = fsEntry{img.rootNid, root}, nil
			}
			todo = append(strings.Split(t, "/"), todo...)
			continue
		}
		stack = append(stack, cur)
		cur = fsEntry{nid, n}
	}
	return cur, nil
}

// Open opens the named file (following symlinks inside the image). A
// regular file reads its inline content; one whose content is an external
// object fails to read with ErrExternalContent; devices, FIFOs and
// sockets read as empty. Directories implement fs.ReadDirFile.
func (img *Image) Open(name string) (fs.File, error) {
	e, err := img.resolve("open", name, true)
	if err != nil {
		return nil, err
	}
	f := &imageFile{img: img, ent: e, name: path.Base(name)}
	if e.node.Type() == ModeReg {
		f.r = bytes.NewReader(e.node.Content)
	}
	return f, nil
}

// ReadFile returns the content of the named regular file (following
// symlinks inside the image): its inline content, or ErrExternalContent.
// Unlike a generic fs.ReadFile it allocates nothing for external files,
// whatever size they claim.
func (img *Image) ReadFile(name string) ([]byte, error) {
	e, err := img.resolve("read", name, true)
	if err != nil {
		return nil, err
	}
	n := e.node
	switch {
	case n.IsDir():
		return nil, &fs.PathError{Op: "read", Path: name, Err: errors.New("is a directory")}
	case n.Type() != ModeReg:
		return []byte{}, nil
	case n.Size > 0 && n.Content == nil:
		return nil, &fs.PathError{Op: "read", Path: name, Err: fmt.Errorf("%w %q", ErrExternalContent, n.Payload)}
	}
	return append([]byte{}, n.Content...), nil
}

// Lstat describes the named file without following a final symlink.
func (img *Image) Lstat(name string) (fs.FileInfo, error) {
	e, err := img.resolve("lstat", name, false)
	if err != nil {
		return nil, err
	}
	return fileInfo{name: path.Base(name), n: e.node}, nil
}

// Stat describes the named file, following symlinks inside the image.
func (img *Image) Stat(name string) (fs.FileInfo, error) {
	e, err := img.resolve("stat", name, true)
	if err != nil {
		return nil, err
	}
	return fileInfo{name: path.Base(name), n: e.node}, nil
}

// ReadLink returns the target of the named symlink.
func (img *Image) ReadLink(name string) (string, error) {
	e, err := img.resolve("readlink", name, false)
	if err != nil {
		return "", err
	}
	if e.node.Type() != ModeLink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	return e.node.Inode.Target, nil
}

// fileInfo is an fs.FileInfo of a decoded node; Sys returns its *Inode.
type fileInfo struct {
	name string
	n    *Node
}

func (fi fileInfo) Name() string {
	if fi.name == "" || fi.name == "/" {
		return "."
	}
	return fi.name
}
func (fi fileInfo) Size() int64        { return int64(fi.n.Size) }
func (fi fileInfo) Mode() fs.FileMode  { return fileMode(fi.n.Mode) }
func (fi fileInfo) ModTime() time.Time { return time.Unix(fi.n.Mtime.Sec, int64(fi.n.Mtime.Nsec)) }
func (fi fileInfo) IsDir() bool        { return fi.n.IsDir() }
func (fi fileInfo) Sys() any           { return &fi.n.Inode }

// fileMode converts st_mode bits to an fs.FileMode.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & ModeType {
	case ModeDir:
		mode |= fs.ModeDir
	case ModeLink:
		mode |= fs.ModeSymlink
	case ModeChar:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case ModeBlock:
		mode |= fs.ModeDevice
	case ModeFifo:
		mode |= fs.ModeNamedPipe
	case ModeSocket:
		mode |= fs.ModeSocket
	}
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// imageFile is an open file of an Image.
type imageFile struct {
	img  *Image
	ent  fsEntry
	name string
	r    *bytes.Reader
	ents []fs.DirEntry // directory entries not yet returned by ReadDir
	read bool          // ents loaded
}

func (f *imageFile) Stat() (fs.FileInfo, error) { return fileInfo{name: f.name, n: f.ent.node}, nil }
func (f *imageFile) Close() error               { return nil }

func (f *imageFile) Read(p []byte) (int, error) {
	n := f.ent.node
	switch {
	case n.IsDir():
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: errors.New("is a directory")}
	case n.Type() != ModeReg:
		return 0, io.EOF // devices, FIFOs and sockets have no content in the image
	case n.Size > 0 && n.Content == nil:
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: fmt.Errorf("%w %q", ErrExternalContent, n.Payload)}
	}
	return f.r.Read(p)
}

// ReadDir returns the directory's entries in name order (whiteouts left
// out), as fs.ReadDirFile does.
func (f *imageFile) ReadDir(count int) ([]fs.DirEntry, error) {
	if !f.ent.node.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: f.name, Err: ErrNotDir}
	}
	if !f.read {
		ri, err := f.img.inode(f.ent.nid)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: f.name, Err: err}
		}
		ents, err := f.img.dirents(ri)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: f.name, Err: err}
		}
		for _, e := range ents {
			if e.name == "." || e.name == ".." {
				continue
			}
			n, skip, err := f.img.shallowNode(e.nid, e.name)
			if err != nil {
				return nil, &fs.PathError{Op: "readdir", Path: f.name, Err: err}
			}
			if !skip {
				f.ents = append(f.ents, fs.FileInfoToDirEntry(fileInfo{name: e.name, n: n}))
			}
		}
		f.read = true
	}
	if count <= 0 {
		out := f.ents
		f.ents = nil
		return out, nil
	}
	if len(f.ents) == 0 {
		return nil, io.EOF
	}
	k := min(count, len(f.ents))
	out := f.ents[:k]
	f.ents = f.ents[k:]
	return out, nil
}
