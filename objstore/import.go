package objstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// InlineMax is the largest regular file an imported directory tree keeps
// inline in image.cfs instead of as an object (mkcomposefs does the same
// for a directory source).
const InlineMax = 64

// ImportOptions configure ImportDir.
type ImportOptions struct {
	// Meta is recorded with the image; Source defaults to "import:<abs path>".
	Meta ImageMeta
	// Workers is the number of directories walked, and of files read, at
	// once (0 = the larger of 16 and 2 × GOMAXPROCS).
	Workers int
	// Progress, when set, is called as files are ingested.
	Progress func(Progress)
}

// ImportResult describes an imported tree.
type ImportResult struct {
	Digest  verity.Digest // composefs digest of the committed image
	Files   int           // regular files stored as objects
	Added   int           // of which were new to the store
	Bytes   int64         // bytes read
	Elapsed time.Duration
}

// ImportDir turns the directory tree src into objects and a committed
// image: each regular file larger than InlineMax bytes is read once,
// streamed through Staging.AddObject (digested while written) on several
// workers, and the tree with the digests becomes image.cfs. Digests are
// remembered per source directory (state/import/), so a re-import reads
// only files that changed since.
func (s *Store) ImportDir(ctx context.Context, src string, opts ImportOptions) (ImportResult, error) {
	start := time.Now()
	var res ImportResult
	abs, err := filepath.Abs(src)
	if err != nil {
		return res, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return res, fmt.Errorf("objstore: import: %w", err)
	}
	if !fi.IsDir() {
		return res, fmt.Errorf("objstore: import: %s: %w", abs, unix.ENOTDIR)
	}
	st, err := s.NewStaging(ctx)
	if err != nil {
		return res, err
	}
	defer st.Abort()
	workers := opts.Workers
	if workers <= 0 {
		// Tasks wait for the disk (source reads, the journal) as much as
		// they compute: on 2 cores, 16 beat 4 by 15-25 % on a re-import.
		workers = max(16, 2*runtime.GOMAXPROCS(0))
	}
	// Files that must be read wait for the disk: they get their own group
	// rg, as wide as the walk's g, so that the walk goes on linking while
	// they wait (twice as wide cost a first import 10 % more CPU and time
	// for no gain on a re-import). A failed read stops the walk (gctx
	// derives from rctx).
	rg, rctx := errgroup.WithContext(ctx)
	rg.SetLimit(workers)
	g, gctx := errgroup.WithContext(rctx)
	g.SetLimit(workers)
	var files, added, done atomic.Int64
	var bytes atomic.Int64
	cachePath := s.importCachePath(abs)
	oldCache := loadImportCache(cachePath, s.alg)
	var cmu sync.Mutex
	newCache := make(importCache, len(oldCache))
	w := &treeWalker{g: g, ctx: gctx, multi: map[inodeKey][]*erofs.Node{}}
	progress := func(n int, b int64) {
		bt := bytes.Add(b)
		c := done.Add(int64(n))
		if opts.Progress != nil {
			opts.Progress(Progress{Op: "import", Done: c, Total: files.Load(), Bytes: bt})
		}
	}
	// read stores a file by reading it, on a task of rg.
	read := func(f cachedFile) error {
		rg.Go(func() error {
			xs, err := readXattrs(f.path)
			if err != nil {
				return fmt.Errorf("objstore: import: %s: %w", f.path, err)
			}
			n := f.node
			n.Xattrs = xs
			d, new, err := s.importFile(rctx, st, f.path, int64(n.Size))
			if err != nil {
				return err
			}
			n.Digest, n.Payload = d, d.ObjectPath()
			if new {
				added.Add(1)
			}
			cmu.Lock()
			newCache[f.key] = cacheEntry{digest: d, xattrs: xs}
			cmu.Unlock()
			progress(1, int64(n.Size))
			return nil
		})
		return nil
	}
	w.file = func(b *dirBatch, n *erofs.Node, path string, sb *unix.Stat_t) error {
		files.Add(1)
		f := cachedFile{node: n, path: path, key: keyOf(sb)}
		// A file the cache knows (by its ctime too, which every write and
		// every xattr change moves) is linked with the other known files of
		// its directory, without a read or an xattr syscall.
		if e, ok := oldCache[f.key]; ok && e.digest.Algorithm() == s.alg {
			f.entry = e
			b.files = append(b.files, f)
			return nil
		}
		return read(f)
	}
	w.flush = func(b *dirBatch) error {
		if len(b.files) == 0 {
			return nil
		}
		ds := make([]verity.Digest, len(b.files))
		sizes := make([]int64, len(b.files))
		for i, f := range b.files {
			ds[i], sizes[i] = f.entry.digest, int64(f.node.Size)
		}
		found, err := st.LinkObjects(gctx, ds, sizes)
		if err != nil {
			return err
		}
		var nb int64
		linked := 0
		cmu.Lock()
		for i, f := range b.files {
			if found[i] {
				n := f.node
				n.Digest, n.Payload, n.Xattrs = f.entry.digest, f.entry.digest.ObjectPath(), f.entry.xattrs
				newCache[f.key] = f.entry
				nb += int64(n.Size)
				linked++
			}
		}
		cmu.Unlock()
		progress(linked, nb)
		for i, f := range b.files {
			if !found[i] { // gc deleted the object since: read the file
				if err := read(f); err != nil {
					return err
				}
			}
		}
		return nil
	}
	var root *erofs.Node
	g.Go(func() error {
		var err error
		root, err = w.build(abs)
		return err
	})
	err = g.Wait()
	if rerr := rg.Wait(); rerr != nil && (err == nil || errors.Is(err, context.Canceled)) {
		err = rerr // the cause, rather than the walk's cancellation
	}
	if err != nil {
		return res, err
	}
	w.fixHardlinks(root)
	s.log.Debug("import: files ingested", "files", files.Load(), "new", added.Load(), "elapsed", time.Since(start))
	meta := opts.Meta
	if meta.Source == "" {
		meta.Source = "import:" + abs
	}
	// The cache is written while Commit runs. It needs no barrier of its
	// own: a power cut may leave the previous cache, which is still correct
	// (its keys include ctime), or a torn file, which fails its checksum
	// and is ignored; if the commit fails, the digests it names that are
	// not in objects/ fail to link at the next import, which then reads
	// those files.
	cacheDone := make(chan struct{})
	go func() {
		defer close(cacheDone)
		if cachePath == "" {
			return
		}
		if err := writeImportCache(cachePath, s.alg, newCache); err != nil {
			s.log.Warn("saving import cache", "err", err)
		}
		os.Remove(strings.TrimSuffix(cachePath, ".cache") + ".json") // format before v1
	}()
	d, err := st.Commit(ctx, root, meta)
	<-cacheDone
	if err != nil {
		return res, err
	}
	res = ImportResult{Digest: d, Files: int(files.Load()), Added: int(added.Load()), Bytes: bytes.Load(), Elapsed: time.Since(start)}
	return res, nil
}

