package objstore

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/verity"
)

// ImageMeta is an image's provenance, kept in images/<digest>/meta.json.
type ImageMeta struct {
	// Source is the reference as given: docker://host/repo:tag,
	// oci:DIR:tag, or import:/path.
	Source string `json:"source,omitempty"`
	// Manifest is the manifest digest (sha256:...).
	Manifest string `json:"manifest,omitempty"`
	// Config is the config digest.
	Config string `json:"config,omitempty"`
	// Labels are selected image labels.
	Labels map[string]string `json:"labels,omitempty"`
	// Created is the commit time (set by Commit when zero).
	Created time.Time `json:"created"`
	// Extra is free-form data of the committing package.
	Extra json.RawMessage `json:"extra,omitempty"`
}

// Staging collects the objects of one image being built, in a private
// directory under tmp/ that holds an exclusive flock on tmp/<name>.lock for
// its whole life. Its methods are safe for concurrent use.
type Staging struct {
	s      *Store
	name   string
	dir    string    // tmp/<name>
	lockf  *os.File  // tmp/<name>.lock, LOCK_EX
	gcl    *gcLocker // own handle on the gc lock, for shared locks
	lmu    sync.Mutex
	lcount int         // workers inside lockShared
	lheld  bool        // gcl holds LOCK_SH
	lspent bool        // held for gcLockHold: drop when lcount is 0
	ltimer *time.Timer // marks the lock spent

	mu      sync.Mutex
	dirs    fanoutDirs
	staged  map[verity.Digest]int64 // everything in dir, with its size
	pending map[verity.Digest]bool  // new content, not yet in objects/
	done    bool
}

// newStagingDir creates tmp/<name>.lock, locks it exclusively, checks it is
// still the file at that name (a concurrent cleaner may have removed it
// between creation and locking), then creates tmp/<name>/.
func (s *Store) newStagingDir() (*Staging, error) {
	tmp := filepath.Join(s.root, dirTmp)
	for range 100 {
		var rb [8]byte
		_, _ = rand.Read(rb[:])
		name := "st-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rb[:])
		lp := filepath.Join(tmp, name+".lock")
		f, err := os.OpenFile(lp, os.O_RDONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("objstore: creating staging lock %s: %w", lp, err)
		}
		if err := flock(f, unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("objstore: locking %s: %w", lp, err)
		}
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(lp, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
			f.Close() // removed by a cleaner before we locked it: try again
			continue
		}
		dir := filepath.Join(tmp, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			os.Remove(lp)
			f.Close()
			return nil, fmt.Errorf("objstore: creating staging directory: %w", err)
		}
		st := &Staging{s: s, name: name, dir: dir, lockf: f,
			staged: map[verity.Digest]int64{}, pending: map[verity.Digest]bool{}}
		st.dirs.open = keepDescriptors()
		return st, nil
	}
	return nil, fmt.Errorf("objstore: cannot create a staging directory in %s", tmp)
}

// remove deletes the staging directory, then its lock file, then releases
// the lock (a cleaner that sees the lock file can always lock it or skip).
func (st *Staging) remove() error {
	st.lmu.Lock()
	if st.ltimer != nil {
		st.ltimer.Stop()
	}
	st.lheld = false // closing gcl below drops the lock
	st.lmu.Unlock()
	st.releaseDirs()
	err := os.RemoveAll(st.dir)
	if e := os.Remove(st.dir + ".lock"); e != nil && !errors.Is(e, fs.ErrNotExist) && err == nil {
		err = e
	}
	st.lockf.Close()
	if st.gcl != nil {
		st.gcl.Close()
	}
	return err
}

// NewStaging starts building an image. Commit or Abort it.
func (s *Store) NewStaging(ctx context.Context) (*Staging, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	s.VeritySupported()
	st, err := s.newStagingDir()
	if err != nil {
		return nil, err
	}
	if st.gcl, err = s.gcLock(); err != nil {
		st.remove()
		return nil, err
	}
	return st, nil
}

// Dir returns the staging directory (the image's future reference dir).
func (st *Staging) Dir() string { return st.dir }

