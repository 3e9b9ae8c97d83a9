package erofs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/twinroot/twinroot/verity"
)

// Errors returned by the image reader.
var (
	// ErrCorrupt is wrapped by every error about a malformed image; the
	// message names the byte offset or inode (nid) at fault.
	ErrCorrupt = errors.New("erofs: corrupt image")
	// ErrUnsupported is returned for well-formed EROFS features that
	// composefs images never use (compression, long xattr prefixes,
	// other block sizes).
	ErrUnsupported = errors.New("erofs: unsupported image feature")
)

// On-disk constants of the composefs header and the EROFS superblock.
const (
	rdComposefsMagic     = 0xd078629a
	rdComposefsHdrVer    = 1
	rdComposefsFlagACL   = 1
	rdSuperOffset        = 1024
	rdSuperSize          = 128
	rdErofsMagic         = 0xE0F5E1E2
	rdBlockSize          = 4096
	rdBlockBits          = 12
	rdSlotBits           = 5
	rdCompactInodeSize   = 32
	rdExtendedInodeSize  = 64
	rdDirentSize         = 12
	rdXattrHeaderSize    = 12
	rdXattrEntrySize     = 4
	rdLayoutFlatPlain    = 0
	rdLayoutFlatInline   = 2
	rdLayoutChunkBased   = 4
	rdMaxInlineContent   = 5000
	rdMaxSymlinkTarget   = 4095
	rdMaxTreeDepth       = 2048
	rdMetacopyHeaderSize = 4
)

// Image is an open composefs EROFS image. It reads lazily through the
// io.ReaderAt it was opened on; every offset is checked against the image
// size, so a hostile image yields an error wrapping ErrCorrupt, never a
// panic or an allocation larger than the image.
type Image struct {
	r    io.ReaderAt
	size int64
	c    io.Closer

	flags            uint32
	composefsVersion uint32
	rootNid          uint64
	buildTime        Timespec
	metaStart        int64 // byte offset of nid 0
	xattrStart       int64 // byte offset of the shared xattr table
}

// Open reads and checks the composefs header and EROFS superblock of the
// image held in r (size bytes long).
func Open(r io.ReaderAt, size int64) (*Image, error) {
	if size < rdSuperOffset+rdSuperSize {
		return nil, fmt.Errorf("%w: image is %d bytes, too short for a superblock", ErrCorrupt, size)
	}
	hdr := make([]byte, rdSuperOffset+rdSuperSize)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		return nil, fmt.Errorf("erofs: reading superblock: %w", err)
	}
	le := binary.LittleEndian
	if m := le.Uint32(hdr[0:]); m != rdComposefsMagic {
		return nil, fmt.Errorf("%w: offset 0: composefs magic %#x, want %#x", ErrCorrupt, m, rdComposefsMagic)
	}
	if v := le.Uint32(hdr[4:]); v != rdComposefsHdrVer {
		return nil, fmt.Errorf("%w: composefs header version %d", ErrUnsupported, v)
	}
	sb := hdr[rdSuperOffset:]
	if m := le.Uint32(sb[0:]); m != rdErofsMagic {
		return nil, fmt.Errorf("%w: offset %d: EROFS magic %#x, want %#x", ErrCorrupt, rdSuperOffset, m, rdErofsMagic)
	}
	if bits := sb[12]; bits != rdBlockBits {
		return nil, fmt.Errorf("%w: block size 2^%d", ErrUnsupported, bits)
	}
	if ext := sb[13]; ext != 0 {
		return nil, fmt.Errorf("%w: %d superblock extension slots", ErrUnsupported, ext)
	}
	img := &Image{
		r:                r,
		size:             size,
		flags:            le.Uint32(hdr[8:]),
		composefsVersion: le.Uint32(hdr[12:]),
		rootNid:          uint64(le.Uint16(sb[14:])),
	}
	// superblock layout: magic 0, checksum 4, feature_compat 8, blkszbits 12,
	// sb_extslots 13, root_nid 14, inos 16, build_time 24, build_time_nsec 32,
	// blocks 36, meta_blkaddr 40, xattr_blkaddr 44.
	img.buildTime = Timespec{Sec: int64(le.Uint64(sb[24:])), Nsec: le.Uint32(sb[32:])}
	img.metaStart = int64(le.Uint32(sb[40:])) * rdBlockSize
	img.xattrStart = int64(le.Uint32(sb[44:])) * rdBlockSize
	if img.metaStart >= size || img.xattrStart > size {
		return nil, fmt.Errorf("%w: offset %d: metadata or xattr area outside the image", ErrCorrupt, rdSuperOffset)
	}
	if incompat := le.Uint32(sb[80:]); incompat&^0x4 != 0 { // CHUNKED_FILE is fine
		return nil, fmt.Errorf("%w: incompatible features %#x", ErrUnsupported, incompat)
	}
	return img, nil
}