// importFile streams one file's content into the staging.
func (s *Store) importFile(ctx context.Context, st *Staging, path string, size int64) (verity.Digest, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return verity.Digest{}, false, fmt.Errorf("objstore: import: %w", err)
	}
	defer f.Close()
	d, added, err := st.AddObject(ctx, f, size)
	if err != nil {
		return d, false, fmt.Errorf("objstore: import %s: %w", path, err)
	}
	return d, added, nil
}

// importKey identifies a file's content for the import cache: ctime
// changes with every write, whatever a tool does with mtime.
type importKey struct {
	dev, ino                   uint64
	size                       int64
	mtime, mnsec, ctime, cnsec int64
}

func keyOf(sb *unix.Stat_t) importKey {
	return importKey{dev: sb.Dev, ino: sb.Ino, size: sb.Size,
		mtime: sb.Mtim.Sec, mnsec: sb.Mtim.Nsec, ctime: sb.Ctim.Sec, cnsec: sb.Ctim.Nsec}
}

// importCache maps a source file's identity to its content's digest and
// its extended attributes, as found at the last import.
type importCache map[importKey]cacheEntry

// cacheEntry is what the import cache knows of a file.
type cacheEntry struct {
	digest verity.Digest
	xattrs []erofs.Xattr
}

// importCacheMagic starts an import cache file (format version 2): magic,
// algorithm (1 byte), record count (uint64), records, then the SHA-256 of
// everything before it. A record is 7 × uint64 key fields, the digest
// bytes, an xattr count (uint16) and per xattr a name length (uint16), the
// name, a value length (uint32) and the value. Integers are little-endian.
const importCacheMagic = "twinroot-import-cache-2\n"

