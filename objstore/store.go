// Package objstore is twinroot's content-addressed object store: every
// regular file of every image is stored once under objects/, named by its
// fs-verity digest, and each committed composefs image owns a directory
// images/<digest>/ holding image.cfs plus a hardlink of exactly the objects
// it references (the overlay data-only layer when it is mounted).
//
// The store needs no database. Its invariants live in the filesystem:
//
//   - An object's link count says who uses it: objects/ holds one link, each
//     image directory one more, container storage may add its own. An object
//     with link count 1 is referenced by nothing and may be deleted.
//   - A name in objects/ only ever points at durable, correct content: new
//     objects are first written into a staging directory under tmp/, and
//     linked into objects/ only after the syncfs barrier of their commit.
//   - An image directory is complete or absent: it is built under tmp/ and
//     renamed into images/.
//   - Deletion of objects happens only under an exclusive flock on gc.lock;
//     linking an existing object into a staging directory happens under a
//     shared one, so an object cannot vanish between the check of its link
//     count and its deletion while an importer links it. Exclusive takers
//     first take gc.turnstile, which shared takers pass through, so that a
//     stream of importers cannot keep gc out; a staging keeps its shared
//     lock for up to 50 ms once taken, so a run of links costs two flock
//     calls, not two per link.
//
// Locks taken: every staging directory holds an exclusive flock on its
// tmp/<name>.lock (Open and GC remove only staging leftovers whose lock
// they can take); a mounted image holds a shared flock on
// images/<digest>/.lock (MountImage), and an image mounted by a process
// that has exited is recognised in /proc/self/mountinfo, where overlayfs
// records the image directory as its data-only layer; gc.lock as described
// above; finishers of one removal take turns on a flock of its directory;
// roots.lock, shared by AddRoot and exclusive in Remove, so that a GC root
// (roots/<name>, see AddRoot) never names an image under removal.
//
// Removal renames images/<digest> into removed/, then deletes the image's
// links, then each object whose link count fell to 1, then the rest of the
// directory, the .lock file last. An image in use stays in removed/ until
// a later Open or GC finds it free. A crash at any point leaves either a
// removal to finish or objects with link count 1, which GC deletes.
package objstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/verity"
)

// Names inside the store root.
const (
	dirObjects = "objects"
	dirImages  = "images"
	dirRemoved = "removed"
	dirTmp     = "tmp"
	dirState   = "state"
	fileConfig = "store.json"
	fileGCLock = "gc.lock"
	fileGCTurn = "gc.turnstile"
	fileImage  = "image.cfs"
	fileMeta   = "meta.json"
	fileLock   = ".lock"
)

// Errors returned by the store. They are wrapped with the path or digest
// they concern; test with errors.Is.
var (
	// ErrNotFound: an image or object is not in the store, or the store is
	// not initialised.
	ErrNotFound = errors.New("objstore: not found")
	// ErrCorrupt: content does not match its digest, or a store file does
	// not parse.
	ErrCorrupt = errors.New("objstore: corrupt")
	// ErrInUse: an image is mounted or booted; its removal is deferred.
	ErrInUse = errors.New("objstore: in use")
	// ErrNotSupported: the filesystem cannot do what was asked (e.g. no
	// reflink for sharing with container storage).
	ErrNotSupported = errors.New("objstore: not supported")
	// ErrCrossDevice: parts of the store are on different filesystems.
	ErrCrossDevice = errors.New("objstore: store spans several filesystems")
	// ErrSizeMismatch: an object's content was not the announced size.
	ErrSizeMismatch = errors.New("objstore: size mismatch")
	// ErrAlgorithm: the store was initialised with another digest algorithm.
	ErrAlgorithm = errors.New("objstore: digest algorithm mismatch")
	// ErrClosed: the store or staging area is closed.
	ErrClosed = errors.New("objstore: closed")
	// ErrRooted: a GC root (a deployment) keeps the image; Remove refuses
	// it with a *RootedError naming the roots.
	ErrRooted = errors.New("objstore: image is a gc root")
)

// Options configure Open.
type Options struct {
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Algorithm is the digest algorithm (0 = verity.SHA256). It is recorded
	// at initialisation and checked at every open.
	Algorithm verity.Algorithm
	// Create initialises the store when it does not exist yet.
	Create bool

	// Test-only knobs (set by this package's tests).
	crash       func(point string) // called at every crash point
	unsafeNoGCL bool               // disable the gc lock (to show the race it prevents)
}

// config is store.json.
type config struct {
	Version   int    `json:"version"`
	Algorithm string `json:"algorithm"`
}

// Store is an open object store. Its methods are safe for concurrent use,
// and several processes may use one store at the same time.
type Store struct {
	root      string // as given, cleaned
	canonRoot string // symlinks resolved, for mountinfo matching
	alg       verity.Algorithm
	log       *slog.Logger
	dev       uint64
	crash     func(string)
	noGCLock  bool
	bufs      sync.Pool // *[]byte copy buffers
	hashers   sync.Pool // *verity.Hasher for s.alg (their level buffers are reused)

	verityOnce sync.Once
	verityOK   bool

	mu     sync.Mutex
	closed bool
	freed  GCResult // removals finished since the last GC, for its report
}