// OpenFile opens the image file at path. Close the Image when done.
func OpenFile(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	img, err := Open(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	img.c = f
	return img, nil
}

// Close closes the file an Image was opened from by OpenFile; for images
// from Open it does nothing.
func (img *Image) Close() error {
	if img.c == nil {
		return nil
	}
	c := img.c
	img.c = nil
	return c.Close()
}

// HasACL reports whether the composefs header says some inode carries a
// POSIX ACL (mounts then must not pass "noacl").
func (img *Image) HasACL() bool { return img.flags&rdComposefsFlagACL != 0 }

// FormatVersion returns the composefs format version from the header (0 or 1).
func (img *Image) FormatVersion() int { return int(img.composefsVersion) }

// Size returns the image size in bytes.
func (img *Image) Size() int64 { return img.size }

// read returns n bytes at off, or an ErrCorrupt error when they are not all
// inside the image.
func (img *Image) read(off int64, n int, what string) ([]byte, error) {
	if off < 0 || n < 0 || off > img.size || int64(n) > img.size-off {
		return nil, fmt.Errorf("%w: %s at offset %d (+%d) is outside the %d-byte image", ErrCorrupt, what, off, n, img.size)
	}
	b := make([]byte, n)
	if n == 0 {
		return b, nil
	}
	if _, err := img.r.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("erofs: reading %s at offset %d: %w", what, off, err)
	}
	return b, nil
}

// rdRawInode is a decoded on-disk inode with its location.
type rdRawInode struct {
	nid       uint64
	off       int64 // byte offset of the inode
	layout    int
	isize     int // 32 or 64
	xsize     int // xattr body size
	mode      uint32
	nlink     uint32
	size      uint64
	iu        uint32
	ino       uint32
	uid, gid  uint32
	mtime     Timespec
	xattrBody []byte
}

func (ri *rdRawInode) tailOff() int64 { return ri.off + int64(ri.isize) + int64(ri.xsize) }