const importKeySize = 7 * 8

// errBadImportCache: the import cache file is not one this store wrote.
var errBadImportCache = errors.New("objstore: unusable import cache")

// encodeImportCache serialises c for a store using alg. Entries of another
// algorithm, or with xattrs the format cannot hold, are left out (their
// files are read at the next import).
func encodeImportCache(alg verity.Algorithm, c importCache) []byte {
	b := make([]byte, 0, len(importCacheMagic)+1+8+len(c)*(importKeySize+alg.Size()+2)+sha256.Size)
	b = append(b, importCacheMagic...)
	b = append(b, byte(alg))
	nAt := len(b)
	b = binary.LittleEndian.AppendUint64(b, 0)
	var n uint64
records:
	for k, e := range c {
		if e.digest.Algorithm() != alg || len(e.xattrs) > 0xffff {
			continue
		}
		for _, x := range e.xattrs {
			if len(x.Name) > 0xffff || uint64(len(x.Value)) > 0xffffffff {
				continue records
			}
		}
		for _, v := range [7]uint64{k.dev, k.ino, uint64(k.size), uint64(k.mtime), uint64(k.mnsec), uint64(k.ctime), uint64(k.cnsec)} {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
		b = append(b, e.digest.Bytes()...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(e.xattrs)))
		for _, x := range e.xattrs {
			b = binary.LittleEndian.AppendUint16(b, uint16(len(x.Name)))
			b = append(b, x.Name...)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(x.Value)))
			b = append(b, x.Value...)
		}
		n++
	}
	binary.LittleEndian.PutUint64(b[nAt:], n)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// decodeImportCache parses an import cache file written for alg. Anything
// else (another algorithm or format, a torn or damaged file) is an error,
// and the caller starts with an empty cache.
func decodeImportCache(alg verity.Algorithm, b []byte) (importCache, error) {
	head := len(importCacheMagic) + 1 + 8
	if len(b) < head+sha256.Size || string(b[:len(importCacheMagic)]) != importCacheMagic {
		return nil, errBadImportCache
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); string(got[:]) != string(sum) {
		return nil, errBadImportCache
	}
	if verity.Algorithm(body[len(importCacheMagic)]) != alg || alg.Size() == 0 {
		return nil, errBadImportCache
	}
	n := binary.LittleEndian.Uint64(body[len(importCacheMagic)+1:])
	r := body[head:]
	if n > uint64(len(r))/uint64(importKeySize+alg.Size()+2) {
		return nil, errBadImportCache
	}
	// take returns the next k bytes of r, or nil when r is too short.
	take := func(k int) []byte {
		if k > len(r) {
			return nil
		}
		p := r[:k:k]
		r = r[k:]
		return p
	}
	c := make(importCache, n)
	for range n {
		kb := take(importKeySize)
		db := take(alg.Size())
		cb := take(2)
		if cb == nil {
			return nil, errBadImportCache
		}
		var v [7]uint64
		for i := range v {
			v[i] = binary.LittleEndian.Uint64(kb[i*8:])
		}
		d, err := verity.NewDigest(alg, db)
		if err != nil {
			return nil, errBadImportCache
		}
		e := cacheEntry{digest: d}
		for range binary.LittleEndian.Uint16(cb) {
			nl := take(2)
			if nl == nil {
				return nil, errBadImportCache
			}
			name := take(int(binary.LittleEndian.Uint16(nl)))
			vl := take(4)
			if name == nil || vl == nil {
				return nil, errBadImportCache
			}
			val := take(int(binary.LittleEndian.Uint32(vl)))
			if val == nil {
				return nil, errBadImportCache
			}
			e.xattrs = append(e.xattrs, erofs.Xattr{Name: string(name), Value: append([]byte{}, val...)})
		}
		c[importKey{dev: v[0], ino: v[1], size: int64(v[2]), mtime: int64(v[3]), mnsec: int64(v[4]), ctime: int64(v[5]), cnsec: int64(v[6])}] = e
	}
	if len(r) != 0 {
		return nil, errBadImportCache
	}
	return c, nil
}

