package objstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unsafe"

	cstorage "go.podman.io/storage"
	ctypes "go.podman.io/storage/types"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/verity"
)

// DedupOptions configure Dedup.
type DedupOptions struct {
	// GraphRoot, RunRoot and Driver name the container storage; empty
	// fields come from storage.conf (types.DefaultStoreOptions), normally
	// /var/lib/containers/storage.
	GraphRoot string
	RunRoot   string
	Driver    string
	// Timeout bounds opening container storage and listing its layers
	// (it may wait for the container engine's locks); default 30 s.
	Timeout time.Duration
	// Progress, when set, is called as candidate files are digested.
	Progress func(Progress)
}

// DedupResult is what Dedup shared.
type DedupResult struct {
	// Skipped says why nothing was shared (container storage absent, not
	// openable, busy); empty when Dedup ran.
	Skipped string `json:"skipped,omitempty"`
	Driver  string `json:"driver,omitempty"`
	Layers  int    `json:"layers"` // image layers examined
	Files   int    `json:"files"`  // their regular files larger than InlineMax
	// Hardlinked objects now use container storage's inode (our copy freed
	// unless a mounted image still holds it).
	Hardlinked      int   `json:"hardlinked"`
	HardlinkedBytes int64 `json:"hardlinked_bytes"`
	// Reflinked objects now share extents with container storage's file.
	Reflinked      int   `json:"reflinked"`
	ReflinkedBytes int64 `json:"reflinked_bytes"`
	// Indexed: container files we lacked, hardlinked into objects/ so that
	// later imports reuse them.
	Indexed       int `json:"indexed"`
	AlreadyShared int `json:"already_shared"`
	// NotShareable: identical content that could not be shared (another
	// filesystem without reflink support, or a clone on which fs-verity
	// could not be enabled with the expected measurement).
	NotShareable int `json:"not_shareable"`
}

// dedupFile is a candidate file of container storage.
type dedupFile struct {
	path     string
	hardlink bool // immutable by design: may be hardlinked
	st       unix.Stat_t
	d        verity.Digest
}