// inode decodes the inode at nid.
func (img *Image) inode(nid uint64) (*rdRawInode, error) {
	if nid > uint64(img.size)>>rdSlotBits {
		return nil, fmt.Errorf("%w: nid %d is outside the image", ErrCorrupt, nid)
	}
	off := img.metaStart + int64(nid)<<rdSlotBits
	b, err := img.read(off, rdCompactInodeSize, fmt.Sprintf("inode nid %d", nid))
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	format := le.Uint16(b[0:])
	ri := &rdRawInode{nid: nid, off: off, layout: int(format>>1) & 7, mode: uint32(le.Uint16(b[4:]))}
	if format&^0xf != 0 {
		return nil, fmt.Errorf("%w: nid %d: unknown inode format bits %#x", ErrCorrupt, nid, format)
	}
	icount := le.Uint16(b[2:])
	if icount > 0 {
		ri.xsize = rdXattrHeaderSize + (int(icount)-1)*4
	}
	switch format & 1 {
	case 0:
		ri.isize = rdCompactInodeSize
		ri.nlink = uint32(le.Uint16(b[6:]))
		ri.size = uint64(le.Uint32(b[8:]))
		ri.iu = le.Uint32(b[16:])
		ri.ino = le.Uint32(b[20:])
		ri.uid = uint32(le.Uint16(b[24:]))
		ri.gid = uint32(le.Uint16(b[26:]))
		ri.mtime = img.buildTime
	default:
		ri.isize = rdExtendedInodeSize
		b, err = img.read(off, rdExtendedInodeSize, fmt.Sprintf("inode nid %d", nid))
		if err != nil {
			return nil, err
		}
		ri.size = le.Uint64(b[8:])
		ri.iu = le.Uint32(b[16:])
		ri.ino = le.Uint32(b[20:])
		ri.uid = le.Uint32(b[24:])
		ri.gid = le.Uint32(b[28:])
		ri.mtime = Timespec{Sec: int64(le.Uint64(b[32:])), Nsec: le.Uint32(b[40:])}
		ri.nlink = le.Uint32(b[44:])
	}
	if ri.mtime.Nsec >= 1e9 {
		return nil, fmt.Errorf("%w: nid %d: mtime nanoseconds %d", ErrCorrupt, nid, ri.mtime.Nsec)
	}
	if ri.xsize > 0 {
		ri.xattrBody, err = img.read(off+int64(ri.isize), ri.xsize, fmt.Sprintf("xattrs of nid %d", nid))
		if err != nil {
			return nil, err
		}
	}
	switch ri.mode & ModeType {
	case ModeReg, ModeDir, ModeLink, ModeChar, ModeBlock, ModeFifo, ModeSocket:
	default:
		return nil, fmt.Errorf("%w: nid %d: file mode %#o", ErrCorrupt, nid, ri.mode)
	}
	switch ri.layout {
	case rdLayoutFlatPlain, rdLayoutFlatInline:
	case rdLayoutChunkBased:
		if ri.mode&ModeType != ModeReg {
			return nil, fmt.Errorf("%w: nid %d: chunk-based inode of mode %#o", ErrCorrupt, nid, ri.mode)
		}
	default:
		return nil, fmt.Errorf("%w: nid %d: data layout %d", ErrUnsupported, nid, ri.layout)
	}
	return ri, nil
}