// gcLockHold is how long a staging keeps the shared gc lock once taken,
// so that a run of links costs two flock calls, not two per link; gc waits
// at most this long (plus the links in flight) for a busy importer.
const gcLockHold = 50 * time.Millisecond

// lockShared takes the shared gc lock for one link operation. flock locks
// belong to the open file description, which the staging's workers share:
// a count keeps the lock while any of them links, and the lock is dropped
// when none does and gcLockHold has passed since it was taken.
func (st *Staging) lockShared() error {
	if st.s.noGCLock {
		return nil
	}
	st.lmu.Lock()
	defer st.lmu.Unlock()
	if !st.lheld {
		if err := st.gcl.lockShared(); err != nil {
			return err
		}
		st.lheld, st.lspent = true, false
		if st.ltimer == nil {
			st.ltimer = time.AfterFunc(gcLockHold, st.spendLock)
		} else {
			st.ltimer.Reset(gcLockHold)
		}
	}
	st.lcount++
	return nil
}

func (st *Staging) unlock() {
	if st.s.noGCLock {
		return
	}
	st.lmu.Lock()
	defer st.lmu.Unlock()
	st.lcount--
	if st.lcount == 0 && st.lspent {
		st.dropLock()
	}
}

// spendLock runs gcLockHold after the lock was taken: it drops the lock
// now when no link is in flight, else when the last one ends.
func (st *Staging) spendLock() {
	st.lmu.Lock()
	defer st.lmu.Unlock()
	if !st.lheld {
		return
	}
	if st.lcount == 0 {
		st.dropLock()
	} else {
		st.lspent = true
	}
}

// dropLock releases the shared gc lock. Call with st.lmu held.
func (st *Staging) dropLock() {
	st.gcl.unlock()
	st.lheld, st.lspent = false, false
}

// fanoutDirs holds descriptors (O_PATH) of a staging's fan-out
// directories STAGING/xx and of objects/xx, each opened once, so that
// placing an object is one linkat by name between two open directories
// rather than two walks of paths through the store root: a re-import is
// mostly such links. Indexed by the digest's first byte; 0 means not open
// (descriptor 0 is never a directory we opened).
type fanoutDirs struct {
	open    bool            // keep descriptors (false: whole paths; see fanoutDescriptorsMin)
	made    [256]bool       // without descriptors: the fan-outs made
	mu      [256]sync.Mutex // per fan-out: a slow mkdir holds up only its own
	staging [256]int
	objects [256]int

	// The descriptors are closed when the staging is done and no operation
	// that started before is still using them (a closed number could be
	// reused by another open, and a late linkat would go there).
	omu      sync.Mutex
	inflight int
	closing  bool
}

// fanoutDescriptorsMin is the soft RLIMIT_NOFILE from which stagings keep
// their (up to 512) directory descriptors open. Go raises the soft limit
// to the hard one, 524,288 under systemd; below this a staging uses whole
// paths, so that it never starves the rest of the process of descriptors.
const fanoutDescriptorsMin = 16384

// keepDescriptors reports whether a new staging may keep descriptors.
func keepDescriptors() bool {
	var lim unix.Rlimit
	return unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur >= fanoutDescriptorsMin
}

// opStart marks an operation that will use the descriptors. Call with
// st.mu held, after checking st.done.
func (st *Staging) opStart() {
	st.dirs.omu.Lock()
	st.dirs.inflight++
	st.dirs.omu.Unlock()
}

// opEnd ends it; the last one after remove closes the descriptors.
func (st *Staging) opEnd() {
	st.dirs.omu.Lock()
	defer st.dirs.omu.Unlock()
	st.dirs.inflight--
	if st.dirs.inflight == 0 && st.dirs.closing {
		st.dirs.close()
	}
}

// release closes the descriptors now, or when the operations in flight end.
func (st *Staging) releaseDirs() {
	st.dirs.omu.Lock()
	defer st.dirs.omu.Unlock()
	st.dirs.closing = true
	if st.dirs.inflight == 0 {
		st.dirs.close()
	}
}

