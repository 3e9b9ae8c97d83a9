package erofs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/twinroot/twinroot/verity"
)

// Limits of the composefs dumpfile format and of the image writer, as the
// reference implementation (libcomposefs 1.x) enforces them.
const (
	// MaxInlineContent is the largest inline CONTENT a dumpfile entry (and
	// the writer) accepts (LCFS_INLINE_CONTENT_MAX).
	MaxInlineContent = 5000
	// MaxPayloadLen bounds payloads and symlink targets: they must be
	// shorter than this (PATH_MAX).
	MaxPayloadLen = 4096
	// MaxXattrNameLen is the longest xattr name (XATTR_NAME_MAX).
	MaxXattrNameLen = 255
	// MaxXattrValueLen is the largest xattr value.
	MaxXattrValueLen = 65535
	// MaxXattrBudget caps the xattrs of one inode: 12 + the sum over its
	// xattrs of (7 + len(name) + len(value)) (LCFS_INODE_EXTERNAL_XATTR_MAX).
	MaxXattrBudget = 32767
	// maxXattrLinePart caps the xattr part of one dumpfile line.
	maxXattrLinePart = 65535
)

// ErrBadDump is returned (wrapped, with the line number and path) for a
// dumpfile that does not parse or describes an invalid tree.
var ErrBadDump = errors.New("erofs: invalid dumpfile")

// ParseOptions controls ParseDump.
type ParseOptions struct {
	// Strict makes the parser reject what mkcomposefs rejects when the
	// CFS_PARSE_STRICT environment variable is set: a missing final
	// newline, a nonzero RDEV on a non-device, a symlink whose SIZE is not
	// the target length, and a symlink with CONTENT.
	Strict bool
}

// dumpParser holds the state of one ParseDump call.
type dumpParser struct {
	opts    ParseOptions
	root    *Node
	lineno  int
	path    []byte // unescaped path of the current line (for errors)
	pathBuf []byte
	scratch []byte
	fbuf    [3][]byte // payload, content and digest fields

	// cache of the parent directory of the previous line
	lastPrefix []byte
	lastParent *Node

	links []pendingLink

	names  map[string]string // interned xattr names
	values map[string][]byte // interned short xattr values
}

type pendingLink struct {
	node   *Node
	target string
	lineno int
	path   string
}

// dumpFields are the fixed fields of a dumpfile line.
const (
	fPath = iota
	fSize
	fMode
	fNlink
	fUID
	fGID
	fRdev
	fMtime
	fPayload
	fContent
	fDigest
	nFields
)

// ParseDump reads a composefs dumpfile (composefs-dump(5)) and returns the
// tree it describes. It accepts exactly what `mkcomposefs --from-file`
// accepts, with the differences documented in docs/architecture.md (inputs
// whose image the reference would make from uninitialised memory, hardlinks
// to directories, hardlink cycles and unparsable GID/RDEV fields are
// rejected). Errors wrap ErrBadDump and name the line number and path.
//
// '@' hardlink entries become nodes whose Link points at the named node;
// the NLINK of the target is kept as given. Xattr values of up to 128 bytes
// may share their backing array with other nodes: replace them, never
// modify them in place.
func ParseDump(r io.Reader, opts ParseOptions) (*Node, error) {
	p := &dumpParser{
		opts:   opts,
		names:  make(map[string]string),
		values: make(map[string][]byte),
	}
	br := bufio.NewReaderSize(r, 64*1024)
	var long []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, chunk...)
			continue
		}
		line := chunk
		if long != nil {
			long = append(long, chunk...)
			line = long
		}
		if err == io.EOF {
			if len(line) == 0 {
				break
			}
			p.lineno++
			if opts.Strict {
				return nil, fmt.Errorf("%w: line %d: missing final newline", ErrBadDump, p.lineno)
			}
			if err := p.parseLine(line); err != nil {
				return nil, err
			}
			break
		}
		if err != nil {
			return nil, fmt.Errorf("erofs: reading dumpfile: %w", err)
		}
		p.lineno++
		if err := p.parseLine(line[:len(line)-1]); err != nil {
			return nil, err
		}
		long = long[:0]
		if cap(long) > 1<<20 {
			long = nil
		}
	}
	if p.root == nil {
		return nil, fmt.Errorf("%w: no root entry", ErrBadDump)
	}
	if err := p.resolveLinks(); err != nil {
		return nil, err
	}
	return p.root, nil
}

