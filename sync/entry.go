package sync

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// Operations a layer entry performs on the merged tree.
const (
	opAdd      = "add"      // create or replace the entry at Path
	opWhiteout = "whiteout" // delete Path (a ".wh.NAME" tar entry)
	opOpaque   = "opaque"   // delete every lower-layer child of directory Path (".wh..wh..opq")
)

// entry is one change a layer makes to the merged tree, in layer order. It is
// what the tar reader produces after regular-file content has gone into
// objects, and what a layer record stores: replaying a layer's entries onto
// the tree of its lower layers gives the same tree as unpacking its tar.
type entry struct {
	Op      string        `json:"op"`
	Path    string        `json:"path"` // cleaned, relative, no leading "/" ("" = the root)
	Mode    uint32        `json:"mode,omitempty"`
	UID     uint32        `json:"uid,omitempty"`
	GID     uint32        `json:"gid,omitempty"`
	Rdev    uint32        `json:"rdev,omitempty"`
	Mtime   int64         `json:"mtime,omitempty"`
	Nsec    uint32        `json:"nsec,omitempty"`
	Size    uint64        `json:"size,omitempty"`
	Target  string        `json:"target,omitempty"`  // symlink target
	Link    string        `json:"link,omitempty"`    // hardlink: path of the linked file (cleaned like Path)
	Content []byte        `json:"content,omitempty"` // inline content of a small regular file
	Digest  verity.Digest `json:"digest,omitzero"`   // object holding an external regular file
	Xattrs  []erofs.Xattr `json:"xattrs,omitempty"`
}

// tree is the merged filesystem tree of an image being pulled, with the
// bookkeeping that applying layers needs.
type tree struct {
	root *erofs.Node
	// links maps a primary node to the hardlink entries naming it.
	links map[*erofs.Node][]*erofs.Node
	// layer holds the nodes created by the layer being applied; an opaque
	// directory only removes children not in it.
	layer map[*erofs.Node]bool
	files int // nodes in the tree, for Limits.MaxFiles
	max   int // 0 = unlimited
}

func newTree(maxFiles int) *tree {
	t := &tree{root: erofs.NewRoot(0o755), links: map[*erofs.Node][]*erofs.Node{}, max: maxFiles}
	t.startLayer()
	return t
}

// cleanPath validates a path from a layer (a tar name or hardlink target) and
// returns it relative to the root, without "./" or trailing slashes. Names
// that climb out of the root (".."), absolute names and names with NUL bytes
// are rejected; newlines and other bytes are legal in Linux names and kept.
func cleanPath(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: NUL byte in name %q", ErrUnsafeLayer, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute name %q", ErrUnsafeLayer, name)
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", fmt.Errorf("%w: name %q climbs out of the image", ErrUnsafeLayer, name)
		}
		if len(p) > erofs.MaxNameLen {
			return "", fmt.Errorf("%w: name component of %d bytes in %q", ErrUnsafeLayer, len(p), name)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "/"), nil
}

// parentDir returns the directory that will hold p, creating missing
// intermediate directories (mode 0755, owned by root) as OCI layers may
// omit them. A non-directory in the way is an error: following a symlink
// there would let a layer write outside the path it names.
func (t *tree) parentDir(p string) (*erofs.Node, string, error) {
	dir, base := path.Split(p)
	cur := t.root
	for _, part := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
		if part == "" {
			continue
		}
		next := cur.Child(part)
		if next == nil {
			next = &erofs.Node{Name: part, Inode: erofs.Inode{Mode: erofs.ModeDir | 0o755, Nlink: 2}}
			if err := t.add(cur, next); err != nil {
				return nil, "", err
			}
		}
		if next.Link != nil || !next.IsDir() {
			return nil, "", fmt.Errorf("%w: %q: %s is not a directory", ErrUnsafeLayer, p, next.Path())
		}
		cur = next
	}
	return cur, base, nil
}

func (t *tree) add(dir, n *erofs.Node) error {
	if t.max > 0 && t.files >= t.max {
		return fmt.Errorf("%w: more than %d files", ErrLimit, t.max)
	}
	if err := dir.AddChild(n); err != nil {
		return fmt.Errorf("%w: %w", ErrUnsafeLayer, err)
	}
	t.files++
	t.layer[n] = true
	return nil
}