// data returns the flat (plain or inline) data of an inode: whole blocks
// from i_u, then the inline tail right after the xattrs.
func (img *Image) data(ri *rdRawInode, max uint64) ([]byte, error) {
	if ri.size > max || ri.size > uint64(img.size) {
		return nil, fmt.Errorf("%w: nid %d: size %d is too large", ErrCorrupt, ri.nid, ri.size)
	}
	size := int(ri.size)
	var nblocks, tail int
	if ri.layout == rdLayoutFlatInline {
		nblocks, tail = size/rdBlockSize, size%rdBlockSize
	} else {
		nblocks = (size + rdBlockSize - 1) / rdBlockSize
	}
	out := make([]byte, 0, size)
	if nblocks > 0 {
		n := size - tail
		b, err := img.read(int64(ri.iu)*rdBlockSize, n, fmt.Sprintf("data of nid %d", ri.nid))
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	if tail > 0 {
		off := ri.tailOff()
		if off/rdBlockSize != (off+int64(tail)-1)/rdBlockSize {
			return nil, fmt.Errorf("%w: nid %d: inline data at offset %d crosses a block boundary", ErrCorrupt, ri.nid, off)
		}
		b, err := img.read(off, tail, fmt.Sprintf("inline data of nid %d", ri.nid))
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// rdXattrPrefixes maps EROFS xattr name indexes to name prefixes.
var rdXattrPrefixes = [...]string{
	1: "user.",
	2: "system.posix_acl_access",
	3: "system.posix_acl_default",
	4: "trusted.",
	5: "lustre.",
	6: "security.",
}

// rdParseXattrEntry decodes one xattr entry at b[0:], returning the full
// name, the value and the entry's padded length.
func rdParseXattrEntry(b []byte) (name string, value []byte, n int, err error) {
	if len(b) < rdXattrEntrySize {
		return "", nil, 0, errors.New("truncated xattr entry")
	}
	nameLen, index, vlen := int(b[0]), b[1], int(binary.LittleEndian.Uint16(b[2:]))
	end := rdXattrEntrySize + nameLen + vlen
	if end > len(b) {
		return "", nil, 0, errors.New("xattr entry runs past its area")
	}
	if index&0x80 != 0 || int(index) >= len(rdXattrPrefixes) || (index != 0 && rdXattrPrefixes[index] == "") {
		return "", nil, 0, fmt.Errorf("xattr name index %#x", index)
	}
	name = rdXattrPrefixes[index] + string(b[rdXattrEntrySize:rdXattrEntrySize+nameLen])
	if name == "" || len(name) > 255 || strings.IndexByte(name, 0) >= 0 {
		return "", nil, 0, fmt.Errorf("bad xattr name %q", name)
	}
	value = append([]byte{}, b[rdXattrEntrySize+nameLen:end]...)
	return name, value, (end + 3) &^ 3, nil
}

// xattrs returns the inode's extended attributes as stored: the inline
// ones, then the shared ones (the order composefs-info dump prints), and
// how many bytes of names and values it decoded anew. Shared entries are
// decoded once per cache: their Values are shared between nodes.
func (img *Image) xattrs(ri *rdRawInode, cache map[int64]Xattr) ([]Xattr, int64, error) {
	body := ri.xattrBody
	if len(body) == 0 {
		return nil, 0, nil
	}
	shared := int(body[4])
	if rdXattrHeaderSize+4*shared > len(body) {
		return nil, 0, fmt.Errorf("%w: nid %d: %d shared xattrs do not fit the xattr area", ErrCorrupt, ri.nid, shared)
	}
	var out []Xattr
	var cost int64
	rest := body[rdXattrHeaderSize+4*shared:]
	for len(rest) >= rdXattrEntrySize {
		name, value, n, err := rdParseXattrEntry(rest)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: nid %d: inline xattr: %v", ErrCorrupt, ri.nid, err)
		}
		out = append(out, Xattr{Name: name, Value: value})
		cost += int64(len(name) + len(value))
		if n >= len(rest) {
			break
		}
		rest = rest[n:]
	}
	for i := 0; i < shared; i++ {
		idx := binary.LittleEndian.Uint32(body[rdXattrHeaderSize+4*i:])
		off := img.xattrStart + int64(idx)*4
		if x, ok := cache[off]; ok {
			out = append(out, x)
			continue
		}
		h, err := img.read(off, rdXattrEntrySize, fmt.Sprintf("shared xattr of nid %d", ri.nid))
		if err != nil {
			return nil, 0, err
		}
		b, err := img.read(off, rdXattrEntrySize+int(h[0])+int(binary.LittleEndian.Uint16(h[2:])), fmt.Sprintf("shared xattr of nid %d", ri.nid))
		if err != nil {
			return nil, 0, err
		}
		name, value, _, err := rdParseXattrEntry(b)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: nid %d: shared xattr at offset %d: %v", ErrCorrupt, ri.nid, off, err)
		}
		cache[off] = Xattr{Name: name, Value: value}
		cost += int64(len(name) + len(value))
		out = append(out, Xattr{Name: name, Value: value})
	}
	return out, cost, nil
}

// rdDirent is one decoded directory entry.
type rdDirent struct {
	nid   uint64
	name  string
	ftype uint8 // EROFS_FT_*
}

// rdParseDirBlock decodes the dirents of one directory block (or inline tail).
func rdParseDirBlock(b []byte) ([]rdDirent, error) {
	if len(b) < rdDirentSize {
		return nil, fmt.Errorf("directory block of %d bytes", len(b))
	}
	le := binary.LittleEndian
	first := int(le.Uint16(b[8:]))
	if first < rdDirentSize || first%rdDirentSize != 0 || first > len(b) {
		return nil, fmt.Errorf("first name offset %d", first)
	}
	n := first / rdDirentSize
	out := make([]rdDirent, 0, n)
	for i := 0; i < n; i++ {
		e := b[i*rdDirentSize:]
		start := int(le.Uint16(e[8:]))
		end := len(b)
		if i+1 < n {
			end = int(le.Uint16(b[(i+1)*rdDirentSize+8:]))
		}
		if start < first || end > len(b) || start >= end {
			return nil, fmt.Errorf("rdDirent %d: name offsets %d..%d", i, start, end)
		}
		name := b[start:end]
		if i+1 == n {
			if z := strings.IndexByte(string(name), 0); z >= 0 {
				name = name[:z]
			}
		}
		if len(name) == 0 {
			return nil, fmt.Errorf("rdDirent %d: empty name", i)
		}
		// A name is one path component: a '/' (or a NUL before the
		// block's end) would let a hostile image name a file outside
		// its directory to whoever joins names into paths.
		if strings.ContainsAny(string(name), "/\x00") {
			return nil, fmt.Errorf("rdDirent %d: name %q holds '/' or NUL", i, name)
		}
		out = append(out, rdDirent{nid: le.Uint64(e[0:]), name: string(name), ftype: e[10]})
	}
	return out, nil
}

// dirents returns all entries of a directory inode, "." and ".." included.
func (img *Image) dirents(ri *rdRawInode) ([]rdDirent, error) {
	if ri.size > uint64(img.size) {
		return nil, fmt.Errorf("%w: nid %d: directory size %d is larger than the image", ErrCorrupt, ri.nid, ri.size)
	}
	size := int64(ri.size)
	var out []rdDirent
	var nblocks, tail int64
	if ri.layout == rdLayoutFlatInline {
		nblocks, tail = size/rdBlockSize, size%rdBlockSize
	} else {
		nblocks = (size + rdBlockSize - 1) / rdBlockSize
	}
	for blk := int64(0); blk < nblocks; blk++ {
		n := int64(rdBlockSize)
		if ri.layout != rdLayoutFlatInline && blk == nblocks-1 && size%rdBlockSize != 0 {
			n = size % rdBlockSize
		}
		off := (int64(ri.iu) + blk) * rdBlockSize
		b, err := img.read(off, int(n), fmt.Sprintf("directory block of nid %d", ri.nid))
		if err != nil {
			return nil, err
		}
		d, err := rdParseDirBlock(b)
		if err != nil {
			return nil, fmt.Errorf("%w: nid %d: directory block at offset %d: %v", ErrCorrupt, ri.nid, off, err)
		}
		out = append(out, d...)
	}
	if tail > 0 {
		b, err := img.read(ri.tailOff(), int(tail), fmt.Sprintf("inline directory data of nid %d", ri.nid))
		if err != nil {
			return nil, err
		}
		d, err := rdParseDirBlock(b)
		if err != nil {
			return nil, fmt.Errorf("%w: nid %d: inline directory data at offset %d: %v", ErrCorrupt, ri.nid, ri.tailOff(), err)
		}
		out = append(out, d...)
	}
	return out, nil
}

// Overlay xattr names that the composefs writer adds or escapes.
const (
	rdXattrOverlayPrefix = "trusted.overlay."
	rdXattrEscapedPrefix = "trusted.overlay.overlay."
	rdXattrMetacopy      = "trusted.overlay.metacopy"
	rdXattrRedirect      = "trusted.overlay.redirect"
	rdXattrEscWhiteout   = "trusted.overlay.overlay.whiteout"
	rdXattrEscWhiteouts  = "trusted.overlay.overlay.whiteouts"
	rdXattrUserWhiteout  = "user.overlay.whiteout"
	rdXattrUserWhiteouts = "user.overlay.whiteouts"
	rdFsverityAlgSHA256  = 1
	rdFsverityAlgSHA512  = 2
)

// rdTreeBuilder carries the state of one Tree call.
type rdTreeBuilder struct {
	img   *Image
	seen  map[uint64]*Node  // nid -> first node read from it
	ino   map[*Node]uint32  // node read from an inode -> its i_ino
	links map[*Node][]*Node // node -> hardlink entries naming it
	ents  map[*Node][]*Node // directory -> its entries in dirent order, nil for skipped whiteouts

	// budget is what is left of the bytes the tree may take: a hostile
	// image can point many inodes at the same directory blocks, contents
	// or shared xattrs, so what is decoded is charged here, and dirBytes
	// (directory data read, which a sound image never reuses) may not
	// exceed the image size.
	budget   int64
	dirBytes int64
	shared   map[int64]Xattr // shared xattr table entries decoded so far, by offset
	shallow  bool            // do not read directories' children (fs.FS lookups)
}

// Bytes charged per node, and the expansion an image may have: decoded
// trees are at most rdExpansion times the image size plus rdBudgetSlack.
const (
	rdNodeCost    = 160
	rdExpansion   = 32
	rdBudgetSlack = 64 << 20
)

// charge takes n bytes from the budget.
func (tb *rdTreeBuilder) charge(n int64, nid uint64) error {
	tb.budget -= n
	if tb.budget < 0 {
		return fmt.Errorf("%w: nid %d: the tree would take more than %d bytes (%dx the image size)", ErrCorrupt, nid, rdExpansion*tb.img.size+rdBudgetSlack, rdExpansion)
	}
	return nil
}

// TreeOptions tune Image.ReadTree.
type TreeOptions struct {
	// WriterPrimaries makes, for each hardlinked inode, the name the writer
	// serialized it under the primary entry (found from i_ino, the
	// writer's breadth-first inode number), so that Write of the tree
	// reproduces the image byte for byte. Without it the first name in
	// depth-first order is the primary, as composefs-info dump has it.
	WriterPrimaries bool
}

// Tree reads the whole image back into the source tree it was written
// from, as `composefs-info dump` does; it is ReadTree with zero options.
func (img *Image) Tree() (*Node, error) { return img.ReadTree(TreeOptions{}) }

// ReadTree reads the whole image back into the source tree it was written
// from, undoing what the writer added, as `composefs-info dump` does:
// trusted.overlay.metacopy and .redirect become Digest and Payload,
// escaped trusted.overlay.overlay.* names lose one "overlay.", converted
// whiteouts become character devices 0/0 again, and the other
// trusted.overlay.* xattrs (the root's opaque marker), the whiteout
// marker xattrs and the "00".."ff" whiteout stubs (any character device
// 0/0 in the image) are dropped. Xattrs keep the image's order (inline,
// then shared). A directory reached twice (a cycle or a directory
// hardlink) is an error; other inodes reached again become hardlink
// entries (Link); see TreeOptions for which name is the primary. The
// Values of xattrs from the image's shared table are shared between the
// nodes carrying them: treat them as read-only. What the tree may take is
// bounded by a multiple of the image size, whatever the image says.
func (img *Image) ReadTree(opts TreeOptions) (*Node, error) {
	tb := &rdTreeBuilder{img: img, seen: make(map[uint64]*Node), ino: make(map[*Node]uint32),
		links: make(map[*Node][]*Node), ents: make(map[*Node][]*Node),
		budget: rdExpansion*img.size + rdBudgetSlack, shared: make(map[int64]Xattr)}
	root, skip, err := tb.node(img.rootNid, "", 0)
	if err != nil {
		return nil, err
	}
	if skip || !root.IsDir() {
		return nil, fmt.Errorf("%w: root nid %d is not a directory", ErrCorrupt, img.rootNid)
	}
	if opts.WriterPrimaries {
		tb.pickPrimaries(root)
	}
	return root, nil
}

// pickPrimaries makes, for each hardlinked inode, the name the writer
// serialized it under the primary entry. The writer numbers inodes (i_ino)
// breadth first over the non-hardlink entries, so walking the entries in
// the same order, the primary is the entry met when the count of real
// entries so far equals the inode's i_ino. (When a hardlink entry comes
// right before its primary both choices give the same image.) Images that
// do not number inodes this way keep the first name in depth-first order.
func (tb *rdTreeBuilder) pickPrimaries(root *Node) {
	if len(tb.links) == 0 {
		return
	}
	chosen := make(map[*Node]*Node) // first-met node -> entry to become primary
	k := uint32(1)                  // the root is inode 0
	queue := []*Node{root}
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		for _, c := range tb.ents[dir] {
			if c == nil { // a skipped whiteout was a real inode
				k++
				continue
			}
			p := c
			if c.Link != nil {
				p = c.Link
			}
			if _, ok := tb.links[p]; !ok {
				k++
				if c.Link == nil && c.IsDir() {
					queue = append(queue, c)
				}
				continue
			}
			if chosen[p] != nil || tb.ino[p] != k {
				continue
			}
			chosen[p] = c
			k++
		}
	}
	for p, e := range chosen {
		if e != p {
			tb.swapPrimary(p, e)
		}
	}
}