func (f *fanoutDirs) close() {
	for i := range 256 {
		for _, fd := range []*int{&f.staging[i], &f.objects[i]} {
			if *fd > 0 {
				unix.Close(*fd)
				*fd = 0
			}
		}
	}
}

// unhex is the value of a lowercase hex digit.
func unhex(c byte) int {
	if c >= 'a' {
		return int(c-'a') + 10
	}
	return int(c - '0')
}

// openDir creates dir (when missing) and opens it as an O_PATH descriptor.
func openDir(dir string) (int, error) {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return 0, fmt.Errorf("objstore: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("objstore: opening %s: %w", dir, err)
	}
	return fd, nil
}

// place says where an object goes: its name in objects/ and in the
// staging, each as a directory descriptor and a name in it.
type place struct {
	objDir, stDir   int
	objName, stName string
}

// fanout returns where object d goes, creating and opening STAGING/xx and
// objects/xx on first use (objects/xx is created too when missing:
// fan-out directories are never removed, and an empty one is harmless).
// When the process is out of descriptors (EMFILE, ENFILE) it falls back
// to whole paths for this object, and tries to open the directory again
// next time.
func (st *Staging) fanout(d verity.Digest) (place, error) {
	h := d.ObjectPath() // "xx/rest"
	i := unhex(h[0])<<4 | unhex(h[1])
	st.dirs.mu[i].Lock()
	defer st.dirs.mu[i].Unlock()
	byPath := place{objDir: unix.AT_FDCWD, objName: filepath.Join(st.s.root, dirObjects, h),
		stDir: unix.AT_FDCWD, stName: filepath.Join(st.dir, h)}
	if !st.dirs.open {
		if !st.dirs.made[i] {
			for _, dir := range []string{filepath.Dir(byPath.stName), filepath.Dir(byPath.objName)} {
				if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
					return place{}, fmt.Errorf("objstore: %w", err)
				}
			}
			st.dirs.made[i] = true
		}
		return byPath, nil
	}
	var err error
	for _, fd := range []struct {
		p   *int
		dir string
	}{{&st.dirs.staging[i], filepath.Join(st.dir, h[:2])}, {&st.dirs.objects[i], filepath.Join(st.s.root, dirObjects, h[:2])}} {
		if *fd.p != 0 {
			continue
		}
		if *fd.p, err = openDir(fd.dir); err != nil {
			*fd.p = 0
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				return byPath, nil // openDir made the directory before failing to open it
			}
			return place{}, err
		}
	}
	return place{objDir: st.dirs.objects[i], objName: h[3:], stDir: st.dirs.staging[i], stName: h[3:]}, nil
}

// tmpFile is a file being written: an O_TMPFILE, or a named temporary file
// when the filesystem has no O_TMPFILE.
type tmpFile struct {
	f    *os.File
	name string // "" for O_TMPFILE
}

func (st *Staging) createTmp() (*tmpFile, error) {
	fd, err := unix.Open(st.dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return &tmpFile{f: os.NewFile(uintptr(fd), st.dir+"/(tmpfile)")}, nil
	}
	if err != unix.EOPNOTSUPP && err != unix.EISDIR && err != unix.EINVAL {
		return nil, fmt.Errorf("objstore: creating object in %s: %w", st.dir, err)
	}
	f, err := os.CreateTemp(st.dir, ".tmp-")
	if err != nil {
		return nil, fmt.Errorf("objstore: creating object: %w", err)
	}
	return &tmpFile{f: f, name: f.Name()}, nil
}

func (t *tmpFile) discard() {
	t.f.Close()
	if t.name != "" {
		os.Remove(t.name)
	}
}

// linkTo gives the temporary file the name name in directory dirFD.
func (t *tmpFile) linkTo(dirFD int, name string) error {
	if t.name != "" {
		return unix.Linkat(unix.AT_FDCWD, t.name, dirFD, name, 0)
	}
	p := "/proc/self/fd/" + strconv.Itoa(int(t.f.Fd()))
	return unix.Linkat(unix.AT_FDCWD, p, dirFD, name, unix.AT_SYMLINK_FOLLOW)
}

