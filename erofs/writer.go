package erofs

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math"
	"math/bits"
	"slices"
	"strings"
)

// Composefs format versions (the header's composefs_version).
const (
	// DefaultMinVersion and DefaultMaxVersion are mkcomposefs's defaults.
	DefaultMinVersion = 0
	DefaultMaxVersion = 1
	// MaxFormatVersion is the newest format version the writer knows.
	MaxFormatVersion = 1
)

// ErrBadTree is returned (wrapped, naming the path) when a tree cannot be
// written as a composefs image.
var ErrBadTree = errors.New("erofs: tree cannot be written as a composefs image")

// WriteOptions controls Write. The zero value gives mkcomposefs's defaults
// (version 0, bumped to 1 only when the tree holds whiteouts).
type WriteOptions struct {
	// MinVersion is the format version to write (default 0).
	MinVersion int
	// MaxVersion is the version the writer may bump to when the tree needs
	// it (whiteouts need 1). 0 means DefaultMaxVersion; a value below
	// MinVersion (e.g. -1) means MinVersion, i.e. exactly MinVersion is
	// written, like `mkcomposefs --min-version=V --max-version=V`.
	MaxVersion int
}

// ExactVersion returns options that write exactly format version v.
func ExactVersion(v int) WriteOptions { return WriteOptions{MinVersion: v, MaxVersion: -1} }

func (o WriteOptions) versions() (int, int, error) {
	minV, maxV := o.MinVersion, o.MaxVersion
	if maxV == 0 {
		maxV = DefaultMaxVersion
	}
	if maxV < minV {
		maxV = minV
	}
	if minV < 0 || minV > MaxFormatVersion || maxV > MaxFormatVersion {
		return 0, 0, fmt.Errorf("%w: format version %d..%d not supported (max %d)", ErrBadTree, o.MinVersion, o.MaxVersion, MaxFormatVersion)
	}
	return minV, maxV, nil
}

// On-disk constants (EROFS and composefs).
const (
	wBlockSize      = 4096
	wSlotSize       = 32
	wSuperOffset    = 1024
	wSuperSize      = 128
	wInodeStart     = wSuperOffset + wSuperSize
	wCompactSize    = 32
	wExtendedSize   = 64
	wXattrHdrSize   = 12
	wComposefsMagic = 0xd078629a
	wErofsMagic     = 0xE0F5E1E2
	wFeatureCompat  = 0x2 | 0x4 // MTIME | XATTR_FILTER
	wFilterSeed     = 0x25BBE08F
	wMaxSharedRefs  = 128
	wMaxChunks      = 1024
	wNullAddr       = 0xFFFFFFFF

	wLayoutPlain  = 0
	wLayoutInline = 2
	wLayoutChunk  = 4
)

const (
	overlayPrefix  = "trusted.overlay."
	overlayEscaped = "trusted.overlay.overlay."
)

// wxattr is one xattr of an inode as the writer lays it out. The values of
// trusted.overlay.metacopy and .redirect are not stored: they are made from
// the inode's digest and payload when needed (gen).
type wxattr struct {
	name   string
	value  []byte // literal value (gen == genLiteral)
	shared int32  // index into the shared table, or -1 when stored inline
	gen    uint8
}

const (
	genLiteral  = iota
	genMetacopy // 4-byte header + the digest of the inode's source (empty without one)
	genRedirect // "/" + the payload of the inode's source
)

// valueLen returns the length of x's value on inode in.
func (in *winode) valueLen(x *wxattr) int {
	switch x.gen {
	case genMetacopy:
		if d := in.src.Digest; !d.IsZero() {
			return 4 + d.Algorithm().Size()
		}
		return 0
	case genRedirect:
		return 1 + len(in.src.Payload)
	}
	return len(x.value)
}

// appendValue appends x's value on inode in to b.
func (in *winode) appendValue(b []byte, x *wxattr) []byte {
	switch x.gen {
	case genMetacopy:
		if d := in.src.Digest; !d.IsZero() {
			b = append(b, 0, byte(4+d.Algorithm().Size()), 0, byte(d.Algorithm()))
			return append(b, d.Bytes()...)
		}
		return b
	case genRedirect:
		return append(append(b, '/'), in.src.Payload...)
	}
	return append(b, x.value...)
}

// sameValue reports whether x on inode a and y on inode b have equal values.
func sameValue(a *winode, x *wxattr, b *winode, y *wxattr) bool {
	if x.gen == y.gen {
		switch x.gen {
		case genMetacopy:
			return a.src.Digest == b.src.Digest
		case genRedirect:
			return a.src.Payload == b.src.Payload
		}
		return string(x.value) == string(y.value)
	}
	return string(a.appendValue(nil, x)) == string(b.appendValue(nil, y))
}