func (p *dumpParser) errorf(format string, args ...any) error {
	if p.path == nil {
		return fmt.Errorf("%w: line %d: %s", ErrBadDump, p.lineno, fmt.Sprintf(format, args...))
	}
	return fmt.Errorf("%w: line %d: %q: %s", ErrBadDump, p.lineno, p.path, fmt.Sprintf(format, args...))
}

// unescape decodes the dumpfile escapes (\\ \n \r \t \xHH) of s, appending
// to dst.
func unescape(dst, s []byte) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		i++
		if i >= len(s) {
			return dst, errors.New("no character after escape")
		}
		switch s[i] {
		case '\\':
			dst = append(dst, '\\')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'x':
			if i+2 >= len(s) {
				return dst, errors.New("no hex characters after hex escape")
			}
			h1, h2 := hexVal(s[i+1]), hexVal(s[i+2])
			if h1 < 0 || h2 < 0 {
				return dst, errors.New("invalid hex characters after hex escape")
			}
			dst = append(dst, byte(h1<<4|h2))
			i += 2
		default:
			return dst, fmt.Errorf("unsupported escape \\%c", s[i])
		}
	}
	return dst, nil
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// cstring truncates b at its first NUL, as the reference does for paths,
// names, payloads and xattr names.
func cstring(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// parseUint parses like C strtoull(s, &end, base) with the checks
// mkcomposefs applies: s must be non-empty and fully consumed. Leading
// white space and a sign are accepted; "-N" wraps; overflow saturates.
func parseUint(s []byte, base uint64) (uint64, bool) {
	if len(s) == 0 {
		return 0, false
	}
	i := 0
	for i < len(s) && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	start := i
	var v uint64
	overflow := false
	for ; i < len(s); i++ {
		d := uint64(hexVal(s[i]))
		if hexVal(s[i]) < 0 || d >= base {
			break
		}
		if v > (math.MaxUint64-d)/base {
			overflow = true
		}
		v = v*base + d
	}
	if i == start || i != len(s) {
		return 0, false
	}
	if overflow {
		return math.MaxUint64, true
	}
	if neg {
		v = -v
	}
	return v, true
}

func validMode(mode uint32) bool {
	switch mode & ModeType {
	case ModeReg, ModeDir, ModeLink, ModeBlock, ModeChar, ModeSocket, ModeFifo:
		return true
	}
	return false
}

func (p *dumpParser) parseLine(line []byte) error {
	p.path = nil
	if i := bytes.IndexByte(line, 0); i >= 0 {
		return p.errorf("invalid embedded NUL character at position %d", i)
	}
	var f [nFields][]byte
	rest := line
	for i := range f {
		j := bytes.IndexByte(rest, ' ')
		if j < 0 {
			f[i], rest = rest, rest[len(rest):]
			continue
		}
		f[i], rest = rest[:j], rest[j+1:]
	}

	var err error
	p.pathBuf, err = unescape(p.pathBuf[:0], f[fPath])
	if err != nil {
		return p.errorf("path: %v", err)
	}
	path := cstring(p.pathBuf)
	p.path = path
	if len(path) == 0 {
		return p.errorf("invalid empty path")
	}

	modeField := f[fMode]
	isLink := len(modeField) > 0 && modeField[0] == '@'
	if isLink {
		modeField = modeField[1:]
	}
	mode64, ok := parseUint(modeField, 8)
	if !ok {
		return p.errorf("invalid mode %q", f[fMode])
	}
	mode := uint32(mode64)
	if !validMode(mode) {
		return p.errorf("invalid mode %o", mode)
	}
	n := &Node{}
	n.Mode = mode
	n.Nlink = 1
	if err := p.addNode(path, n); err != nil {
		return err
	}

	if isLink {
		if n.IsDir() {
			return p.errorf("directories can't be hardlinked")
		}
		t, absent, err := p.optional(0, f[fPayload])
		if err != nil {
			return p.errorf("hardlink target: %v", err)
		}
		if absent {
			return p.errorf("no target path for the hardlink")
		}
		p.links = append(p.links, pendingLink{node: n, target: string(cstring(t)), lineno: p.lineno, path: string(path)})
		return nil
	}

	size, ok := parseUint(f[fSize], 10)
	if !ok {
		return p.errorf("invalid size %q", f[fSize])
	}
	nlink, ok := parseUint(f[fNlink], 10)
	if !ok {
		return p.errorf("invalid nlink %q", f[fNlink])
	}
	uid, ok := parseUint(f[fUID], 10)
	if !ok {
		return p.errorf("invalid uid %q", f[fUID])
	}
	gid, ok := parseUint(f[fGID], 10)
	if !ok {
		return p.errorf("invalid gid %q", f[fGID])
	}
	rdev, ok := parseUint(f[fRdev], 10)
	if !ok {
		return p.errorf("invalid rdev %q", f[fRdev])
	}
	mt := f[fMtime]
	dot := bytes.IndexByte(mt, '.')
	if dot < 0 {
		return p.errorf("invalid mtime %q", f[fMtime])
	}
	sec, ok1 := parseUint(mt[:dot], 10)
	nsec, ok2 := parseUint(mt[dot+1:], 10)
	if !ok1 || !ok2 {
		return p.errorf("invalid mtime %q", f[fMtime])
	}

	payload, noPayload, err := p.optional(0, f[fPayload])
	if err != nil {
		return p.errorf("payload: %v", err)
	}
	payload = cstring(payload)
	var payloadStr string
	if !noPayload {
		payloadStr = string(payload)
	}
	content, noContent, err := p.optional(1, f[fContent])
	if err != nil {
		return p.errorf("content: %v", err)
	}
	if !noContent && uint64(len(content)) != size {
		return p.errorf("invalid content size %d, must match size %d", len(content), size)
	}
	var contentCopy []byte
	if !noContent && len(content) > 0 {
		contentCopy = append([]byte(nil), content...)
	}
	digestField, noDigest, err := p.optional(2, f[fDigest])
	if err != nil {
		return p.errorf("digest: %v", err)
	}

	typ := mode & ModeType
	n.Size = size
	n.Nlink = uint32(nlink)
	n.UID = uint32(uid)
	n.GID = uint32(gid)
	if typ == ModeChar || typ == ModeBlock {
		n.Rdev = uint32(rdev)
	} else if p.opts.Strict && rdev != 0 {
		return p.errorf("non-zero devnum on non-device")
	}
	n.Mtime = Timespec{Sec: int64(sec), Nsec: uint32(nsec)}
	if typ == ModeLink {
		if noPayload || len(payload) == 0 {
			return p.errorf("invalid symlink: empty target")
		}
		if len(payload) >= MaxPayloadLen {
			return p.errorf("symlink target is %d bytes long (max %d)", len(payload), MaxPayloadLen-1)
		}
		if p.opts.Strict {
			if size != uint64(len(payload)) {
				return p.errorf("invalid symlink size %d, must match target length %d", size, len(payload))
			}
			if len(contentCopy) > 0 {
				return p.errorf("symlink cannot have content")
			}
		}
		n.Inode.Target = payloadStr
		n.Size = uint64(len(payload))
	} else {
		if len(payload) >= MaxPayloadLen {
			return p.errorf("payload is %d bytes long (max %d)", len(payload), MaxPayloadLen-1)
		}
		n.Payload = payloadStr
		if len(contentCopy) > MaxInlineContent {
			return p.errorf("inline content size %d exceeds maximum %d", len(contentCopy), MaxInlineContent)
		}
		n.Content = contentCopy
	}
	if !noDigest {
		d, err := parseHexDigest(cstring(digestField))
		// The reference decodes a malformed digest into uninitialised
		// bytes; that only matters where the writer uses the digest.
		if err != nil && typ == ModeReg && size > 0 && contentCopy == nil {
			return p.errorf("%v", err)
		}
		n.Digest = d
	}

	if len(rest) > maxXattrLinePart {
		return p.errorf("too many xattrs")
	}
	var budget int
	for len(rest) > 0 {
		var x []byte
		j := bytes.IndexByte(rest, ' ')
		if j < 0 {
			x, rest = rest, nil
		} else {
			x, rest = rest[:j], rest[j+1:]
		}
		if err := p.parseXattr(n, x, &budget); err != nil {
			return err
		}
	}
	return nil
}

// optional unescapes an optional field ("-" means absent) into one of the
// parser's buffers (valid until the next line).
func (p *dumpParser) optional(buf int, field []byte) ([]byte, bool, error) {
	if len(field) == 1 && field[0] == '-' {
		return nil, true, nil
	}
	b, err := unescape(p.fbuf[buf][:0], field)
	p.fbuf[buf] = b
	return b, false, err
}

// parseHexDigest parses a DIGEST field: 64 hex digits (SHA-256, what the
// reference supports) or 128 (SHA-512, a twinroot extension), either case.
func parseHexDigest(s []byte) (verity.Digest, error) {
	var alg verity.Algorithm
	switch len(s) {
	case 64:
		alg = verity.SHA256
	case 128:
		alg = verity.SHA512
	default:
		return verity.Digest{}, fmt.Errorf("invalid digest %q: want 64 hex digits", s)
	}
	var raw [64]byte
	for i := 0; i < len(s); i += 2 {
		h1, h2 := hexVal(s[i]), hexVal(s[i+1])
		if h1 < 0 || h2 < 0 {
			return verity.Digest{}, fmt.Errorf("invalid digest %q: not hex", s)
		}
		raw[i/2] = byte(h1<<4 | h2)
	}
	return verity.NewDigest(alg, raw[:len(s)/2])
}

func (p *dumpParser) parseXattr(n *Node, x []byte, budget *int) error {
	eq := bytes.IndexByte(x, '=')
	if eq < 0 {
		return p.errorf("missing = in xattr %q", x)
	}
	var err error
	p.scratch, err = unescape(p.scratch[:0], x[:eq])
	if err != nil {
		return p.errorf("xattr name: %v", err)
	}
	name := cstring(p.scratch)
	if len(name) == 0 || len(name) > MaxXattrNameLen {
		return p.errorf("xattr name %q: length %d not in 1..%d", name, len(name), MaxXattrNameLen)
	}
	iname, ok := p.names[string(name)]
	if !ok {
		iname = string(name)
		p.names[iname] = iname
	}
	valueStart := len(p.scratch)
	p.scratch, err = unescape(p.scratch, x[eq+1:])
	if err != nil {
		return p.errorf("xattr %s: value: %v", iname, err)
	}
	value := p.scratch[valueStart:]
	if len(value) > MaxXattrValueLen {
		return p.errorf("xattr %s: value too long (%d bytes)", iname, len(value))
	}
	// Replace an existing value the way libcomposefs does (the last entry
	// moves into the freed slot), keeping its size accounting.
	for i := range n.Xattrs {
		if n.Xattrs[i].Name == iname {
			last := len(n.Xattrs) - 1
			*budget -= 7 + len(iname) + len(n.Xattrs[i].Value)
			n.Xattrs[i] = n.Xattrs[last]
			n.Xattrs = n.Xattrs[:last]
			if len(n.Xattrs) == 0 {
				*budget = 0
			}
			break
		}
	}
	entry := 7 + len(iname) + len(value)
	if len(n.Xattrs) == 0 {
		entry += 12
	}
	if *budget+entry > MaxXattrBudget {
		return p.errorf("xattr %s: xattrs of this entry exceed %d bytes", iname, MaxXattrBudget)
	}
	*budget += entry
	var v []byte
	if len(value) <= 128 {
		v, ok = p.values[string(value)]
		if !ok {
			v = append([]byte(nil), value...)
			v = v[:len(v):len(v)]
			p.values[string(v)] = v
		}
	} else {
		v = append([]byte(nil), value...)
	}
	n.Xattrs = append(n.Xattrs, Xattr{Name: iname, Value: v})
	return nil
}

// addNode links n into the tree at path (the root for "/").
func (p *dumpParser) addNode(path []byte, n *Node) error {
	if string(path) == "/" {
		if !n.IsDir() {
			return p.errorf("root must be a directory")
		}
		if p.root != nil {
			return p.errorf("can't have multiple roots")
		}
		p.root = n
		return nil
	}
	if p.root == nil {
		return p.errorf("root node not present")
	}
	// The parent prefix ends at the last '/' (or is empty).
	cut := bytes.LastIndexByte(path, '/')
	prefix, name := path[:cut+1], path[cut+1:]
	parent := p.lastParent
	if parent == nil || !bytes.Equal(prefix, p.lastPrefix) {
		parent = p.root
		rest := prefix
		for {
			for len(rest) > 0 && rest[0] == '/' {
				rest = rest[1:]
			}
			if len(rest) == 0 {
				break
			}
			j := bytes.IndexByte(rest, '/')
			comp := rest[:j]
			rest = rest[j:]
			parent = parent.Child(string(comp))
			if parent == nil {
				return p.errorf("parent directory missing")
			}
		}
		p.lastPrefix = append(p.lastPrefix[:0], prefix...)
		p.lastParent = parent
	}
	if !parent.IsDir() || parent.Link != nil {
		return p.errorf("parent must be a directory")
	}
	if string(name) == "." || string(name) == ".." {
		return p.errorf("invalid . or .. in path")
	}
	if len(name) == 0 {
		return p.errorf("invalid empty name")
	}
	if len(name) > MaxNameLen {
		return p.errorf("name is %d bytes long (max %d)", len(name), MaxNameLen)
	}
	// Fast path: input in sorted order appends at the end.
	if k := len(parent.Children); k == 0 || parent.Children[k-1].Name < string(name) {
		n.Name = string(name)
		n.Parent = parent
		parent.Children = append(parent.Children, n)
		return nil
	}
	n.Name = string(name)
	if err := parent.AddChild(n); err != nil {
		if errors.Is(err, ErrExist) {
			return p.errorf("path already exists")
		}
		return p.errorf("%v", err)
	}
	return nil
}

// lookupDumpPath resolves a hardlink target path like mkcomposefs: repeated
// slashes are skipped and "" names the root.
func lookupDumpPath(root *Node, path string) *Node {
	cur := root
	for {
		for len(path) > 0 && path[0] == '/' {
			path = path[1:]
		}
		if path == "" {
			return cur
		}
		j := 0
		for j < len(path) && path[j] != '/' {
			j++
		}
		cur = cur.Child(path[:j])
		if cur == nil {
			return nil
		}
		path = path[j:]
	}
}

func (p *dumpParser) resolveLinks() error {
	for i := len(p.links) - 1; i >= 0; i-- {
		l := p.links[i]
		fail := func(format string, args ...any) error {
			return fmt.Errorf("%w: line %d: %q: %s", ErrBadDump, l.lineno, l.path, fmt.Sprintf(format, args...))
		}
		t := lookupDumpPath(p.root, l.target)
		switch {
		case t == nil:
			return fail("no target at %q for hardlink", l.target)
		case t == l.node:
			return fail("self-referential hardlink %q", l.target)
		}
		l.node.Link = t
	}
	// Reject cycles and links to directories (the reference fails on the
	// former when writing; it writes a directory with two parents for the
	// latter).
	for _, l := range p.links {
		t, err := resolveLink(l.node)
		if err != nil {
			return fmt.Errorf("%w: line %d: %q: %v", ErrBadDump, l.lineno, l.path, err)
		}
		if t.IsDir() {
			return fmt.Errorf("%w: line %d: %q: hardlink to directory %s", ErrBadDump, l.lineno, l.path, t.Path())
		}
	}
	return nil
}

// resolveLink follows n's hardlink chain to the primary node, failing on a
// cycle.
func resolveLink(n *Node) (*Node, error) {
	slow, fast := n, n
	for fast.Link != nil {
		fast = fast.Link
		if fast.Link == nil {
			break
		}
		fast = fast.Link
		slow = slow.Link
		if slow == fast {
			return nil, fmt.Errorf("hardlink cycle at %s", n.Path())
		}
	}
	return fast, nil
}

// WriteDump writes the tree as a composefs dumpfile, the way `composefs-info
// dump` prints an image: depth first, children in sorted order, one line per
// entry, hardlink entries as '@' lines that repeat their target's fields and
// name the node they link to, and the reference's escaping (\xHH for bytes
// that are not graphic ASCII, '=' too inside xattrs, a lone "-" payload or
// content as \x2d).
func WriteDump(w io.Writer, root *Node) error {
	bw := bufio.NewWriterSize(w, 64*1024)
	var path []byte
	var buf []byte
	var walk func(n *Node, pathLen int) error
	walk = func(n *Node, pathLen int) error {
		var err error
		buf, err = dumpLine(buf[:0], n, path[:pathLen])
		if err != nil {
			return err
		}
		if _, err := bw.Write(buf); err != nil {
			return err
		}
		if n.Link != nil {
			return nil
		}
		for _, c := range n.Children {
			path = append(path[:pathLen], '/')
			path = append(path, c.Name...)
			if err := walk(c, len(path)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root, 0); err != nil {
		return err
	}
	return bw.Flush()
}

const (
	escStandard = iota
	escLoneDash
	escEqual
)

func appendEscaped(b []byte, s []byte, mode int) []byte {
	if mode == escLoneDash && len(s) == 1 && s[0] == '-' {
		return append(b, `\x2d`...)
	}
	const hexdigits = "0123456789abcdef"
	for _, c := range s {
		switch {
		case c == '\\':
			b = append(b, '\\', '\\')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c == '=' && mode == escEqual, c < 0x21 || c > 0x7e:
			b = append(b, '\\', 'x', hexdigits[c>>4], hexdigits[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}

func dumpLine(b []byte, n *Node, path []byte) ([]byte, error) {
	t := n
	var linkPath string
	if n.Link != nil {
		var err error
		if t, err = resolveLink(n); err != nil {
			return nil, err
		}
		linkPath = n.Link.Path()
	}
	if len(path) == 0 {
		b = append(b, '/')
	} else {
		b = appendEscaped(b, path, escStandard)
	}
	b = append(b, ' ')
	b = strconv.AppendUint(b, t.Size, 10)
	b = append(b, ' ')
	if n.Link != nil {
		b = append(b, '@')
	}
	b = strconv.AppendUint(b, uint64(t.Mode), 8)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.Nlink), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.UID), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.GID), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.Rdev), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, t.Mtime.Sec, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(t.Mtime.Nsec), 10)
	b = append(b, ' ')
	payload := t.Payload
	if t.Type() == ModeLink {
		payload = t.Inode.Target
	}
	switch {
	case n.Link != nil:
		b = appendEscaped(b, []byte(linkPath), escLoneDash)
	case payload == "":
		b = append(b, '-')
	default:
		b = appendEscaped(b, []byte(payload), escLoneDash)
	}
	b = append(b, ' ')
	if len(t.Content) == 0 {
		b = append(b, '-')
	} else {
		b = appendEscaped(b, t.Content, escLoneDash)
	}
	b = append(b, ' ')
	if t.Digest.IsZero() {
		b = append(b, '-')
	} else {
		b = append(b, t.Digest.Hex()...)
	}
	for _, x := range t.Xattrs {
		b = append(b, ' ')
		b = appendEscaped(b, []byte(x.Name), escEqual)
		b = append(b, '=')
		b = appendEscaped(b, x.Value, escEqual)
	}
	return append(b, '\n'), nil
}