// AddObject streams r into a new object, digesting it while it is written
// (size is the expected length, -1 when unknown; a mismatch fails with
// ErrSizeMismatch). When objects/ already holds the digest, that object is
// linked into the staging directory and the new copy dropped (added is
// false); otherwise the new file becomes STAGING/xx/rest (read-only, with
// fs-verity where supported) and is linked into objects/ at Commit, after
// the syncfs barrier. Takes the shared gc lock while linking.
func (st *Staging) AddObject(ctx context.Context, r io.Reader, size int64) (d verity.Digest, added bool, err error) {
	s := st.s
	t, err := st.createTmp()
	if err != nil {
		return d, false, err
	}
	defer func() {
		if t != nil {
			t.discard()
		}
	}()
	bp := s.bufs.Get().(*[]byte)
	h := s.hashers.Get().(*verity.Hasher)
	h.Reset()
	n, err := io.CopyBuffer(io.MultiWriter(t.f, h), ctxReader{ctx, r}, *bp)
	s.bufs.Put(bp)
	sum := h.Sum()
	s.hashers.Put(h)
	if err != nil {
		return d, false, fmt.Errorf("objstore: writing object: %w", err)
	}
	if size >= 0 && n != size {
		return d, false, fmt.Errorf("objstore: %w: got %d bytes, expected %d", ErrSizeMismatch, n, size)
	}
	d = sum
	if err := t.f.Chmod(0o444); err != nil {
		return d, false, fmt.Errorf("objstore: %w", err)
	}
	s.crashPoint("add.written")

	// st.mu guards the maps only; the links are made outside it, so that
	// workers run their syscalls in parallel. Two workers staging the same
	// digest meet at EEXIST on the staging name.
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		return d, false, ErrClosed
	}
	_, ok := st.staged[d]
	if ok {
		st.mu.Unlock()
		return d, false, nil
	}
	st.opStart()
	st.mu.Unlock()
	defer st.opEnd()
	pl, err := st.fanout(d)
	if err != nil {
		return d, false, err
	}
	existing, err := st.linkExisting(d, pl, n)
	if err != nil {
		return d, false, err
	}
	if existing {
		st.record(d, n, false)
		s.crashPoint("add.linked-existing")
		return d, false, nil
	}
	dst := filepath.Join(st.dir, d.ObjectPath())
	if err := t.linkTo(pl.stDir, pl.stName); err != nil {
		if err == unix.EEXIST {
			return d, false, nil // staged meanwhile by another worker
		}
		return d, false, fmt.Errorf("objstore: placing object %s: %w", d, err)
	}
	s.crashPoint("add.placed")
	t.discard() // closes the writable descriptor, needed before enabling verity
	t = nil
	if s.VeritySupported() {
		if err := s.sealObject(dst, d); err != nil {
			os.Remove(dst)
			return d, false, err
		}
	}
	st.record(d, n, true)
	return d, true, nil
}

// record notes a staged object.
func (st *Staging) record(d verity.Digest, size int64, pending bool) {
	st.mu.Lock()
	st.staged[d] = size
	if pending {
		st.pending[d] = true
	}
	st.mu.Unlock()
}

// linkExisting links objects/<d> to its place in the staging, under the
// shared gc lock. It
// reports false when objects/ has no such object (or a broken one whose
// size differs from a size ≥ 0, which fsck reports).
func (st *Staging) linkExisting(d verity.Digest, pl place, size int64) (bool, error) {
	if err := st.lockShared(); err != nil {
		return false, fmt.Errorf("objstore: gc lock: %w", err)
	}
	defer st.unlock()
	err := unix.Linkat(pl.objDir, pl.objName, pl.stDir, pl.stName, 0)
	if err == unix.ENOENT {
		return false, nil
	}
	if err == unix.EEXIST {
		return true, nil // staged meanwhile by another worker of this staging
	}
	if err != nil {
		return false, fmt.Errorf("objstore: linking object %s: %w", d, err)
	}
	if size >= 0 {
		var sb unix.Stat_t
		if unix.Fstatat(pl.stDir, pl.stName, &sb, unix.AT_SYMLINK_NOFOLLOW) != nil || sb.Size != size || sb.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Unlinkat(pl.stDir, pl.stName, 0)
			st.s.log.Warn("object in objects/ has the wrong size; keeping a new copy", "digest", d)
			return false, nil
		}
	}
	return true, nil
}