// winode is the writer's record of one serialized inode (BFS order). UID,
// GID and mtime are read from src; a whiteout stub's src is the root, whose
// owner and mtime the stubs copy.
type winode struct {
	src     *Node
	xattrs  []wxattr
	size    uint64 // st_size (the dumpfile SIZE for devices)
	nid     uint32 // inode slot (byte offset / 32); images stay below 128 GiB of metadata
	mode    uint32
	nlink   uint32
	rdev    uint32
	parent  int32
	first   int32 // BFS index of the first serialized child
	nblocks uint32
	tail    uint32
	ipad    uint32
	xsize   uint32
	budget  uint32 // libcomposefs's running xattr size of the cloned node (wraps like it)
	nshared uint16
	compact bool
	stub    bool // one of the root's "00".."ff" whiteout stubs
}

func (in *winode) typ() uint32 { return in.mode & ModeType }

type sharedXattr struct {
	name   string
	value  []byte
	count  int32 // while computing: the candidate it came from
	offset uint32
}

type dent struct {
	name string
	idx  int32
}

type writer struct {
	version  int
	inodes   []winode
	stubs    []string
	linkIdx  map[*Node]int32
	minMtime Timespec
	hasACL   bool

	nReal   int // serialized source nodes
	nXattrs int // xattr slots their lists take (see xattrSlots)

	xarena []wxattr // backing store of the inodes' xattr lists
	dchunk []dent   // scratch for emitDirents

	shared     []sharedXattr
	sharedSize uint64
	inodesEnd  uint64
	dataStart  uint64
	dataBlocks uint64
}

// Validate runs the checks Write does without writing anything.
func Validate(root *Node) error {
	_, err := prepare(root, WriteOptions{})
	return err
}

// Write writes the composefs EROFS image of the tree rooted at root to w,
// byte for byte what `mkcomposefs` (composefs 1.x) writes for the same
// tree. root is not modified: the overlay xattrs, the "." and ".." entries
// and the 256 root whiteout stubs exist only in the writer's own records.
//
// A regular file with Content is stored inline; one with Size > 0 and no
// Content is an external file: trusted.overlay.metacopy carries its Digest
// (a SHA-512 digest is written with fs-verity algorithm 2 and 64 bytes; the
// reference only knows SHA-256) and trusted.overlay.redirect is "/"+Payload.
func Write(w io.Writer, root *Node, opts WriteOptions) error {
	wr, err := prepare(root, opts)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64*1024)
	e := &emitter{w: bw}
	wr.emit(e)
	if e.err != nil {
		return fmt.Errorf("erofs: writing image: %w", e.err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("erofs: writing image: %w", err)
	}
	return nil
}

func badTree(n *Node, format string, args ...any) error {
	p := "<stub>"
	if n != nil {
		p = n.Path()
	}
	return fmt.Errorf("%w: %s: %s", ErrBadTree, p, fmt.Sprintf(format, args...))
}

func prepare(root *Node, opts WriteOptions) (*writer, error) {
	minV, maxV, err := opts.versions()
	if err != nil {
		return nil, err
	}
	if root == nil || !root.IsDir() || root.Link != nil {
		return nil, fmt.Errorf("%w: root is not a directory", ErrBadTree)
	}
	wr := &writer{version: minV}
	if err := wr.scan(root, maxV); err != nil {
		return nil, err
	}
	if err := wr.bfs(root); err != nil {
		return nil, err
	}
	if err := wr.rewrite(); err != nil {
		return nil, err
	}
	wr.computeShared()
	if err := wr.layout(); err != nil {
		return nil, err
	}
	return wr, nil
}