// Dedup shares identical content between the store and container storage
// (go.podman.io/storage). Policy:
//
//   - Only files of image layers are considered (never a container's
//     read-write layer): c/storage never writes a committed layer's files
//     again, so they are immutable by design. Composefs flat files
//     (overlay/<id>/diff/xx/rest next to composefs-data/) are in that class.
//   - Their files are never modified, renamed or removed: we only add
//     links to their inodes, or clone their extents. A container layer's
//     removal drops their names; our links keep the inode alive, and our
//     gc deletes an object only when its link count is 1, so nothing
//     container storage still links is ever deleted by us.
//   - Same filesystem: our names (objects/ and the directories of images
//     not in use) are replaced, by rename of a new link, with their inode,
//     which frees our copy and shares the page cache. Content we lack is
//     linked into objects/ so later imports reuse it.
//   - An image in use is not touched: each image's name is replaced while
//     Dedup holds the image's .lock exclusively (LOCK_NB, taken before the
//     check and dropped after the rename), so MountImage (which takes it
//     shared) cannot mount it in between; an image whose lock is held, or
//     that the mount table names, is skipped. A later run moves the names
//     it skipped, even when objects/ is already shared.
//   - Order: image names first, objects/ last; the new links are made in
//     tmp/ and renamed over our names (atomic per name), so after a crash
//     every name is either our old inode or the verified new one, and only
//     tmp/ leftovers remain. The shared gc lock is held meanwhile.
//   - Another filesystem, another mount of the same one (link gives
//     EXDEV), or a file not eligible for hardlinking: a reflink (FICLONE)
//     clone made in tmp/ replaces our copy, verified after cloning; when
//     the filesystem cannot reflink, nothing is shared (NotShareable). An
//     objects/ entry whose extents are already all theirs (FIEMAP) counts
//     as AlreadyShared and is not cloned again.
//   - With fs-verity available, a file without verity is not hardlinked
//     (enabling it would modify their inode), and a clone gets fs-verity
//     (sealObject: enabled, measurement checked against the digest) before
//     any name of ours points to it, so verity=require mounts can read it;
//     a clone that cannot be sealed is not shared (counted in NotShareable).
//
// Opening container storage can fail or wait for locks: that is "no
// sharing this time" (DedupResult.Skipped), never an error. Digests of
// their files are cached in state/dedup/cache.json by device, inode, size
// and mtime.
func (s *Store) Dedup(ctx context.Context, opts DedupOptions) (DedupResult, error) {
	var res DedupResult
	files, driver, why := s.containerFiles(ctx, opts)
	res.Driver = driver
	if why != "" {
		res.Skipped = why
		s.log.Info("dedup skipped", "reason", why)
		return res, nil
	}
	layers := map[string]bool{}
	for _, f := range files {
		layers[f.layer] = true
	}
	res.Layers = len(layers)
	res.Files = len(files)
	cache := s.loadDedupCache()
	var mu sync.Mutex
	var done, bytes int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for i := range files {
		f := &files[i].dedupFile
		g.Go(func() error {
			key := cacheKey(&f.st)
			mu.Lock()
			hexd, ok := cache[key]
			mu.Unlock()
			if ok {
				if d, err := verity.ParseDigest(s.alg.String() + ":" + hexd); err == nil {
					f.d = d
				}
			}
			if f.d.IsZero() {
				d, err := verity.DigestFile(gctx, f.path, s.alg)
				if err != nil {
					if gctx.Err() != nil {
						return gctx.Err()
					}
					return nil // vanished or unreadable: skip
				}
				f.d = d
				mu.Lock()
				cache[key] = d.Hex()
				mu.Unlock()
			}
			mu.Lock()
			done++
			bytes += f.st.Size
			if opts.Progress != nil {
				opts.Progress(Progress{Op: "dedup", Done: done, Total: int64(len(files)), Bytes: bytes})
			}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	if err := s.saveDedupCache(cache); err != nil {
		s.log.Warn("saving dedup cache", "err", err)
	}
	// Their content must be durable before objects/ names it.
	if err := s.syncfs(); err != nil {
		return res, err
	}
	seen := map[verity.Digest]bool{}
	for i := range files {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		f := &files[i].dedupFile
		if f.d.IsZero() || seen[f.d] {
			continue
		}
		seen[f.d] = true
		if err := s.shareOne(ctx, f, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// shareOne shares one container file with the store.
//
// The inode our names should end on (the target) is theirs when it can be
// hardlinked, else a FICLONE clone of it made in tmp/, verified against the
// digest and, where the store has fs-verity, sealed; when objects/ already
// is their inode (or shares all its extents with theirs) it is the target
// as it is, and only image names left behind by an earlier run (their image
// was in use then) are moved. Image names go first, each under its image's
// exclusive lock (lockIdleImage), objects/ last; every name is replaced by
// renaming a new link from tmp/ over it, so at any point each name is either
// the old inode or the verified target, and a crash leaves only tmp/
// leftovers, which the next open or gc removes.
func (s *Store) shareOne(ctx context.Context, f *dedupFile, res *DedupResult) error {
	obj := s.ObjectPath(f.d)
	var ours unix.Stat_t
	have := unix.Lstat(obj, &ours) == nil
	sameFS := f.st.Dev == s.dev
	hardlink := sameFS && f.hardlink
	if hardlink && s.VeritySupported() {
		if fh, err := os.Open(f.path); err == nil {
			on, _ := verity.IsEnabled(fh)
			fh.Close()
			hardlink = on
		}
	}
	if !have {
		if !hardlink {
			return nil // nothing of ours to share, and no cheap way to keep theirs
		}
		// Recheck the content: the cache key may be stale in theory.
		if d, err := verity.DigestFile(ctx, f.path, s.alg); err != nil || d != f.d {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(obj), 0o700); err != nil {
			return fmt.Errorf("objstore: %w", err)
		}
		if err := os.Link(f.path, obj); err == nil {
			res.Indexed++
		}
		return nil
	}
	tmpSt, err := s.newStagingDir()
	if err != nil {
		return err
	}
	defer tmpSt.remove()
	// src is a name of the target inode.
	src := filepath.Join(tmpSt.dir, "share")
	objDone := ours.Dev == f.st.Dev && ours.Ino == f.st.Ino
	linked := false
	if objDone {
		hardlink = true // the target is their inode
	} else if hardlink {
		err := os.Link(f.path, src)
		switch {
		case err == nil:
			linked = true
		case errors.Is(err, unix.EXDEV):
			// Same filesystem through another mount: links cannot cross
			// it, clones can.
			hardlink = false
		default:
			return nil // removed under us: skip
		}
	}
	if !objDone && !hardlink && extentsShared(obj, f.path) {
		objDone = true // reflinked by an earlier run
	}
	if objDone {
		src = obj
	} else {
		// We have the object: put their inode (or a clone of it) under our names.
		if !linked {
			if err := reflinkFile(f.path, src); err != nil {
				if errors.Is(err, ErrNotSupported) {
					res.NotShareable++
				}
				return nil
			}
		}
		// Verify what we are about to link (their file may have changed since
		// it was digested, or the clone may be of newer content).
		if d, err := verity.DigestFile(ctx, src, s.alg); err != nil || d != f.d {
			return nil
		}
		// A clone is a new inode: it needs fs-verity before any name of ours
		// is it, or a verity=require mount of an image could not read it.
		if !hardlink && s.VeritySupported() {
			if err := s.sealObject(src, f.d); err != nil {
				s.log.Warn("dedup: cannot seal clone, not sharing it", "object", f.d.String(), "err", err)
				res.NotShareable++
				return nil
			}
		}
	}
	var target unix.Stat_t
	if err := unix.Lstat(src, &target); err != nil {
		return nil // objects/ name replaced or removed under us: next run
	}
	// GC must not unlink an objects/ name between its link count check and
	// its unlink while we rename another inode over it.
	if !s.noGCLock {
		gl, err := s.gcLock()
		if err != nil {
			return err
		}
		defer gl.Close()
		if err := gl.lockShared(); err != nil {
			return fmt.Errorf("objstore: gc lock: %w", err)
		}
	}
	n := 0
	replace := func(name string) error {
		n++
		tmp := filepath.Join(tmpSt.dir, fmt.Sprintf("link-%d", n))
		if err := os.Link(src, tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, name); err != nil {
			os.Remove(tmp)
			return err
		}
		return nil
	}
	moved := 0
	imgs, _ := os.ReadDir(filepath.Join(s.root, dirImages))
	for _, e := range imgs {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, ok := s.parseImageName(e.Name())
		if !ok {
			continue
		}
		p := filepath.Join(s.ImageDir(d), f.d.ObjectPath())
		var sb unix.Stat_t
		if unix.Lstat(p, &sb) != nil || (sb.Dev == target.Dev && sb.Ino == target.Ino) {
			continue
		}
		lk, ok := s.lockIdleImage(d)
		if !ok {
			continue // a mounted lower layer is left alone: a later run moves it
		}
		// Under the lock: the name may have changed since the check above.
		if unix.Lstat(p, &sb) == nil && (sb.Dev != target.Dev || sb.Ino != target.Ino) {
			s.crashPoint("dedup.image-locked")
			if err := replace(p); err == nil {
				moved++
			} else if !errors.Is(err, fs.ErrNotExist) {
				lk.Close()
				return fmt.Errorf("objstore: dedup: %w", err)
			}
		}
		lk.Close()
	}
	if !objDone {
		if err := replace(obj); err != nil {
			return fmt.Errorf("objstore: dedup: %w", err)
		}
		moved++
	}
	switch {
	case moved == 0:
		res.AlreadyShared++
	case hardlink:
		res.Hardlinked++
		res.HardlinkedBytes += f.st.Size
	default:
		res.Reflinked++
		res.ReflinkedBytes += f.st.Size
	}
	return nil
}

// lockIdleImage takes image d's .lock exclusively, without waiting, for
// the caller to replace names in the image's directory; it returns false
// (and holds nothing) when the image is in use: its lock is held (a
// MountImage holds it shared from before its mount until Unmount), its
// directory is being removed, or the mount table names it (mounted by a
// process that released its lock). The table is read after the lock is
// taken: a mount that starts later must first wait for our lock. The
// caller closes the file (dropping the lock) after its renames.
func (s *Store) lockIdleImage(d verity.Digest) (*os.File, bool) {
	lp := filepath.Join(s.ImageDir(d), fileLock)
	f, err := os.OpenFile(lp, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	if flock(f, unix.LOCK_EX|unix.LOCK_NB) != nil {
		f.Close()
		return nil, false
	}
	// A removal renames the directory away before it locks: the lock must
	// be the one still at its place.
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(lp, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
		f.Close()
		return nil, false
	}
	if s.mounted(d) {
		f.Close()
		return nil, false
	}
	return f, true
}

// FIEMAP (linux/fiemap.h); x/sys has no wrapper.
const (
	fsIocFiemap      = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync   = 0x1
	fiemapExtentLast = 0x1
	// Extents whose physical address does not identify their data.
	fiemapExtentVague  = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 // UNKNOWN DELALLOC ENCODED DATA_ENCRYPTED NOT_ALIGNED DATA_INLINE DATA_TAIL
	fiemapExtentShared = 0x2000
	fiemapHeader       = 32
	fiemapExtentSize   = 56
)

type fileExtent struct {
	logical, physical, length uint64
	flags                     uint32
}

// fileExtents lists the data extents of f (FIEMAP with FIEMAP_FLAG_SYNC, so
// delayed allocations are on disk first), merging physically contiguous
// neighbours so that two files mapping the same blocks compare equal
// however their filesystem split the mappings.
func fileExtents(f *os.File) ([]fileExtent, error) {
	const batch = 64
	buf := make([]byte, fiemapHeader+fiemapExtentSize*batch)
	ne := binary.NativeEndian
	var out []fileExtent
	var start uint64
	for {
		clear(buf)
		ne.PutUint64(buf[0:], start)
		ne.PutUint64(buf[8:], ^uint64(0)-start)
		ne.PutUint32(buf[16:], fiemapFlagSync)
		ne.PutUint32(buf[24:], batch)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			return nil, e
		}
		n := int(ne.Uint32(buf[20:]))
		if n == 0 {
			return out, nil
		}
		var e fileExtent
		for i := range n {
			o := fiemapHeader + fiemapExtentSize*i
			e = fileExtent{logical: ne.Uint64(buf[o:]), physical: ne.Uint64(buf[o+8:]),
				length: ne.Uint64(buf[o+16:]), flags: ne.Uint32(buf[o+40:])}
			if k := len(out) - 1; k >= 0 && out[k].logical+out[k].length == e.logical &&
				out[k].physical+out[k].length == e.physical && (out[k].flags|e.flags)&fiemapExtentVague == 0 {
				out[k].length += e.length
				out[k].flags |= e.flags &^ fiemapExtentLast
				if e.flags&fiemapExtentLast != 0 {
					out[k].flags |= fiemapExtentLast
				}
				continue
			}
			out = append(out, e)
		}
		if e.flags&fiemapExtentLast != 0 {
			return out, nil
		}
		start = e.logical + e.length
	}
}

// extentsShared reports whether files a and b have the same size and map
// all their data to the same physical extents (a reflink of one another),
// as far as FIEMAP can tell; false when it cannot.
func extentsShared(a, b string) bool {
	var ext [2][]fileExtent
	var size [2]int64
	for i, p := range []string{a, b} {
		f, err := os.Open(p)
		if err != nil {
			return false
		}
		fi, err := f.Stat()
		if err == nil {
			size[i] = fi.Size()
			ext[i], err = fileExtents(f)
		}
		f.Close()
		if err != nil {
			return false
		}
	}
	if size[0] != size[1] || len(ext[0]) == 0 || len(ext[0]) != len(ext[1]) {
		return false
	}
	for i, x := range ext[0] {
		y := ext[1][i]
		if x.flags&fiemapExtentVague != 0 || y.flags&fiemapExtentVague != 0 ||
			x.logical != y.logical || x.physical != y.physical || x.length != y.length {
			return false
		}
	}
	return true
}

// reflinkFile clones src's extents into a new file dst (FICLONE).
func reflinkFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	err = unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	out.Close()
	if err != nil {
		os.Remove(dst)
		if err == unix.EOPNOTSUPP || err == unix.EXDEV || err == unix.EINVAL || err == unix.ENOTTY {
			return fmt.Errorf("%w: reflink %s: %v", ErrNotSupported, src, err)
		}
		return err
	}
	return nil
}

type layerFile struct {
	dedupFile
	layer string
}

// containerFiles opens container storage, lists its image layers and
// closes it again, then walks the layer directories for regular files
// larger than InlineMax. A non-empty reason means "no sharing this time".
func (s *Store) containerFiles(ctx context.Context, opts DedupOptions) (files []layerFile, driver, reason string) {
	so, err := ctypes.DefaultStoreOptions()
	if err != nil {
		so = ctypes.StoreOptions{}
	}
	if opts.GraphRoot != "" {
		so.GraphRoot = opts.GraphRoot
		so.RunRoot = ""
		so.GraphDriverName = ""
		so.GraphDriverOptions = nil
	}
	if opts.RunRoot != "" {
		so.RunRoot = opts.RunRoot
	}
	if so.RunRoot == "" {
		so.RunRoot = filepath.Join(so.GraphRoot, "run")
	}
	if opts.Driver != "" {
		so.GraphDriverName = opts.Driver
	}
	if so.GraphRoot == "" {
		return nil, "", "no container storage configured"
	}
	if _, err := os.Stat(so.GraphRoot); err != nil {
		// GetStore would create it: do not.
		return nil, "", fmt.Sprintf("no container storage at %s", so.GraphRoot)
	}
	type listing struct {
		driver string
		layers []string
		err    error
	}
	ch := make(chan listing, 1)
	go func() {
		var l listing
		st, err := cstorage.GetStore(so)
		if err != nil {
			l.err = err
			ch <- l
			return
		}
		defer st.Shutdown(false)
		l.driver = st.GraphDriverName()
		rw := map[string]bool{}
		cs, err := st.Containers()
		if err != nil {
			l.err = err
			ch <- l
			return
		}
		for _, c := range cs {
			rw[c.LayerID] = true
		}
		ls, err := st.Layers()
		if err != nil {
			l.err = err
			ch <- l
			return
		}
		for _, ly := range ls {
			if !rw[ly.ID] {
				l.layers = append(l.layers, ly.ID)
			}
		}
		ch <- l
	}()
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	var l listing
	select {
	case l = <-ch:
	case <-time.After(timeout):
		return nil, "", "container storage busy (timed out waiting for its locks)"
	case <-ctx.Done():
		return nil, "", ctx.Err().Error()
	}
	if l.err != nil {
		return nil, "", "cannot open container storage: " + l.err.Error()
	}
	for _, id := range l.layers {
		var dir string
		switch l.driver {
		case "overlay":
			// Plain layers keep files at their real paths, composefs
			// layers a flat xx/rest store; both are image-layer files.
			dir = filepath.Join(so.GraphRoot, "overlay", id, "diff")
		case "vfs":
			dir = filepath.Join(so.GraphRoot, "vfs", "dir", id)
		default:
			continue
		}
		_ = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return nil
			}
			var sb unix.Stat_t
			if unix.Lstat(p, &sb) != nil || sb.Size <= InlineMax {
				return nil
			}
			files = append(files, layerFile{dedupFile: dedupFile{path: p, hardlink: true, st: sb}, layer: id})
			return nil
		})
	}
	return files, l.driver, ""
}

func cacheKey(st *unix.Stat_t) string {
	return fmt.Sprintf("%d:%d:%d:%d.%d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
}

func (s *Store) loadDedupCache() map[string]string {
	m := map[string]string{}
	dir, err := s.StateDir("dedup")
	if err != nil {
		return m
	}
	b, err := os.ReadFile(filepath.Join(dir, "cache.json"))
	if err == nil {
		_ = json.Unmarshal(b, &m)
	}
	for k, v := range m {
		if strings.ContainsAny(v, ":/") {
			delete(m, k)
		}
	}
	return m
}

func (s *Store) saveDedupCache(m map[string]string) error {
	dir, err := s.StateDir("dedup")
	if err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, "cache.json"), b, 0o600)
}