// sealObject enables fs-verity on a placed object and checks the kernel's
// measurement against the digest computed while writing.
func (s *Store) sealObject(path string, d verity.Digest) error {
	var err error
	for range 20 { // ETXTBSY: a child forked while the descriptor was writable
		var f *os.File
		f, err = os.Open(path)
		if err != nil {
			return fmt.Errorf("objstore: %w", err)
		}
		err = verity.Enable(f, s.alg)
		if err == nil || errors.Is(err, verity.ErrAlreadyEnabled) {
			m, merr := verity.Measure(f)
			f.Close()
			if merr != nil {
				return fmt.Errorf("objstore: measuring %s: %w", path, merr)
			}
			if m != d {
				return fmt.Errorf("objstore: %s: %w: kernel measured %s, computed %s", path, ErrCorrupt, m, d)
			}
			return nil
		}
		f.Close()
		if !errors.Is(err, verity.ErrFileBusy) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("objstore: enabling fs-verity on %s: %w", path, err)
}

// LinkObject adds the existing object d to the image without its content
// (taking the shared gc lock). It fails with ErrNotFound when objects/ has
// no such object.
func (st *Staging) LinkObject(ctx context.Context, d verity.Digest) error {
	found, err := st.linkObjects(ctx, []verity.Digest{d}, nil)
	if err != nil {
		return err
	}
	if !found[0] {
		return fmt.Errorf("objstore: object %s: %w", d, ErrNotFound)
	}
	return nil
}

// LinkObjects is LinkObject for each of ds, in one run under the shared gc
// lock: found[i] reports whether ds[i] is now in the image (a digest that
// objects/ lacks is not an error). sizes, when not nil, are the objects'
// known sizes, recorded without a stat of each link.
func (st *Staging) LinkObjects(ctx context.Context, ds []verity.Digest, sizes []int64) (found []bool, err error) {
	return st.linkObjects(ctx, ds, sizes)
}

func (st *Staging) linkObjects(ctx context.Context, ds []verity.Digest, sizes []int64) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if sizes != nil && len(sizes) != len(ds) {
		return nil, fmt.Errorf("objstore: LinkObjects: %d sizes for %d digests", len(sizes), len(ds))
	}
	type link struct {
		i int
		place
	}
	found := make([]bool, len(ds))
	todo := make([]link, 0, len(ds))
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		return nil, ErrClosed
	}
	for i, d := range ds {
		if d.Algorithm() != st.s.alg {
			st.mu.Unlock()
			return nil, fmt.Errorf("objstore: object %s: %w", d, ErrAlgorithm)
		}
		if _, ok := st.staged[d]; ok {
			found[i] = true
			continue
		}
		todo = append(todo, link{i: i})
	}
	st.opStart()
	st.mu.Unlock()
	defer st.opEnd()
	for j := range todo {
		l := &todo[j]
		var err error
		if l.place, err = st.fanout(ds[l.i]); err != nil {
			return nil, err
		}
	}
	if len(todo) == 0 {
		return found, nil
	}
	if err := st.lockShared(); err != nil {
		return nil, fmt.Errorf("objstore: gc lock: %w", err)
	}
	for _, l := range todo {
		err := unix.Linkat(l.objDir, l.objName, l.stDir, l.stName, 0)
		switch err {
		case nil, unix.EEXIST: // EEXIST: staged meanwhile, or twice in ds
			found[l.i] = true
		case unix.ENOENT:
		default:
			st.unlock()
			return nil, fmt.Errorf("objstore: linking object %s: %w", ds[l.i], err)
		}
	}
	st.unlock()
	var sb unix.Stat_t
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, l := range todo {
		if !found[l.i] {
			continue
		}
		size := int64(-1)
		if sizes != nil {
			size = sizes[l.i]
		} else if err := unix.Fstatat(l.stDir, l.stName, &sb, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			size = sb.Size
		} else {
			return nil, fmt.Errorf("objstore: object %s: %w", ds[l.i], err)
		}
		st.staged[ds[l.i]] = size
	}
	return found, nil
}