// Open opens the store at root, creating it when opts.Create is set. It
// removes staging leftovers in tmp/ that no live process holds, and
// finishes removals interrupted in removed/ (skipping what is in use).
func Open(ctx context.Context, root string, opts Options) (*Store, error) {
	root = filepath.Clean(root)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	alg := opts.Algorithm
	if alg == 0 {
		alg = verity.SHA256
	}
	if alg.Size() == 0 {
		return nil, fmt.Errorf("objstore: %w: %d", verity.ErrUnknownAlgorithm, alg)
	}
	s := &Store{root: root, alg: alg, log: log, crash: opts.crash, noGCLock: opts.unsafeNoGCL}
	s.bufs.New = func() any { b := make([]byte, 256<<10); return &b }
	s.hashers.New = func() any { return verity.New(alg) }

	fi, err := os.Stat(root)
	switch {
	case errors.Is(err, fs.ErrNotExist) && opts.Create:
		if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
			return nil, fmt.Errorf("objstore: creating store %s: %w", root, err)
		}
		if err := os.Mkdir(root, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("objstore: creating store %s: %w", root, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s: store not initialised, run 'updatectl store init' (%w)", root, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("objstore: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("objstore: store root %s: %w", root, unix.ENOTDIR)
	}
	if err := s.initLayout(opts.Create); err != nil {
		return nil, err
	}
	if s.canonRoot, err = filepath.EvalSymlinks(root); err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	if err := s.cleanTmp(); err != nil {
		log.Warn("cleaning tmp/", "err", err)
	}
	if _, _, err := s.finishRemovals(ctx, false); err != nil {
		log.Warn("finishing removals", "err", err)
	}
	return s, nil
}

// initLayout checks (and with create, makes) store.json and the
// subdirectories, all on one filesystem.
func (s *Store) initLayout(create bool) error {
	cfgPath := filepath.Join(s.root, fileConfig)
	b, err := os.ReadFile(cfgPath)
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
		// Subdirectories first, store.json last: its presence marks a
		// complete initialisation. The root is private (0700) even when it
		// existed before.
		if err := os.Chmod(s.root, 0o700); err != nil {
			return fmt.Errorf("objstore: initialising %s: %w", s.root, err)
		}
		if err := s.mkdirs(); err != nil {
			return err
		}
		c := config{Version: 1, Algorithm: s.alg.String()}
		b, _ = json.Marshal(c)
		if err := atomicfile.WriteFile(cfgPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("objstore: initialising %s: %w", s.root, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: store not initialised (no %s), run 'updatectl store init' (%w)", s.root, fileConfig, ErrNotFound)
	case err != nil:
		return fmt.Errorf("objstore: %w", err)
	default:
		var c config
		if err := json.Unmarshal(b, &c); err != nil || c.Version != 1 {
			return fmt.Errorf("objstore: %s: %w: unreadable store config", cfgPath, ErrCorrupt)
		}
		if c.Algorithm != s.alg.String() {
			return fmt.Errorf("objstore: %s: %w: store uses %s, asked for %s", s.root, ErrAlgorithm, c.Algorithm, s.alg)
		}
		if create {
			if err := s.mkdirs(); err != nil {
				return err
			}
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(s.root, &st); err != nil {
		return fmt.Errorf("objstore: %s: %w", s.root, err)
	}
	s.dev = st.Dev
	for _, d := range []string{dirObjects, dirImages, dirRemoved, dirTmp} {
		p := filepath.Join(s.root, d)
		var sub unix.Stat_t
		if err := unix.Stat(p, &sub); err != nil {
			return fmt.Errorf("objstore: %s: %w", p, err)
		}
		if sub.Dev != s.dev {
			return fmt.Errorf("objstore: %s is on another filesystem than %s: %w (hardlinks and renames between them are impossible)", p, s.root, ErrCrossDevice)
		}
	}
	return nil
}

func (s *Store) mkdirs() error {
	for _, d := range []string{dirObjects, dirImages, dirRemoved, dirTmp, dirState} {
		p := filepath.Join(s.root, d)
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("objstore: creating %s: %w", p, err)
		}
	}
	for _, name := range []string{fileGCLock, fileGCTurn} {
		p := filepath.Join(s.root, name)
		f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("objstore: creating %s: %w", p, err)
		}
		f.Close()
	}
	return atomicfile.SyncDir(s.root)
}

// Close releases the store. Stagings still open stay usable until they are
// committed or aborted.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

// Root returns the store's root directory.
func (s *Store) Root() string { return s.root }

// Algorithm returns the store's digest algorithm.
func (s *Store) Algorithm() verity.Algorithm { return s.alg }

// ImageDir returns the directory of image d: ROOT/images/<hex>.
func (s *Store) ImageDir(d verity.Digest) string {
	return filepath.Join(s.root, dirImages, d.Hex())
}

// ObjectPath returns the path of object d in objects/.
func (s *Store) ObjectPath(d verity.Digest) string {
	return filepath.Join(s.root, dirObjects, d.ObjectPath())
}

// HasObject reports whether objects/ holds d.
func (s *Store) HasObject(d verity.Digest) bool {
	var st unix.Stat_t
	return unix.Lstat(s.ObjectPath(d), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// StateDir returns ROOT/state/<name>, created with mode 0700: a private
// directory for another package's records.
func (s *Store) StateDir(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", fmt.Errorf("objstore: invalid state directory name %q", name)
	}
	base := filepath.Join(s.root, dirState)
	if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("objstore: %w", err)
	}
	p := filepath.Join(base, name)
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("objstore: %w", err)
	}
	return p, nil
}

// VeritySupported reports whether fs-verity can be enabled on files of the
// store's filesystem (probed once, on a file in tmp/).
func (s *Store) VeritySupported() bool {
	s.verityOnce.Do(func() { s.verityOK = s.probeVerity() })
	return s.verityOK
}

func (s *Store) probeVerity() bool {
	st, err := s.newStagingDir()
	if err != nil {
		return false
	}
	defer st.remove()
	p := filepath.Join(st.dir, ".verity-probe")
	if err := os.WriteFile(p, []byte("probe"), 0o400); err != nil {
		return false
	}
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	err = verity.Enable(f, s.alg)
	if err != nil && !errors.Is(err, verity.ErrNotSupported) {
		s.log.Debug("fs-verity probe", "err", err)
	}
	return err == nil
}

// crashPoint is where the crash tests kill the process.
func (s *Store) crashPoint(name string) {
	if s.crash != nil {
		s.crash(name)
	}
}

// parseObjectName turns "xx" + "rest" into a digest of the store's
// algorithm, or reports false.
func (s *Store) parseObjectName(dir, name string) (verity.Digest, bool) {
	if len(dir) != 2 || len(dir)+len(name) != 2*s.alg.Size() {
		return verity.Digest{}, false
	}
	d, err := verity.ParseDigest(s.alg.String() + ":" + dir + name)
	return d, err == nil
}

// parseImageName parses an images/ entry name.
func (s *Store) parseImageName(name string) (verity.Digest, bool) {
	if len(name) != 2*verity.SHA256.Size() && len(name) != 2*verity.SHA512.Size() {
		return verity.Digest{}, false
	}
	d, err := verity.ParseDigest(name)
	return d, err == nil
}

// syncfs is the durability barrier: everything written to the store's
// filesystem so far reaches the disk.
func (s *Store) syncfs() error {
	f, err := os.Open(s.root)
	if err != nil {
		return fmt.Errorf("objstore: syncfs: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("objstore: syncfs %s: %w", s.root, err)
	}
	return nil
}

// gcLocker is one user's handle on the gc lock: a flock on gc.lock, shared
// by whatever links an existing object, exclusive for whatever deletes
// objects. flock alone lets a steady stream of overlapping shared holders
// (busy importers) keep an exclusive taker out for ever, so the exclusive
// taker first takes gc.turnstile exclusively and holds it while it waits,
// and a shared taker passes through gc.turnstile (shared, released at
// once) before it locks: new shared takers queue behind a waiting gc, and
// gc gets its turn when the current holders let go. Each handle has its
// own open file descriptions (flock locks belong to those).
type gcLocker struct {
	lock, turn *os.File
}

// gcLock opens a new gcLocker.
func (s *Store) gcLock() (*gcLocker, error) {
	var fs [2]*os.File
	for i, name := range []string{fileGCLock, fileGCTurn} {
		f, err := os.OpenFile(filepath.Join(s.root, name), os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			if i > 0 {
				fs[0].Close()
			}
			return nil, fmt.Errorf("objstore: %w", err)
		}
		fs[i] = f
	}
	return &gcLocker{lock: fs[0], turn: fs[1]}, nil
}

// lockShared waits behind any exclusive taker, then takes the shared lock.
func (l *gcLocker) lockShared() error {
	if err := flock(l.turn, unix.LOCK_SH); err != nil {
		return err
	}
	err := flock(l.lock, unix.LOCK_SH)
	_ = flock(l.turn, unix.LOCK_UN)
	return err
}

// lockExclusive takes the turnstile, then the exclusive lock.
func (l *gcLocker) lockExclusive() error {
	if err := flock(l.turn, unix.LOCK_EX); err != nil {
		return err
	}
	if err := flock(l.lock, unix.LOCK_EX); err != nil {
		_ = flock(l.turn, unix.LOCK_UN)
		return err
	}
	return nil
}

// unlock drops whatever l holds.
func (l *gcLocker) unlock() {
	_ = flock(l.lock, unix.LOCK_UN)
	_ = flock(l.turn, unix.LOCK_UN)
}

// Close drops the locks and closes the files.
func (l *gcLocker) Close() error {
	l.turn.Close()
	return l.lock.Close()
}

// flock takes or drops a lock, retrying on EINTR; with the test-only
// unsafe option the gc lock is skipped by the callers.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// ctxReader stops a copy when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
