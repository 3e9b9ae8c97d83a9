package erofs

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/twinroot/twinroot/verity"
)

// File type bits of Inode.Mode (the st_mode S_IFMT values).
const (
	ModeType   = 0o170000
	ModeSocket = 0o140000
	ModeLink   = 0o120000
	ModeReg    = 0o100000
	ModeBlock  = 0o060000
	ModeDir    = 0o040000
	ModeChar   = 0o020000
	ModeFifo   = 0o010000
)

// Timespec is a modification time with nanoseconds.
type Timespec struct {
	Sec  int64
	Nsec uint32
}

// Xattr is one extended attribute. Name is the full name ("user.foo").
type Xattr struct {
	Name  string
	Value []byte
}

// Inode is the metadata and content reference of one file in a tree.
type Inode struct {
	Mode  uint32 // st_mode, file type bits included
	Nlink uint32 // as given for non-directories; recomputed for directories by the writer
	UID   uint32
	GID   uint32
	Rdev  uint32 // character and block devices only
	Mtime Timespec
	Size  uint64 // regular files: content size; symlinks: len(Target)

	// Target is a symlink's target.
	Target string
	// Content is a regular file's inline content (len(Content) == Size), or
	// nil when the content lives in an external object (or Size is 0).
	Content []byte
	// Payload is an external regular file's backing path relative to the
	// object directory, normally Digest.ObjectPath() ("ab/cdef..."). It
	// becomes the trusted.overlay.redirect xattr ("/" + Payload).
	Payload string
	// Digest is the fs-verity digest of an external file's content; it
	// becomes the trusted.overlay.metacopy xattr. Zero when unknown.
	Digest verity.Digest
	// Xattrs are the file's extended attributes, as found in the source
	// (no composefs overlay xattrs; the writer adds and escapes those).
	Xattrs []Xattr
}

// Type returns the file type bits of the mode.
func (i *Inode) Type() uint32 { return i.Mode & ModeType }

// IsDir reports whether the inode is a directory.
func (i *Inode) IsDir() bool { return i.Type() == ModeDir }

// Node is one directory entry of a composefs tree. Directory nodes own their
// children, kept sorted by name (bytewise). A hardlink entry has Link set to
// the primary node it names; its own Inode is unused.
type Node struct {
	Name     string
	Parent   *Node
	Children []*Node
	Link     *Node
	Inode
}

// Errors returned by tree operations.
var (
	ErrExist    = errors.New("erofs: entry already exists")
	ErrNotExist = errors.New("erofs: no such entry")
	ErrNotDir   = errors.New("erofs: not a directory")
	ErrBadName  = errors.New("erofs: invalid name")
)

// MaxNameLen is the longest file name a composefs image holds.
const MaxNameLen = 255

// NewRoot returns a new root directory node with the given mode bits
// (permission bits; the directory type is added).
func NewRoot(perm uint32) *Node {
	return &Node{Inode: Inode{Mode: ModeDir | perm&^ModeType, Nlink: 2}}
}

// Primary returns the node a name refers to: the node itself, or the primary
// node of a hardlink entry.
func (n *Node) Primary() *Node {
	for n.Link != nil {
		n = n.Link
	}
	return n
}

// validName reports whether name can be a directory entry.
func validName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrBadName, name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d bytes long (max %d)", ErrBadName, len(name), MaxNameLen)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	return nil
}

// search returns the index of name among the sorted children.
func (n *Node) search(name string) (int, bool) {
	i := sort.Search(len(n.Children), func(i int) bool { return n.Children[i].Name >= name })
	return i, i < len(n.Children) && n.Children[i].Name == name
}

// Child returns the child called name, or nil.
func (n *Node) Child(name string) *Node {
	if i, ok := n.search(name); ok {
		return n.Children[i]
	}
	return nil
}

// AddChild inserts c under directory n, keeping the children sorted. It
// fails when n is not a directory, the name is invalid or already taken.
func (n *Node) AddChild(c *Node) error {
	if !n.IsDir() || n.Link != nil {
		return fmt.Errorf("%w: %s", ErrNotDir, n.Path())
	}
	if err := validName(c.Name); err != nil {
		return err
	}
	i, ok := n.search(c.Name)
	if ok {
		return fmt.Errorf("%w: %s", ErrExist, joinPath(n.Path(), c.Name))
	}
	n.Children = append(n.Children, nil)
	copy(n.Children[i+1:], n.Children[i:])
	n.Children[i] = c
	c.Parent = n
	return nil
}

// RemoveChild removes and returns the child called name, or nil.
func (n *Node) RemoveChild(name string) *Node {
	i, ok := n.search(name)
	if !ok {
		return nil
	}
	c := n.Children[i]
	n.Children = append(n.Children[:i], n.Children[i+1:]...)
	c.Parent = nil
	return c
}

// Path returns the node's absolute path ("/" for the root).
func (n *Node) Path() string {
	if n.Parent == nil {
		return "/"
	}
	var parts []string
	for p := n; p.Parent != nil; p = p.Parent {
		parts = append(parts, p.Name)
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteByte('/')
		b.WriteString(parts[i])
	}
	return b.String()
}

func joinPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// Lookup finds the node at an absolute or root-relative slash-separated
// path, without following symlinks or hardlinks. Repeated slashes are
// ignored.
func (n *Node) Lookup(p string) (*Node, error) {
	cur := n
	for _, part := range strings.Split(p, "/") {
		if part == "" {
			continue
		}
		if !cur.IsDir() || cur.Link != nil {
			return nil, fmt.Errorf("%w: %s", ErrNotDir, cur.Path())
		}
		next := cur.Child(part)
		if next == nil {
			return nil, &fs.PathError{Op: "lookup", Path: p, Err: ErrNotExist}
		}
		cur = next
	}
	return cur, nil
}

// Walk calls fn for n and every node below it, depth first, parents before
// children, children in sorted order. Returning fs.SkipDir from fn skips a
// directory's children; any other error stops the walk and is returned.
func (n *Node) Walk(fn func(*Node) error) error {
	err := n.walk(fn)
	if err == fs.SkipDir || err == fs.SkipAll {
		return nil
	}
	return err
}

func (n *Node) walk(fn func(*Node) error) error {
	if err := fn(n); err != nil {
		if err == fs.SkipDir {
			return nil
		}
		return err
	}
	if n.Link != nil {
		return nil
	}
	for _, c := range n.Children {
		if err := c.walk(fn); err != nil {
			return err
		}
	}
	return nil
}