// Has reports whether the staging directory holds object d.
func (st *Staging) Has(d verity.Digest) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	_, ok := st.staged[d]
	return ok
}

// Abort drops the staging directory. It is idempotent, and what a failed
// Commit leaves behind. Objects already linked into objects/ stay there as
// garbage for gc.
func (st *Staging) Abort() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return nil
	}
	st.done = true
	return st.remove()
}

// Commit turns the staging directory into images/<digest>: it checks that
// every external file of root is staged (and drops staged objects root does
// not reference), syncs the filesystem (the barrier before anything
// references the new objects), links the new objects into objects/ (on
// EEXIST the existing inode replaces the staged copy), writes image.cfs and
// meta.json, syncs again, and renames the directory into images/. It
// returns the composefs digest (fs-verity digest of image.cfs). Committing
// an image that already exists succeeds with the same digest. On failure
// the staging is aborted.
func (st *Staging) Commit(ctx context.Context, root *erofs.Node, meta ImageMeta) (d verity.Digest, err error) {
	s := st.s
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return d, ErrClosed
	}
	defer func() {
		if err != nil {
			st.done = true
			st.remove()
		}
	}()
	if err := ctx.Err(); err != nil {
		return d, err
	}
	// 1. Every referenced object is staged; nothing else is.
	refs := map[string]bool{}
	err = root.Walk(func(n *erofs.Node) error {
		if n.Link != nil || n.Type() != erofs.ModeReg || n.Payload == "" {
			return nil
		}
		if refs[n.Payload] {
			return nil
		}
		refs[n.Payload] = true
		if size, ok := st.staged[n.Digest]; ok && n.Payload == n.Digest.ObjectPath() {
			if uint64(size) != n.Size {
				return fmt.Errorf("objstore: commit: %s: %w: object %s has %d bytes, tree says %d", n.Path(), ErrSizeMismatch, n.Payload, size, n.Size)
			}
			return nil
		}
		var sb unix.Stat_t
		if err := unix.Lstat(filepath.Join(st.dir, n.Payload), &sb); err != nil {
			return fmt.Errorf("objstore: commit: %s references object %s which is not staged: %w", n.Path(), n.Payload, ErrNotFound)
		}
		if uint64(sb.Size) != n.Size {
			return fmt.Errorf("objstore: commit: %s: %w: object %s has %d bytes, tree says %d", n.Path(), ErrSizeMismatch, n.Payload, sb.Size, n.Size)
		}
		return nil
	})
	if err != nil {
		return d, err
	}
	for od := range st.staged {
		if !refs[od.ObjectPath()] {
			if err := os.Remove(filepath.Join(st.dir, od.ObjectPath())); err != nil {
				return d, fmt.Errorf("objstore: commit: %w", err)
			}
			delete(st.staged, od)
			delete(st.pending, od)
		}
	}
	// 2. image.cfs is written while the barrier and the indexing run: it is
	// in the unpublished staging directory, which only the second barrier
	// has to cover.
	type written struct {
		d   verity.Digest
		err error
	}
	imageDone := make(chan written, 1)
	go func() {
		t0 := time.Now()
		d, err := st.writeImage(root)
		s.log.Debug("commit: wrote image.cfs", "digest", d, "elapsed", time.Since(t0))
		imageDone <- written{d, err}
	}()
	waitImage := func() (verity.Digest, error) {
		w := <-imageDone
		imageDone = nil
		return w.d, w.err
	}
	defer func() {
		if imageDone != nil {
			waitImage() // never return with the writer still in the directory
		}
	}()
	// 3. Barrier: the new objects' content is durable before objects/ or an
	// image names them.
	t0 := time.Now()
	if err := s.syncfs(); err != nil {
		return d, err
	}
	s.log.Debug("commit: syncfs", "objects", len(st.staged), "new", len(st.pending), "elapsed", time.Since(t0))
	s.crashPoint("commit.synced")
	// 4. Index the new objects.
	t0 = time.Now()
	if err := st.indexPending(); err != nil {
		return d, err
	}
	s.log.Debug("commit: indexed new objects", "elapsed", time.Since(t0))
	// 5. meta.json and .lock beside image.cfs.
	d, err = waitImage()
	if err != nil {
		return d, err
	}
	s.crashPoint("commit.image-written")
	if meta.Created.IsZero() {
		meta.Created = time.Now().UTC()
	}
	mb, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return d, fmt.Errorf("objstore: commit: %w", err)
	}
	if err := os.WriteFile(filepath.Join(st.dir, fileMeta), append(mb, '\n'), 0o444); err != nil {
		return d, fmt.Errorf("objstore: commit: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(st.dir, fileLock), os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return d, fmt.Errorf("objstore: commit: %w", err)
	}
	lf.Close()
	// 6. Second barrier: image.cfs, meta.json and the objects/ links.
	t0 = time.Now()
	if err := s.syncfs(); err != nil {
		return d, err
	}
	s.log.Debug("commit: second syncfs", "elapsed", time.Since(t0))
	s.crashPoint("commit.synced2")
	// 7. Publish.
	dst := s.ImageDir(d)
	for attempt := 0; ; attempt++ {
		err = unix.Renameat2(unix.AT_FDCWD, st.dir, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
		if err == nil {
			break
		}
		if err != unix.EEXIST && err != unix.ENOTEMPTY {
			return d, fmt.Errorf("objstore: commit: publishing %s: %w", dst, err)
		}
		// Already committed by someone else. If it vanishes (a concurrent
		// removal) before we see it, try again.
		var sb unix.Stat_t
		if unix.Stat(filepath.Join(dst, fileImage), &sb) == nil || attempt > 10 {
			if err := st.updateMeta(dst, meta); err != nil {
				s.log.Warn("image exists; keeping its provenance", "image", d, "err", err)
			}
			st.done = true
			st.remove()
			return d, nil
		}
	}
	s.crashPoint("commit.renamed")
	st.done = true
	if err := atomicfile.SyncDir(filepath.Join(s.root, dirImages)); err != nil {
		st.remove()
		return d, fmt.Errorf("objstore: commit: %w", err)
	}
	st.remove() // the lock file; the directory has moved
	return d, nil
}

// updateMeta gives the existing image directory dir the provenance of
// this commit (the same content got from another source is now known by
// that one), keeping its first commit time. The new meta.json is written
// and synced in the staging directory, then renamed over the old one, so
// readers see one or the other; an image removed meanwhile is left alone.
func (st *Staging) updateMeta(dir string, meta ImageMeta) error {
	b, err := os.ReadFile(filepath.Join(dir, fileMeta))
	if err != nil {
		return err
	}
	var old ImageMeta
	if err := json.Unmarshal(b, &old); err != nil {
		return err
	}
	meta.Created = old.Created
	nb, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	nb = append(nb, '\n')
	if string(nb) == string(b) {
		return nil
	}
	tmp := filepath.Join(st.dir, fileMeta+".new")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	_, err = f.Write(nb)
	if e := f.Sync(); err == nil {
		err = e
	}
	if e := f.Close(); err == nil {
		err = e
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, fileMeta)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		return err
	}
	return atomicfile.SyncDir(dir)
}