// importCachePath is STORE/state/import/<hash of the source path>.cache.
func (s *Store) importCachePath(src string) string {
	dir, err := s.StateDir("import")
	if err != nil {
		return ""
	}
	h := sha256.Sum256([]byte(src))
	return filepath.Join(dir, hex.EncodeToString(h[:8])+".cache")
}

// loadImportCache reads the cache at path; a missing or damaged one is empty.
func loadImportCache(path string, alg verity.Algorithm) importCache {
	if path != "" {
		if b, err := os.ReadFile(path); err == nil {
			if c, err := decodeImportCache(alg, b); err == nil {
				return c
			}
		}
	}
	return importCache{}
}

// writeImportCache replaces the cache at path: a temporary file renamed
// into place, without fsync (see ImportDir for why a cache needs none).
func writeImportCache(path string, alg verity.Algorithm, c importCache) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	_, err = f.Write(encodeImportCache(alg, c))
	if e := f.Close(); err == nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	return os.Rename(tmp, path)
}

// treeWalker builds an erofs tree from a directory. Directories are read
// by tasks of the import's errgroup (run inline when no slot is free, so
// that a task never waits for a slot while holding one), each adding only
// its own directory's children.
type treeWalker struct {
	g     *errgroup.Group
	ctx   context.Context
	file  func(b *dirBatch, n *erofs.Node, path string, sb *unix.Stat_t) error // a regular file to store as an object
	flush func(b *dirBatch) error                                              // after each directory's entries

	mu    sync.Mutex
	multi map[inodeKey][]*erofs.Node // non-directories with several names
}

// dirBatch collects, while one directory is read, the files to store
// together when its entries are done.
type dirBatch struct {
	files []cachedFile
}

// cachedFile is a file to store, with its import cache entry when the
// cache knows it.
type cachedFile struct {
	node  *erofs.Node
	path  string
	key   importKey
	entry cacheEntry
}

// spawn runs f as a task, or inline when every slot is taken.
func (w *treeWalker) spawn(f func() error) error {
	if w.g.TryGo(f) {
		return nil
	}
	return f()
}

func (w *treeWalker) build(dir string) (*erofs.Node, error) {
	var sb unix.Stat_t
	if err := unix.Lstat(dir, &sb); err != nil {
		return nil, fmt.Errorf("objstore: import: %s: %w", dir, err)
	}
	root := erofs.NewRoot(sb.Mode & 0o7777)
	if err := w.fill(nil, root, dir, &sb); err != nil {
		return nil, err
	}
	return root, w.dir(root, dir)
}

func (w *treeWalker) dir(parent *erofs.Node, dir string) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("objstore: import: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("objstore: import: %w", err)
	}
	sort.Strings(names)
	fd := int(f.Fd())
	prefix := strings.TrimSuffix(dir, "/") + "/"
	b := &dirBatch{files: make([]cachedFile, 0, len(names))}
	for _, name := range names {
		p := prefix + name
		var sb unix.Stat_t
		if err := unix.Fstatat(fd, name, &sb, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("objstore: import: %s: %w", p, err)
		}
		n := &erofs.Node{Name: name}
		if err := parent.AddChild(n); err != nil {
			return fmt.Errorf("objstore: import: %s: %w", p, err)
		}
		if err := w.fill(b, n, p, &sb); err != nil {
			return err
		}
		if n.IsDir() {
			if err := w.spawn(func() error { return w.dir(n, p) }); err != nil {
				return err
			}
		}
	}
	return w.flush(b)
}