// remove deletes n and everything below it from the tree. Hardlink entries
// elsewhere that name a removed file keep it alive: the first of them
// becomes the file's primary entry.
func (t *tree) remove(n *erofs.Node) {
	var gone []*erofs.Node
	_ = n.Walk(func(c *erofs.Node) error {
		gone = append(gone, c)
		return nil
	})
	n.Parent.RemoveChild(n.Name)
	t.files -= len(gone)
	for _, c := range gone {
		delete(t.layer, c)
		if c.Link != nil {
			p := c.Link
			t.links[p] = slices.DeleteFunc(t.links[p], func(x *erofs.Node) bool { return x == c })
			if len(t.links[p]) == 0 {
				delete(t.links, p)
			}
			continue
		}
		ls := t.links[c]
		if len(ls) == 0 {
			continue
		}
		delete(t.links, c)
		// Promote the first surviving link to primary; it takes the inode.
		heir := ls[0]
		heir.Link = nil
		heir.Inode = c.Inode
		if rest := ls[1:]; len(rest) > 0 {
			for _, l := range rest {
				l.Link = heir
			}
			t.links[heir] = append([]*erofs.Node(nil), rest...)
		}
	}
}

// apply performs one entry on the tree.
func (t *tree) apply(e *entry) error {
	switch e.Op {
	case opWhiteout:
		n, err := t.root.Lookup(e.Path)
		if err != nil || n == t.root {
			if n == t.root {
				return fmt.Errorf("%w: whiteout of the root", ErrUnsafeLayer)
			}
			return nil // nothing below to hide
		}
		t.remove(n)
		return nil
	case opOpaque:
		n, err := t.root.Lookup(e.Path)
		if err != nil {
			if errors.Is(err, erofs.ErrNotDir) {
				return fmt.Errorf("%w: opaque marker under non-directory %q", ErrUnsafeLayer, e.Path)
			}
			// The directory itself is not there yet: create it so the
			// marker's children land in an empty directory.
			dir, _, err := t.parentDir(e.Path + "/x")
			if err != nil {
				return err
			}
			n = dir
		}
		if n.Link != nil || !n.IsDir() {
			return fmt.Errorf("%w: opaque marker in non-directory %q", ErrUnsafeLayer, e.Path)
		}
		for _, c := range slices.Clone(n.Children) {
			if !t.layer[c] {
				t.remove(c)
			}
		}
		return nil
	case opAdd:
	default:
		return fmt.Errorf("%w: unknown operation %q", ErrBadRecord, e.Op)
	}

	if e.Path == "" {
		// The root directory's own metadata ("./").
		if e.Mode&erofs.ModeType != erofs.ModeDir {
			return fmt.Errorf("%w: root entry is not a directory", ErrUnsafeLayer)
		}
		setInode(&t.root.Inode, e)
		return nil
	}
	dir, base, err := t.parentDir(e.Path)
	if err != nil {
		return err
	}
	old := dir.Child(base)
	if e.Link != "" {
		target, err := t.root.Lookup(e.Link)
		if err != nil {
			return fmt.Errorf("%w: hardlink %q to missing %q", ErrUnsafeLayer, e.Path, e.Link)
		}
		target = target.Primary()
		if target.IsDir() || target == t.root {
			return fmt.Errorf("%w: hardlink %q to directory %q", ErrUnsafeLayer, e.Path, e.Link)
		}
		if old != nil && old.Primary() == target {
			return nil // relinking the same file
		}
		for p := target.Parent; p != nil; p = p.Parent {
			if p == old {
				return fmt.Errorf("%w: hardlink %q replaces the directory holding its target %q", ErrUnsafeLayer, e.Path, e.Link)
			}
		}
		if old != nil {
			t.remove(old)
		}
		n := &erofs.Node{Name: base, Link: target}
		if err := t.add(dir, n); err != nil {
			return err
		}
		t.links[target] = append(t.links[target], n)
		return nil
	}
	if old != nil && old.Link == nil && old.IsDir() && e.Mode&erofs.ModeType == erofs.ModeDir {
		// A directory over a directory updates its metadata and keeps
		// the lower layers' children.
		setInode(&old.Inode, e)
		t.layer[old] = true
		return nil
	}
	if old != nil {
		t.remove(old)
	}
	n := &erofs.Node{Name: base}
	setInode(&n.Inode, e)
	return t.add(dir, n)
}

func setInode(in *erofs.Inode, e *entry) {
	*in = erofs.Inode{
		Mode:    e.Mode,
		Nlink:   1,
		UID:     e.UID,
		GID:     e.GID,
		Rdev:    e.Rdev,
		Mtime:   erofs.Timespec{Sec: e.Mtime, Nsec: e.Nsec},
		Size:    e.Size,
		Target:  e.Target,
		Content: e.Content,
		Xattrs:  e.Xattrs,
	}
	if in.IsDir() {
		in.Nlink = 2
	}
	if !e.Digest.IsZero() {
		in.Digest = e.Digest
		in.Payload = e.Digest.ObjectPath()
	}
}

// finish sets the link count of hardlinked files and returns the root.
func (t *tree) finish() *erofs.Node {
	for p, ls := range t.links {
		p.Nlink = uint32(1 + len(ls))
	}
	return t.root
}

// startLayer begins a new layer (for opaque-directory bookkeeping).
func (t *tree) startLayer() { t.layer = map[*erofs.Node]bool{} }