// indexPending links every new object into objects/ under the shared gc
// lock. When objects/ got the digest meanwhile (a concurrent import), the
// existing inode replaces the staged copy, keeping one inode per content.
func (st *Staging) indexPending() error {
	s := st.s
	if len(st.pending) == 0 {
		return nil
	}
	if err := st.lockShared(); err != nil {
		return fmt.Errorf("objstore: gc lock: %w", err)
	}
	defer st.unlock()
	made := map[string]bool{}
	for od := range st.pending {
		x := od.Hex()[:2]
		if !made[x] {
			if err := os.Mkdir(filepath.Join(s.root, dirObjects, x), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("objstore: %w", err)
			}
			made[x] = true
		}
		src := filepath.Join(st.dir, od.ObjectPath())
		obj := s.ObjectPath(od)
		err := unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, obj, 0)
		if err == unix.EEXIST {
			tmp := filepath.Join(st.dir, x, ".dedup-"+od.Hex()[2:])
			if unix.Linkat(unix.AT_FDCWD, obj, unix.AT_FDCWD, tmp, 0) == nil {
				var a, b unix.Stat_t
				if unix.Lstat(tmp, &a) == nil && unix.Lstat(src, &b) == nil && a.Size == b.Size {
					if e := os.Rename(tmp, src); e != nil {
						os.Remove(tmp)
					}
				} else {
					os.Remove(tmp)
				}
			}
			err = nil
		}
		if err != nil {
			return fmt.Errorf("objstore: indexing object %s: %w", od, err)
		}
		s.crashPoint("commit.indexed")
	}
	st.pending = map[verity.Digest]bool{}
	return nil
}