// swapPrimary moves the inode of primary p to its hardlink entry e.
func (tb *rdTreeBuilder) swapPrimary(p, e *Node) {
	e.Inode, e.Link = p.Inode, nil
	p.Inode, p.Link = Inode{}, e
	for _, l := range tb.links[p] {
		if l != e {
			l.Link = e
		}
	}
}

// node reads the inode nid into a new node called name. skip reports an
// overlay whiteout (character device 0/0), which the tree leaves out.
func (tb *rdTreeBuilder) node(nid uint64, name string, depth int) (n *Node, skip bool, err error) {
	if prev, ok := tb.seen[nid]; ok {
		if prev.IsDir() {
			return nil, false, fmt.Errorf("%w: nid %d: directory %s is reached a second time at %q (cycle or directory hardlink)", ErrCorrupt, nid, prev.Path(), name)
		}
		if err := tb.charge(rdNodeCost+int64(len(name)), nid); err != nil {
			return nil, false, err
		}
		l := &Node{Name: name, Link: prev}
		tb.links[prev] = append(tb.links[prev], l)
		return l, false, nil
	}
	if depth > rdMaxTreeDepth {
		return nil, false, fmt.Errorf("%w: nid %d: directory tree deeper than %d", ErrCorrupt, nid, rdMaxTreeDepth)
	}
	ri, err := tb.img.inode(nid)
	if err != nil {
		return nil, false, err
	}
	typ := ri.mode & ModeType
	if typ == ModeChar && ri.iu == 0 {
		if ri.nlink > 1 {
			return nil, false, fmt.Errorf("%w: nid %d: whiteout with %d links", ErrCorrupt, nid, ri.nlink)
		}
		return nil, true, nil
	}
	if err := tb.charge(rdNodeCost+int64(len(name))+int64(ri.xsize), nid); err != nil {
		return nil, false, err
	}
	n = &Node{Name: name, Inode: Inode{
		Mode: ri.mode, Nlink: ri.nlink, UID: ri.uid, GID: ri.gid, Mtime: ri.mtime,
	}}
	tb.seen[nid] = n
	tb.ino[n] = ri.ino
	switch typ {
	case ModeChar, ModeBlock:
		n.Rdev = ri.iu
	case ModeLink:
		if ri.size == 0 || ri.size > rdMaxSymlinkTarget {
			return nil, false, fmt.Errorf("%w: nid %d: symlink target of %d bytes", ErrCorrupt, nid, ri.size)
		}
		if ri.layout == rdLayoutChunkBased {
			return nil, false, fmt.Errorf("%w: nid %d: chunk-based symlink", ErrCorrupt, nid)
		}
		t, err := tb.img.data(ri, rdMaxSymlinkTarget)
		if err != nil {
			return nil, false, err
		}
		n.Inode.Target = string(t)
		n.Size = ri.size
	case ModeReg:
		n.Size = ri.size
		if ri.size > 0 && ri.layout != rdLayoutChunkBased {
			c, err := tb.img.data(ri, rdMaxInlineContent)
			if err != nil {
				return nil, false, err
			}
			n.Content = c
		}
	}
	xs, cost, err := tb.img.xattrs(ri, tb.shared)
	if err != nil {
		return nil, false, err
	}
	if err := tb.charge(cost+int64(len(n.Content))+int64(len(xs))*48, nid); err != nil {
		return nil, false, err
	}
	if err := n.setImageXattrs(xs); err != nil {
		return nil, false, fmt.Errorf("%w: nid %d: %v", ErrCorrupt, nid, err)
	}
	if typ == ModeDir {
		n.Size = ri.size // as composefs-info dump shows it; the writer recomputes it
		if tb.shallow {
			return n, false, nil
		}
		if err := tb.readDir(n, ri, depth); err != nil {
			return nil, false, err
		}
	}
	return n, false, nil
}