// scan walks the source tree once: version bump, hardlink targets, stubs.
func (wr *writer) scan(root *Node, maxV int) error {
	var walk func(n *Node) error
	walk = func(n *Node) error {
		for _, c := range n.Children {
			if c.Link != nil {
				t, err := resolveLink(c)
				if err != nil {
					return badTree(c, "%v", err)
				}
				if t.IsDir() {
					return badTree(c, "hardlink to directory %s", t.Path())
				}
				if wr.linkIdx == nil {
					wr.linkIdx = make(map[*Node]int32)
				}
				wr.linkIdx[t] = -1
				continue
			}
			wr.nReal++
			wr.nXattrs += xattrSlots(c)
			if c.Type() == ModeChar && c.Rdev == 0 && wr.version < 1 && maxV >= 1 {
				wr.version = 1
			}
			if len(c.Children) > 0 {
				if err := walk(c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	wr.nReal, wr.nXattrs = 1, xattrSlots(root)
	if err := walk(root); err != nil {
		return err
	}
	// Whiteout stubs "00".."ff" for the names the root does not use.
	const hexdigits = "0123456789abcdef"
	for i := 0; i < 256; i++ {
		name := string([]byte{hexdigits[i>>4], hexdigits[i&15]})
		if root.Child(name) == nil {
			wr.stubs = append(wr.stubs, name)
		}
	}
	return nil
}

// validateNode applies the checks libcomposefs makes on a node.
func validateNode(n *Node) error {
	if !validMode(n.Mode) {
		return badTree(n, "invalid file type %o", n.Mode&ModeType)
	}
	if !n.IsDir() && len(n.Children) > 0 {
		return badTree(n, "non-directory has children")
	}
	switch n.Type() {
	case ModeReg:
		if len(n.Content) > 0 {
			if uint64(len(n.Content)) != n.Size {
				return badTree(n, "inline content is %d bytes, size is %d", len(n.Content), n.Size)
			}
			if len(n.Content) > MaxInlineContent {
				return badTree(n, "inline content is %d bytes (max %d)", len(n.Content), MaxInlineContent)
			}
		} else if n.Size > 0 {
			if _, count := chunking(n.Size); count > wMaxChunks {
				return badTree(n, "file too large (%d bytes)", n.Size)
			}
		}
		if len(n.Payload) >= MaxPayloadLen {
			return badTree(n, "payload is %d bytes long (max %d)", len(n.Payload), MaxPayloadLen-1)
		}
		if d := n.Digest; !d.IsZero() && d.Algorithm().Size() == 0 {
			return badTree(n, "unknown digest algorithm")
		}
	case ModeLink:
		t := n.Inode.Target
		if t == "" || len(t) >= MaxPayloadLen || strings.IndexByte(t, 0) >= 0 {
			return badTree(n, "invalid symlink target (%d bytes)", len(t))
		}
	}
	budget := 0
	for i, x := range n.Xattrs {
		if len(x.Name) == 0 || len(x.Name) > MaxXattrNameLen || strings.IndexByte(x.Name, 0) >= 0 {
			return badTree(n, "invalid xattr name %q", x.Name)
		}
		if len(x.Value) > MaxXattrValueLen {
			return badTree(n, "xattr %s: value too long (%d bytes)", x.Name, len(x.Value))
		}
		for _, y := range n.Xattrs[:i] {
			if y.Name == x.Name {
				return badTree(n, "duplicate xattr %s", x.Name)
			}
		}
		budget += 7 + len(x.Name) + len(x.Value)
	}
	if len(n.Xattrs) > 0 && budget+12 > MaxXattrBudget {
		return badTree(n, "xattrs exceed %d bytes", MaxXattrBudget)
	}
	return nil
}

// bfs numbers the inodes breadth first, children in sorted order, hardlink
// entries skipped; the root's whiteout stubs take their sorted places.
func (wr *writer) bfs(root *Node) error {
	wr.inodes = make([]winode, 0, wr.nReal+len(wr.stubs))
	wr.inodes = append(wr.inodes, wr.newInode(root, 0))
	for i := 0; i < len(wr.inodes); i++ {
		in := &wr.inodes[i]
		n := in.src
		if in.stub {
			continue
		}
		if err := validateNode(n); err != nil {
			return err
		}
		if !n.IsDir() {
			continue
		}
		in.first = int32(len(wr.inodes))
		nlink := uint32(2)
		var stubs []string
		if i == 0 {
			stubs = wr.stubs
		}
		kids := n.Children
		prev := ""
		for len(kids) > 0 || len(stubs) > 0 {
			if len(kids) > 0 && (len(stubs) == 0 || kids[0].Name < stubs[0]) {
				c := kids[0]
				kids = kids[1:]
				if err := validName(c.Name); err != nil {
					return badTree(n, "%v", err)
				}
				if c.Name <= prev && prev != "" {
					return badTree(n, "children not sorted or duplicated at %q", c.Name)
				}
				prev = c.Name
				if c.Link != nil {
					continue
				}
				if c.IsDir() {
					nlink++
				}
				if len(wr.inodes) >= math.MaxInt32 {
					return badTree(c, "too many inodes")
				}
				if wr.linkIdx != nil {
					if _, ok := wr.linkIdx[c]; ok {
						wr.linkIdx[c] = int32(len(wr.inodes))
					}
				}
				wr.inodes = append(wr.inodes, wr.newInode(c, int32(i)))
			} else {
				wr.inodes = append(wr.inodes, winode{
					src: root, stub: true, mode: ModeChar | 0o644, nlink: 1,
				})
				stubs = stubs[1:]
			}
			in = &wr.inodes[i] // the append may have moved it
		}
		in.nlink = nlink
	}
	for t, idx := range wr.linkIdx {
		if idx < 0 {
			return badTree(t, "hardlink target is not in the tree")
		}
	}
	return nil
}

func (wr *writer) newInode(n *Node, parent int32) winode {
	in := winode{src: n, mode: n.Mode, nlink: n.Nlink, size: n.Size, parent: parent}
	switch n.Type() {
	case ModeChar, ModeBlock:
		in.rdev = n.Rdev
	case ModeLink:
		in.size = uint64(len(n.Inode.Target))
	}
	return in
}

// setXattr adds or replaces an xattr the way lcfs_node_set_xattr does on
// the writer's clone, including its size accounting (which starts at 0 on
// a clone, so a replaced value can make it wrap and fail as it does there).
func (in *winode) setXattr(name string, value []byte) error {
	return in.setXattrGen(wxattr{name: name, value: value})
}

func (in *winode) setXattrGen(x wxattr) error {
	name := x.name
	for i := range in.xattrs {
		if in.xattrs[i].name == name {
			oldLen := in.valueLen(&in.xattrs[i])
			last := len(in.xattrs) - 1
			in.xattrs[i] = in.xattrs[last]
			in.xattrs = in.xattrs[:last]
			if len(in.xattrs) > 0 {
				in.budget -= uint32(7 + len(name) + oldLen)
			} else {
				in.budget = 0
			}
			break
		}
	}
	entry := uint32(7 + len(name) + in.valueLen(&x))
	if len(in.xattrs) == 0 {
		entry += wXattrHdrSize
	}
	if in.budget+entry > MaxXattrBudget {
		return badTree(in.src, "cannot set xattr %s: inode xattrs exceed %d bytes", name, MaxXattrBudget)
	}
	in.budget += entry
	in.xattrs = append(in.xattrs, x)
	return nil
}

var (
	emptyValue = []byte{}
	valueX     = []byte("x")
	valueY     = []byte("y")
)

// rewrite adds the overlayfs xattrs (rewrite_tree_for_erofs).
func (wr *writer) rewrite() error {
	for i := range wr.inodes {
		in := &wr.inodes[i]
		n := in.src
		if in.stub {
			continue
		}
		if len(n.Xattrs) > 0 {
			in.xattrs = wr.allocXattrs(len(n.Xattrs))
			for j, x := range n.Xattrs {
				name := x.Name
				if strings.HasPrefix(name, overlayPrefix) {
					name = overlayEscaped + name[len(overlayPrefix):]
				}
				in.xattrs[j] = wxattr{name: name, value: x.Value}
			}
		}
		switch n.Type() {
		case ModeReg:
			if n.Size > 0 && len(n.Content) == 0 {
				if len(in.xattrs) == 0 {
					in.xattrs = wr.allocXattrs(0)
				}
				if err := in.setXattrGen(wxattr{name: overlayPrefix + "metacopy", gen: genMetacopy}); err != nil {
					return err
				}
				if n.Payload != "" {
					if err := in.setXattrGen(wxattr{name: overlayPrefix + "redirect", gen: genRedirect}); err != nil {
						return err
					}
				}
			}
		case ModeChar:
			if n.Rdev == 0 {
				in.mode = ModeReg | in.mode&^ModeType
				in.size = 0
				if err := in.setXattr(overlayEscaped+"whiteout", emptyValue); err != nil {
					return err
				}
				if err := in.setXattr("user.overlay.whiteout", emptyValue); err != nil {
					return err
				}
			}
		case ModeDir:
			for _, c := range n.Children {
				if c.Link != nil || c.Type() != ModeChar || c.Rdev != 0 {
					continue
				}
				if err := in.setXattr(overlayEscaped+"whiteouts", emptyValue); err != nil {
					return err
				}
				if err := in.setXattr("user.overlay.whiteouts", emptyValue); err != nil {
					return err
				}
				if wr.version >= 1 {
					if err := in.setXattr(overlayEscaped+"opaque", valueX); err != nil {
						return err
					}
					if err := in.setXattr("user.overlay.opaque", valueX); err != nil {
						return err
					}
				}
			}
		}
	}
	root := &wr.inodes[0]
	if err := root.setXattr(overlayPrefix+"opaque", valueY); err != nil {
		return err
	}
	var selinux []byte
	hasSelinux := false
	for _, x := range root.xattrs {
		if x.name == "security.selinux" {
			selinux, hasSelinux = x.value, true
		}
	}
	// Sort each inode's xattrs by name; give the stubs root's label.
	for i := range wr.inodes {
		in := &wr.inodes[i]
		if in.stub && hasSelinux {
			in.xattrs = []wxattr{{name: "security.selinux", value: selinux}}
		}
		if len(in.xattrs) > 1 {
			slices.SortFunc(in.xattrs, func(a, b wxattr) int { return strings.Compare(a.name, b.name) })
		}
		for _, x := range in.xattrs {
			if x.name == "system.posix_acl_access" || x.name == "system.posix_acl_default" {
				wr.hasACL = true
			}
		}
		mt := in.src.Mtime
		if i == 0 || mt.Sec < wr.minMtime.Sec || (mt.Sec == wr.minMtime.Sec && mt.Nsec < wr.minMtime.Nsec) {
			wr.minMtime = mt
		}
	}
	return nil
}

// xattrIndex returns the EROFS name index and the name suffix stored.
func xattrIndex(name string) (uint8, string) {
	switch {
	case strings.HasPrefix(name, "user."):
		return 1, name[5:]
	case strings.HasPrefix(name, "system.posix_acl_access"):
		return 2, name[len("system.posix_acl_access"):]
	case strings.HasPrefix(name, "system.posix_acl_default"):
		return 3, name[len("system.posix_acl_default"):]
	case strings.HasPrefix(name, "trusted."):
		return 4, name[8:]
	case strings.HasPrefix(name, "security."):
		return 6, name[9:]
	}
	return 0, name
}

func xattrDiskSize(name string, valueLen int) uint64 {
	_, suffix := xattrIndex(name)
	return roundUp(uint64(4+len(suffix)+valueLen), 4)
}

func roundUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

// xattrSlots returns how many xattr slots allocXattrs reserves for n.
func xattrSlots(n *Node) int {
	if len(n.Xattrs) > 0 || (n.Type() == ModeReg && n.Size > 0 && len(n.Content) == 0) {
		return len(n.Xattrs) + 2
	}
	return 0
}

// allocXattrs returns a list of n xattrs with room for two more, carved
// from one arena (most inodes have a few xattrs; one allocation each would
// dominate the writer's allocations).
func (wr *writer) allocXattrs(n int) []wxattr {
	if cap(wr.xarena)-len(wr.xarena) < n+2 {
		wr.xarena = make([]wxattr, 0, max(n+2, min(wr.nXattrs, 1<<16)))
	}
	l := len(wr.xarena)
	wr.xarena = wr.xarena[:l+n+2]
	return wr.xarena[l : l+n : l+n+2]
}

// computeShared finds the (name, value) pairs used by more than one inode
// and orders the shared table like libcomposefs (descending). A first pass
// counts 64-bit hashes only; the pairs whose hash repeats are then counted
// exactly, so memory stays small when most pairs are unique (metacopy and
// redirect values).
func (wr *writer) computeShared() {
	seed := maphash.MakeSeed()
	var scratch []byte
	hash := func(in *winode, x *wxattr) uint64 {
		var h maphash.Hash
		h.SetSeed(seed)
		h.WriteString(x.name)
		h.WriteByte(0)
		if x.gen == genMetacopy {
			// the value is a function of the digest alone
			return h.Sum64() ^ maphash.Comparable(seed, in.src.Digest)
		}
		scratch = in.appendValue(scratch[:0], x)
		h.Write(scratch)
		return h.Sum64()
	}
	counts := make(map[uint64]int32, wr.nXattrs/2)
	for i := range wr.inodes {
		in := &wr.inodes[i]
		for j := range in.xattrs {
			counts[hash(in, &in.xattrs[j])]++
		}
	}
	// Exact counts for the pairs whose hash repeats: candidates chained by
	// hash, each with a representative (inode, xattr).
	type cand struct {
		in    int32
		x     int32
		count int32
		next  int32
	}
	var cands []cand
	heads := make(map[uint64]int32)
	find := func(i int32, j int32, h uint64) int32 {
		in := &wr.inodes[i]
		x := &in.xattrs[j]
		head, ok := heads[h]
		if ok {
			for k := head; k >= 0; k = cands[k].next {
				rin := &wr.inodes[cands[k].in]
				rx := &rin.xattrs[cands[k].x]
				if rx.name == x.name && sameValue(rin, rx, in, x) {
					return k
				}
			}
		}
		next := int32(-1)
		if ok {
			next = head
		}
		cands = append(cands, cand{in: i, x: j, next: next})
		heads[h] = int32(len(cands) - 1)
		return int32(len(cands) - 1)
	}
	// x.shared holds the candidate index until the table is sorted.
	for i := range wr.inodes {
		in := &wr.inodes[i]
		for j := range in.xattrs {
			x := &in.xattrs[j]
			x.shared = -1
			if h := hash(in, x); counts[h] > 1 {
				k := find(int32(i), int32(j), h)
				cands[k].count++
				x.shared = k
			}
		}
	}
	clear(counts)
	for k := range cands {
		if cands[k].count > 1 {
			in := &wr.inodes[cands[k].in]
			x := &in.xattrs[cands[k].x]
			wr.shared = append(wr.shared, sharedXattr{name: x.name, value: in.appendValue(nil, x), count: int32(k)})
		}
	}
	slices.SortFunc(wr.shared, func(a, b sharedXattr) int {
		if c := strings.Compare(b.name, a.name); c != 0 {
			return c
		}
		if len(a.value) != len(b.value) {
			return len(b.value) - len(a.value)
		}
		return strings.Compare(string(b.value), string(a.value))
	})
	// pos maps a candidate to its place in the shared table (or -1).
	pos := make([]int32, len(cands))
	for k := range pos {
		pos[k] = -1
	}
	var off uint64
	for i := range wr.shared {
		s := &wr.shared[i]
		pos[s.count] = int32(i)
		s.offset = uint32(off)
		off += xattrDiskSize(s.name, len(s.value))
	}
	wr.sharedSize = off
	for i := range wr.inodes {
		in := &wr.inodes[i]
		refs := 0
		for j := range in.xattrs {
			x := &in.xattrs[j]
			if x.shared < 0 {
				continue
			}
			x.shared = pos[x.shared]
			if x.shared >= 0 {
				if refs >= wMaxSharedRefs {
					x.shared = -1
					continue
				}
				refs++
			}
		}
	}
}

// chunking returns the chunk size bits and chunk count of an external file.
func chunking(size uint64) (uint32, uint64) {
	cb := uint32(bits.Len64(size - 1)) // ilog2(size-1)+1
	cb = max(cb, 12)
	cb = min(cb, 12+31)
	chunk := uint64(1) << cb
	return cb, (size-1)/chunk + 1
}

// dirents calls fn for each entry of directory inode di in on-disk order:
// its children (the root's whiteout stubs included) and "." and "..".
func (wr *writer) dirents(di int32, fn func(name string, idx int32)) {
	in := &wr.inodes[di]
	var kids []*Node
	if !in.stub {
		kids = in.src.Children
	}
	var stubs []string
	if di == 0 {
		stubs = wr.stubs
	}
	next := in.first
	dots := [2]string{".", ".."}
	dotIdx := [2]int32{di, in.parent}
	d := 0
	for len(kids) > 0 || len(stubs) > 0 || d < 2 {
		// smallest of kids[0], stubs[0], dots[d]
		which := -1
		var best string
		if len(kids) > 0 {
			which, best = 0, kids[0].Name
		}
		if len(stubs) > 0 && (which < 0 || stubs[0] < best) {
			which, best = 1, stubs[0]
		}
		if d < 2 && (which < 0 || dots[d] < best) {
			which, best = 2, dots[d]
		}
		switch which {
		case 0:
			c := kids[0]
			kids = kids[1:]
			if c.Link != nil {
				t, _ := resolveLink(c)
				fn(best, wr.linkIdx[t])
				continue
			}
			fn(best, next)
			next++
		case 1:
			stubs = stubs[1:]
			fn(best, next)
			next++
		case 2:
			fn(best, dotIdx[d])
			d++
		}
	}
}

func (wr *writer) dirSize(di int32) (uint32, uint32) {
	var nblocks uint64
	var used uint64
	wr.dirents(di, func(name string, _ int32) {
		l := uint64(12 + len(name))
		if used+l > wBlockSize {
			nblocks++
			used = 0
		}
		used += l
	})
	if used > wBlockSize/2 {
		nblocks++
		used = 0
	}
	return uint32(min(nblocks, math.MaxUint32)), uint32(used)
}

// layout places every inode (compute_erofs_inodes).
func (wr *writer) layout() error {
	pos := uint64(wInodeStart)
	for i := range wr.inodes {
		in := &wr.inodes[i]
		typ := in.typ()
		switch {
		case typ == ModeDir:
			in.nblocks, in.tail = wr.dirSize(int32(i))
		case typ == ModeLink:
			in.tail = uint32(len(in.src.Inode.Target))
		case typ == ModeReg && in.size > 0:
			if len(in.src.Content) > 0 {
				in.nblocks = uint32(in.size / wBlockSize)
				in.tail = uint32(in.size % wBlockSize)
				if in.tail > wBlockSize/2 {
					in.nblocks++
					in.tail = 0
				}
			} else {
				_, count := chunking(in.size)
				in.tail = uint32(count * 4)
			}
		}
		size := in.size
		if typ == ModeDir {
			size = uint64(in.nblocks)*wBlockSize + uint64(in.tail)
		}
		in.compact = in.src.Mtime == wr.minMtime && in.nlink <= math.MaxUint16 &&
			in.src.UID <= math.MaxUint16 && in.src.GID <= math.MaxUint16 && size <= math.MaxUint32
		isize := uint64(wExtendedSize)
		if in.compact {
			isize = wCompactSize
		}
		var unshared uint64
		for _, x := range in.xattrs {
			if x.shared >= 0 {
				in.nshared++
			} else {
				unshared += xattrDiskSize(x.name, in.valueLen(&x))
			}
		}
		if len(in.xattrs) > 0 {
			xs := roundUp(wXattrHdrSize+uint64(in.nshared)*4+unshared, 4)
			if (xs-wXattrHdrSize)/4+1 > math.MaxUint16 {
				return badTree(in.src, "too many xattrs")
			}
			in.xsize = uint32(xs)
		}
		ppos := pos
		pos = roundUp(pos, wSlotSize)
		extra := wr.tailPadding(in, pos, isize+uint64(in.xsize))
		pos += extra
		in.ipad = uint32(pos - ppos)
		if pos/wSlotSize > math.MaxUint32 {
			return badTree(in.src, "image metadata too large")
		}
		in.nid = uint32(pos / wSlotSize)
		wr.dataBlocks += uint64(in.nblocks)
		pos += isize + uint64(in.xsize) + uint64(in.tail)
	}
	if wr.inodes[0].nid > math.MaxUint16-1 {
		return badTree(wr.inodes[0].src, "root inode too far into the image")
	}
	wr.inodesEnd = roundUp(pos, wSlotSize)
	wr.dataStart = roundUp(wr.inodesEnd+wr.sharedSize, wBlockSize)
	if wr.dataStart/wBlockSize+wr.dataBlocks > math.MaxUint32 {
		return fmt.Errorf("%w: image too large", ErrBadTree)
	}
	return nil
}

// tailPadding returns the padding to put before an inode so that its
// inline tail does not cross a block, moving the tail to a data block when
// it cannot fit (compute_erofs_inode_padding_for_tail).
func (wr *writer) tailPadding(in *winode, pos, nonTail uint64) uint64 {
	total := nonTail + uint64(in.tail)
	if in.typ() == ModeLink {
		if total/wBlockSize > 0 {
			in.nblocks++
			in.tail = 0
		}
		if pos/wBlockSize != (pos+total-1)/wBlockSize {
			return roundUp(pos, wBlockSize) - pos
		}
		return 0
	}
	rem := wBlockSize - (pos+nonTail)%wBlockSize
	if rem < uint64(in.tail) {
		extra := roundUp(rem, wSlotSize)
		rem = wBlockSize - (pos+nonTail+extra)%wBlockSize
		if uint64(in.tail) <= rem {
			return extra
		}
		in.nblocks++
		in.tail = 0
		return roundUp(pos, wBlockSize) - pos
	}
	return 0
}

// emitter writes sequentially, tracking the offset; the first error sticks.
type emitter struct {
	w     *bufio.Writer
	off   uint64
	err   error
	buf   [64]byte
	value []byte // scratch for generated xattr values
}

var zeros [wBlockSize]byte

func (e *emitter) write(b []byte) {
	if e.err != nil {
		return
	}
	_, e.err = e.w.Write(b)
	e.off += uint64(len(b))
}

func (e *emitter) writeString(s string) {
	if e.err != nil {
		return
	}
	_, e.err = e.w.WriteString(s)
	e.off += uint64(len(s))
}

func (e *emitter) pad(n uint64) {
	for n > 0 {
		k := min(n, wBlockSize)
		e.write(zeros[:k])
		n -= k
	}
}

func (e *emitter) align(a uint64) { e.pad(roundUp(e.off, a) - e.off) }

// nullAddrs writes n chunk indexes that map nothing (EROFS_NULL_ADDR).
func (e *emitter) nullAddrs(n uint64) {
	r := e.buf[:4]
	binary.LittleEndian.PutUint32(r, wNullAddr)
	for range n {
		e.write(r)
	}
}

func (wr *writer) emit(e *emitter) {
	le := binary.LittleEndian
	// composefs header
	h := e.buf[:32]
	clear(h)
	le.PutUint32(h[0:], wComposefsMagic)
	le.PutUint32(h[4:], 1)
	if wr.hasACL {
		le.PutUint32(h[8:], 1)
	}
	le.PutUint32(h[12:], uint32(wr.version))
	e.write(h)
	e.pad(wSuperOffset - 32)
	// superblock
	var sb [wSuperSize]byte
	le.PutUint32(sb[0:], wErofsMagic)
	le.PutUint32(sb[8:], wFeatureCompat)
	sb[12] = 12
	le.PutUint16(sb[14:], uint16(wr.inodes[0].nid))
	le.PutUint64(sb[16:], uint64(len(wr.inodes)))
	le.PutUint64(sb[24:], uint64(wr.minMtime.Sec))
	le.PutUint32(sb[32:], wr.minMtime.Nsec)
	le.PutUint32(sb[36:], uint32(wr.dataStart/wBlockSize+wr.dataBlocks))
	le.PutUint32(sb[44:], uint32(wr.inodesEnd/wBlockSize))
	e.write(sb[:])

	// inodes
	current := wr.dataStart
	for i := range wr.inodes {
		wr.emitInode(e, int32(i), &current)
	}
	e.align(wSlotSize)
	// shared xattrs
	for _, s := range wr.shared {
		e.writeXattr(s.name, s.value)
	}
	e.align(wBlockSize)
	// data blocks
	for i := range wr.inodes {
		wr.emitData(e, int32(i))
	}
}

func (e *emitter) writeXattr(name string, value []byte) {
	idx, suffix := xattrIndex(name)
	h := e.buf[:4]
	h[0] = byte(len(suffix))
	h[1] = idx
	binary.LittleEndian.PutUint16(h[2:], uint16(len(value)))
	e.write(h)
	e.writeString(suffix)
	e.write(value)
	e.align(4)
}

func (wr *writer) emitInode(e *emitter, i int32, current *uint64) {
	le := binary.LittleEndian
	in := &wr.inodes[i]
	e.pad(uint64(in.ipad))
	typ := in.typ()
	layout := uint16(wLayoutPlain)
	if in.tail > 0 {
		layout = wLayoutInline
	}
	var size uint64
	var iu uint32
	var chunkCount uint64
	switch typ {
	case ModeDir:
		size = uint64(in.nblocks)*wBlockSize + uint64(in.tail)
	case ModeReg:
		size = in.size
	case ModeLink:
		size = uint64(in.tail)
		if in.nblocks > 0 {
			size = in.size
		}
	}
	if in.nblocks > 0 && (typ == ModeDir || typ == ModeReg || typ == ModeLink) {
		iu = uint32(*current / wBlockSize)
		*current += uint64(in.nblocks) * wBlockSize
	}
	switch typ {
	case ModeChar, ModeBlock:
		iu = in.rdev
	case ModeReg:
		if in.size > 0 && len(in.src.Content) == 0 {
			var bitsz uint32
			bitsz, chunkCount = chunking(in.size)
			layout = wLayoutChunk
			iu = iu&0xFFFF0000 | (bitsz - 12)
		}
	}
	var icount uint16
	if in.xsize > 0 {
		icount = uint16((in.xsize-wXattrHdrSize)/4 + 1)
	}
	b := e.buf[:]
	clear(b)
	if in.compact {
		b = b[:wCompactSize]
		le.PutUint16(b[0:], layout<<1)
		le.PutUint16(b[2:], icount)
		le.PutUint16(b[4:], uint16(in.mode))
		le.PutUint16(b[6:], uint16(in.nlink))
		le.PutUint32(b[8:], uint32(size))
		le.PutUint32(b[16:], iu)
		le.PutUint32(b[20:], uint32(i))
		le.PutUint16(b[24:], uint16(in.src.UID))
		le.PutUint16(b[26:], uint16(in.src.GID))
	} else {
		b = b[:wExtendedSize]
		le.PutUint16(b[0:], layout<<1|1)
		le.PutUint16(b[2:], icount)
		le.PutUint16(b[4:], uint16(in.mode))
		le.PutUint64(b[8:], size)
		le.PutUint32(b[16:], iu)
		le.PutUint32(b[20:], uint32(i))
		le.PutUint32(b[24:], in.src.UID)
		le.PutUint32(b[28:], in.src.GID)
		le.PutUint64(b[32:], uint64(in.src.Mtime.Sec))
		le.PutUint32(b[40:], in.src.Mtime.Nsec)
		le.PutUint32(b[44:], in.nlink)
	}
	e.write(b)

	if in.xsize > 0 {
		start := e.off
		var filter uint32
		for _, x := range in.xattrs {
			idx, suffix := xattrIndex(x.name)
			filter |= 1 << (xxh32(suffix, wFilterSeed+uint32(idx)) & 31)
		}
		h := e.buf[:wXattrHdrSize]
		clear(h)
		le.PutUint32(h[0:], ^filter)
		h[4] = byte(in.nshared)
		e.write(h)
		for _, x := range in.xattrs {
			if x.shared >= 0 {
				r := e.buf[:4]
				le.PutUint32(r, uint32((wr.inodesEnd%wBlockSize+uint64(wr.shared[x.shared].offset))/4))
				e.write(r)
			}
		}
		for _, x := range in.xattrs {
			if x.shared < 0 {
				e.value = in.appendValue(e.value[:0], &x)
				e.writeXattr(x.name, e.value)
			}
		}
		e.pad(uint64(in.xsize) - (e.off - start))
	}

	switch typ {
	case ModeDir:
		if in.tail > 0 {
			wr.emitDirents(e, i, false)
		}
	case ModeLink:
		if in.nblocks == 0 {
			e.writeString(in.src.Inode.Target)
		}
	case ModeReg:
		if in.tail > 0 {
			if len(in.src.Content) > 0 {
				e.write(in.src.Content[len(in.src.Content)-int(in.tail):])
			} else {
				e.nullAddrs(chunkCount)
			}
		}
	}
}

// emitDirents writes a directory's dirent blocks (blocks true) or its inline
// tail (blocks false).
func (wr *writer) emitDirents(e *emitter, di int32, blocks bool) {
	in := &wr.inodes[di]
	chunk := wr.dchunk[:0]
	defer func() { wr.dchunk = chunk[:0] }()
	var used uint64
	var written uint32
	flush := func(align uint64) {
		nameoff := uint64(len(chunk) * 12)
		d := e.buf[:12]
		for _, c := range chunk {
			t := &wr.inodes[c.idx]
			binary.LittleEndian.PutUint64(d[0:], uint64(t.nid))
			binary.LittleEndian.PutUint16(d[8:], uint16(nameoff))
			d[10] = fileType(t.mode)
			d[11] = 0
			e.write(d)
			nameoff += uint64(len(c.name))
		}
		for _, c := range chunk {
			e.writeString(c.name)
		}
		e.align(align)
	}
	wr.dirents(di, func(name string, idx int32) {
		l := uint64(12 + len(name))
		if used+l > wBlockSize {
			if blocks {
				flush(wBlockSize)
			}
			written++
			used = 0
			chunk = chunk[:0]
		}
		used += l
		chunk = append(chunk, dent{name, idx})
	})
	if written < in.nblocks {
		if blocks {
			flush(wBlockSize)
		}
		used = 0
	}
	if !blocks && used > 0 {
		flush(1)
	}
}

func fileType(mode uint32) byte {
	switch mode & ModeType {
	case ModeReg:
		return 1
	case ModeDir:
		return 2
	case ModeChar:
		return 3
	case ModeBlock:
		return 4
	case ModeFifo:
		return 5
	case ModeSocket:
		return 6
	case ModeLink:
		return 7
	}
	return 0
}

func (wr *writer) emitData(e *emitter, i int32) {
	in := &wr.inodes[i]
	if in.nblocks == 0 {
		return
	}
	switch in.typ() {
	case ModeDir:
		wr.emitDirents(e, i, true)
	case ModeReg:
		if len(in.src.Content) == 0 {
			e.nullAddrs(wMaxChunks)
			return
		}
		e.write(in.src.Content[:min(len(in.src.Content), wBlockSize)])
		e.align(wBlockSize)
	case ModeLink:
		t := in.src.Inode.Target
		e.writeString(t[:min(len(t), wBlockSize)])
		e.align(wBlockSize)
	}
}