// writeImage writes STAGING/image.cfs and returns its fs-verity digest.
func (st *Staging) writeImage(root *erofs.Node) (verity.Digest, error) {
	p := filepath.Join(st.dir, fileImage)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return verity.Digest{}, fmt.Errorf("objstore: commit: %w", err)
	}
	h := verity.New(st.s.alg)
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 256<<10)
	if err := erofs.Write(bw, root, erofs.WriteOptions{}); err != nil {
		f.Close()
		return verity.Digest{}, fmt.Errorf("objstore: commit: writing image: %w", err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return verity.Digest{}, fmt.Errorf("objstore: commit: writing %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return verity.Digest{}, fmt.Errorf("objstore: commit: writing %s: %w", p, err)
	}
	d := h.Sum()
	if st.s.VeritySupported() {
		if err := st.s.sealObject(p, d); err != nil {
			return d, err
		}
	}
	return d, nil
}

// cleanTmp removes staging leftovers that no live process holds: for each
// tmp/<name>.lock it can lock exclusively, tmp/<name>/ and the lock file;
// directories without a lock file; stray files.
func (s *Store) cleanTmp() error {
	tmp := filepath.Join(s.root, dirTmp)
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	var firstErr error
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(tmp, name)
		base := strings.TrimSuffix(name, ".lock")
		if base == name && e.IsDir() {
			// A directory is created after its lock file, and the lock file
			// is removed after the directory: no lock file means an orphan.
			if _, err := os.Lstat(p + ".lock"); err == nil {
				continue // handled through its lock file
			}
		}
		if base != name {
			f, err := os.Open(p)
			if err != nil {
				continue // removed meanwhile
			}
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				f.Close() // a live process owns it
				continue
			}
			var a, b unix.Stat_t
			if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(p, &b) != nil || a.Ino != b.Ino {
				f.Close()
				continue
			}
			err = os.RemoveAll(filepath.Join(tmp, base))
			if err == nil {
				err = os.Remove(p)
			}
			f.Close()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			continue
		}
		if err := os.RemoveAll(p); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// Checkpoint makes the objects added so far durable and links them into
// objects/ ahead of Commit: the syncfs barrier, then the indexing Commit
// does. A caller that records its progress (sync's per-layer records) then
// finds those objects again after a failed or interrupted build, until gc
// removes the ones no image references. Added for the sync package.
func (st *Staging) Checkpoint(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return ErrClosed
	}
	if len(st.pending) == 0 {
		return nil
	}
	if err := st.s.syncfs(); err != nil {
		return err
	}
	return st.indexPending()
}

// TempDir is a private directory under tmp/ for another package's build
// (deploy builds deployments there): it follows the staging protocol, so
// Open and GC leave it alone while it is held and remove it once its
// holder is gone.
type TempDir struct{ st *Staging }

// NewTempDir creates tmp/<name>/, held until Release.
func (s *Store) NewTempDir(ctx context.Context) (*TempDir, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.newStagingDir()
	if err != nil {
		return nil, err
	}
	return &TempDir{st: st}, nil
}

// Path returns the directory (on the store's filesystem, so it can be
// renamed into place).
func (t *TempDir) Path() string { return t.st.dir }

// Release removes whatever is still at Path (nothing, once it has been
// renamed away), then its lock file, and drops the lock.
func (t *TempDir) Release() error { return t.st.remove() }