// readDir adds the children of directory n (inode ri).
func (tb *rdTreeBuilder) readDir(n *Node, ri *rdRawInode, depth int) error {
	tb.dirBytes += int64(min(ri.size, uint64(tb.img.size)+1))
	if tb.dirBytes > tb.img.size {
		return fmt.Errorf("%w: nid %d: directories hold more data than the image (shared directory blocks)", ErrCorrupt, ri.nid)
	}
	ents, err := tb.img.dirents(ri)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.name == "." || e.name == ".." {
			continue
		}
		if err := validName(e.name); err != nil {
			return fmt.Errorf("%w: nid %d: %v", ErrCorrupt, ri.nid, err)
		}
		c, skip, err := tb.node(e.nid, e.name, depth+1)
		if err != nil {
			return err
		}
		if skip {
			tb.ents[n] = append(tb.ents[n], nil)
			continue
		}
		tb.ents[n] = append(tb.ents[n], c)
		// Dirents are sorted: append in the common case, insert otherwise.
		if k := len(n.Children); k == 0 || n.Children[k-1].Name < c.Name {
			c.Parent = n
			n.Children = append(n.Children, c)
		} else if err := n.AddChild(c); err != nil {
			return fmt.Errorf("%w: nid %d: %v", ErrCorrupt, ri.nid, err)
		}
	}
	return nil
}