// fixHardlinks makes, for each inode with several names, the first name
// in sorted depth-first order the primary (whatever task stored its
// content) and the others Link entries to it, so that the image does not
// depend on the order the tasks ran in.
func (w *treeWalker) fixHardlinks(root *erofs.Node) {
	if len(w.multi) == 0 {
		return
	}
	keyOf := map[*erofs.Node]inodeKey{}
	for k, nodes := range w.multi {
		for _, n := range nodes {
			keyOf[n] = k
		}
	}
	primary := map[inodeKey]*erofs.Node{}
	_ = root.Walk(func(n *erofs.Node) error {
		k, ok := keyOf[n]
		if !ok {
			return nil
		}
		if p := primary[k]; p != nil {
			n.Inode = erofs.Inode{}
			n.Link = p
			return nil
		}
		primary[k] = n
		// The content (digest and payload) is on whichever name was stored.
		for _, o := range w.multi[k] {
			if o.Payload != "" {
				n.Payload, n.Digest = o.Payload, o.Digest
			}
		}
		n.Nlink = uint32(len(w.multi[k]))
		return nil
	})
}

// fill sets a node's inode from lstat data, reading symlink targets,
// xattrs and small file contents, and handing larger files to w.file.
func (w *treeWalker) fill(b *dirBatch, n *erofs.Node, p string, sb *unix.Stat_t) error {
	dup := false
	if sb.Mode&unix.S_IFMT != unix.S_IFDIR && sb.Nlink > 1 {
		key := inodeKey{sb.Dev, sb.Ino}
		w.mu.Lock()
		dup = w.multi[key] != nil
		w.multi[key] = append(w.multi[key], n)
		w.mu.Unlock()
	}
	n.Mode = sb.Mode
	n.Nlink = 1
	n.UID, n.GID = sb.Uid, sb.Gid
	n.Mtime = erofs.Timespec{Sec: sb.Mtim.Sec, Nsec: uint32(sb.Mtim.Nsec)}
	if sb.Mode&unix.S_IFMT != unix.S_IFREG || sb.Size <= InlineMax || dup {
		// w.file reads the xattrs of the files it stores (or takes them
		// from the import cache).
		xs, err := readXattrs(p)
		if err != nil {
			return fmt.Errorf("objstore: import: %s: %w", p, err)
		}
		n.Xattrs = xs
	}
	switch sb.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		n.Nlink = 2
	case unix.S_IFLNK:
		t, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("objstore: import: %w", err)
		}
		n.Inode.Target = t
		n.Size = uint64(len(t))
	case unix.S_IFCHR, unix.S_IFBLK:
		n.Rdev = uint32(sb.Rdev)
	case unix.S_IFREG:
		n.Size = uint64(sb.Size)
		switch {
		case sb.Size == 0:
		case sb.Size <= InlineMax:
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("objstore: import: %w", err)
			}
			if int64(len(b)) != sb.Size {
				return fmt.Errorf("objstore: import: %s changed while read", p)
			}
			n.Content = b
		default:
			if dup {
				return nil // the content is stored once, for the first name found
			}
			return w.file(b, n, p, sb)
		}
	}
	return nil
}

// readXattrs returns a file's extended attributes, sorted by name.
func readXattrs(p string) ([]erofs.Xattr, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil {
		if err == unix.ENOTSUP {
			return nil, nil
		}
		return nil, err
	}
	if sz == 0 {
		return nil, nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var out []erofs.Xattr
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vs, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			if err == unix.ENODATA {
				continue
			}
			return nil, err
		}
		v := make([]byte, vs)
		vs, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, err
		}
		out = append(out, erofs.Xattr{Name: name, Value: v[:vs]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