// setImageXattrs sets n's xattrs from those stored in the image, turning
// the composefs overlay xattrs back into tree fields.
func (n *Node) setImageXattrs(xs []Xattr) error {
	var out []Xattr
	for _, x := range xs {
		switch x.Name {
		case rdXattrRedirect:
			if n.Type() == ModeReg {
				p := string(x.Value)
				if len(p) > 1 && p[0] == '/' {
					p = p[1:]
				}
				if z := strings.IndexByte(p, 0); z >= 0 {
					p = p[:z]
				}
				n.Payload = p
			}
			continue
		case rdXattrMetacopy:
			if n.Type() == ModeReg && len(x.Value) > rdMetacopyHeaderSize {
				var alg verity.Algorithm
				switch x.Value[3] {
				case rdFsverityAlgSHA256:
					alg = verity.SHA256
				case rdFsverityAlgSHA512:
					alg = verity.SHA512
				}
				if d, err := verity.NewDigest(alg, x.Value[rdMetacopyHeaderSize:]); err == nil {
					n.Digest = d
				}
			}
			continue
		case rdXattrEscWhiteout:
			if n.Type() == ModeReg {
				n.Mode = n.Mode&^ModeType | ModeChar
				n.Rdev = 0
				n.Size = 0
				n.Content = nil
				continue
			}
		case rdXattrEscWhiteouts, rdXattrUserWhiteout, rdXattrUserWhiteouts:
			continue
		}
		if strings.HasPrefix(x.Name, rdXattrOverlayPrefix) {
			if !strings.HasPrefix(x.Name, rdXattrEscapedPrefix) {
				continue // added by the writer (opaque on the root)
			}
			x.Name = rdXattrOverlayPrefix + x.Name[len(rdXattrEscapedPrefix):]
		}
		out = append(out, x)
	}
	seen := make(map[string]bool, len(out))
	for _, x := range out {
		if seen[x.Name] {
			return fmt.Errorf("xattr %q appears twice", x.Name)
		}
		seen[x.Name] = true
	}
	n.Xattrs = out
	return nil
}

// rdSortXattrs sorts xattrs by name, bytewise.
func rdSortXattrs(xs []Xattr) {
	sort.SliceStable(xs, func(i, j int) bool { return xs[i].Name < xs[j].Name })
}

// ImageDigest returns the composefs digest of the image file at path: the
// fs-verity SHA-256 digest of its bytes (what `mkcomposefs --print-digest`
// prints and the kernel's composefs= argument names). The file must be a
// composefs image.
func ImageDigest(ctx context.Context, path string) (verity.Digest, error) {
	img, err := OpenFile(path)
	if err != nil {
		return verity.Digest{}, err
	}
	img.Close()
	d, err := verity.DigestFile(ctx, path, verity.SHA256)
	if err != nil {
		return verity.Digest{}, fmt.Errorf("erofs: digest of %s: %w", path, err)
	}
	return d, nil
}
