// Package deploy manages deployments: a committed composefs image of the
// object store, made bootable with its own writable /etc, its origin and
// its kernel arguments.
//
// A deployment lives in <store>/deployments/<id>/:
//
//	deployment.json   the Deployment record
//	etc/              the deployment's /etc (bind-mounted at boot)
//	.lock             held shared (Hold) by whoever uses the deployment
//
// The id is "<first 12 hex of the image digest>.<n>", n the lowest integer
// ≥ 0 not used by a deployment, a pending removal or a GC root, so an id
// is never reused while anything still refers to an older deployment of
// that name. Each deployment keeps its image alive through the store GC
// root "deploy-<id>", added before the deployment directory appears and
// removed after it is gone.
//
// Crash safety: a deployment is built in a store temp directory (tmp/,
// which the store cleans once its holder is gone), made durable with one
// syncfs of the store's filesystem, renamed into deployments/ and the
// parent fsynced; so after a crash at any point it is complete or absent.
// A root left without its deployment (a crash between the two) is dropped
// by GC. Removal renames the directory into the store's removed/ (as
// "deploy-<id>.<random>"), deletes it, then drops the root; GC finishes
// what a crash or a user interrupted.
//
// Locks: deploy.lock in the store root, exclusive, serialises Create,
// Remove, Remerge, SetPinned and GC (also across processes); Get, List,
// EtcDir and Hold take no lock (they only read complete, renamed
// directories).
package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/internal/bootarg"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// Errors returned by the package, wrapped with the id, path or image they
// concern; test with errors.Is.
var (
	// ErrNotFound: no deployment of that id.
	ErrNotFound = errors.New("deploy: deployment not found")
	// ErrInUse: the deployment is in use (its .lock is held, or its etc/ is
	// mounted); it was not removed or changed.
	ErrInUse = errors.New("deploy: deployment in use")
	// ErrEtcMerge: the /etc merge cannot be done; the error names the path.
	ErrEtcMerge = errors.New("deploy: /etc merge impossible")
	// ErrNoEtc: the image has no /etc directory.
	ErrNoEtc = errors.New("deploy: image has no /etc")
	// ErrBadKarg: a kernel argument that cannot go on a command line.
	ErrBadKarg = errors.New("deploy: bad kernel argument")
	// ErrCorrupt: a deployment record does not parse.
	ErrCorrupt = errors.New("deploy: corrupt deployment")
	// ErrBadImage: an image's /etc holds an entry that cannot be deployed
	// (a name that is not a plain file name); the error names it.
	ErrBadImage = errors.New("deploy: unusable image /etc")
)

// Names inside the store root and a deployment directory.
const (
	dirDeployments = "deployments"
	dirRemoved     = "removed" // the store's; entries "deploy-<id>.<suffix>"
	fileLock       = "deploy.lock"
	fileRecord     = "deployment.json"
	fileDepLock    = ".lock"
	dirEtc         = "etc"
	rootPrefix     = "deploy-"
)

// Origin is where a deployment's image came from.
type Origin struct {
	Ref      string    `json:"ref"`                // as given: docker://host/repo:tag, oci:DIR:tag, oci-archive:FILE:tag
	Manifest string    `json:"manifest,omitempty"` // sha256:...
	Config   string    `json:"config,omitempty"`
	Version  string    `json:"version,omitempty"` // label org.opencontainers.image.version
	Created  time.Time `json:"created,omitzero"`  // the image config's creation time
}

// Conflict is a path of /etc changed both locally and in the new image;
// the local version was kept.
type Conflict struct {
	Path   string `json:"path"` // relative to /etc
	Reason string `json:"reason"`
}

// Deployment is the record of one deployment (its deployment.json).
type Deployment struct {
	ID         string            `json:"id"`
	Image      verity.Digest     `json:"image"`
	Origin     Origin            `json:"origin"`
	OSRelease  map[string]string `json:"osRelease,omitempty"` // the image's /usr/lib/os-release (else /etc/os-release)
	Kargs      []string          `json:"kargs,omitempty"`     // the user's own kernel arguments
	Created    time.Time         `json:"created"`
	MergedFrom string            `json:"mergedFrom,omitempty"` // deployment whose /etc was merged in
	Conflicts  []Conflict        `json:"conflicts,omitempty"`
	Pinned     bool              `json:"pinned,omitempty"`
}

// Manager creates, lists and removes the deployments of one store.
type Manager struct {
	store   *objstore.Store
	sysroot string
	log     *slog.Logger

	crash     func(point string) // test hook, called at every crash point
	mountinfo string             // the mount table read (tests); "" = /proc/self/mountinfo
}

// New returns a Manager for the deployments of store. sysroot is the
// physical root holding the persistent /var (<sysroot>/var); "" disables
// /var seeding. log may be nil.
func New(store *objstore.Store, sysroot string, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{store: store, sysroot: sysroot, log: log}
}

func (m *Manager) crashPoint(name string) {
	if m.crash != nil {
		m.crash(name)
	}
}

func (m *Manager) deploymentsDir() string { return filepath.Join(m.store.Root(), dirDeployments) }

// dir returns deployments/<id>.
func (m *Manager) dir(id string) string { return filepath.Join(m.deploymentsDir(), id) }

// EtcDir returns the /etc directory of deployment id.
func (m *Manager) EtcDir(id string) string { return filepath.Join(m.dir(id), dirEtc) }

// lock takes deploy.lock exclusively; call the returned function to drop it.
func (m *Manager) lock(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := filepath.Join(m.store.Root(), fileLock)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	if err := flock(f, unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("deploy: locking %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

// ensureDirs creates deployments/ (durably) when missing.
func (m *Manager) ensureDirs() error {
	p := m.deploymentsDir()
	if err := os.Mkdir(p, 0o700); err == nil {
		return atomicfile.SyncDir(m.store.Root())
	} else if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("deploy: %w", err)
	}
	return nil
}

// Get returns deployment id.
func (m *Manager) Get(ctx context.Context, id string) (Deployment, error) {
	if err := bootarg.CheckID(id); err != nil {
		return Deployment{}, fmt.Errorf("deploy: %w: %w", ErrNotFound, err)
	}
	if err := ctx.Err(); err != nil {
		return Deployment{}, err
	}
	return m.read(id)
}

func (m *Manager) read(id string) (Deployment, error) {
	p := filepath.Join(m.dir(id), fileRecord)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Deployment{}, fmt.Errorf("deploy: deployment %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Deployment{}, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	var d Deployment
	if err := json.Unmarshal(b, &d); err != nil {
		return Deployment{}, fmt.Errorf("deploy: %s: %w: %v", p, ErrCorrupt, err)
	}
	if d.ID != id || d.Image.IsZero() {
		return Deployment{}, fmt.Errorf("deploy: %s: %w: record names deployment %q", p, ErrCorrupt, d.ID)
	}
	// What Create never writes: the boot entry would carry it.
	for _, k := range d.Kargs {
		if err := checkKarg(k); err != nil {
			return Deployment{}, fmt.Errorf("deploy: %s: %w: %w", p, ErrCorrupt, err)
		}
	}
	if d.MergedFrom != "" {
		if err := bootarg.CheckID(d.MergedFrom); err != nil {
			return Deployment{}, fmt.Errorf("deploy: %s: %w: mergedFrom: %w", p, ErrCorrupt, err)
		}
	}
	return d, nil
}

// List returns every deployment, oldest first (by Created, then id). A
// deployment whose record does not parse is left out with a warning.
func (m *Manager) List(ctx context.Context) ([]Deployment, error) {
	ents, err := os.ReadDir(m.deploymentsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	var out []Deployment
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !e.IsDir() || bootarg.CheckID(e.Name()) != nil {
			continue
		}
		d, err := m.read(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if errors.Is(err, ErrCorrupt) {
			// One damaged record must not hide the others (status, gc);
			// Get still reports it, and Remove still removes it.
			m.log.Warn("skipping a deployment whose record does not parse", "id", e.Name(), "err", err)
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// SetPinned sets or clears the deployment's Pinned flag (the updater keeps
// pinned deployments). The record is replaced atomically.
func (m *Manager) SetPinned(ctx context.Context, id string, pinned bool) error {
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	d, err := m.Get(ctx, id)
	if err != nil {
		return err
	}
	if d.Pinned == pinned {
		return nil
	}
	d.Pinned = pinned
	return m.writeRecord(m.dir(id), d, true)
}

// writeRecord writes deployment.json into dir; durable makes it atomic and
// synced (a live deployment), otherwise it is a plain write that the
// build's syncfs covers.
func (m *Manager) writeRecord(dir string, d Deployment, durable bool) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	b = append(b, '\n')
	p := filepath.Join(dir, fileRecord)
	if durable {
		err = atomicfile.WriteFile(p, b, 0o644)
	} else {
		err = os.WriteFile(p, b, 0o644)
	}
	if err != nil {
		return fmt.Errorf("deploy: deployment %s: %w", d.ID, err)
	}
	return nil
}

// Hold takes a shared lock on the deployment's .lock, as the booted system
// does: while it is held, Remove and Remerge refuse the deployment with
// ErrInUse. Call release to drop it.
func (m *Manager) Hold(ctx context.Context, id string) (release func(), err error) {
	if err := bootarg.CheckID(id); err != nil {
		return nil, fmt.Errorf("deploy: %w: %w", ErrNotFound, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lp := filepath.Join(m.dir(id), fileDepLock)
	f, err := os.OpenFile(lp, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("deploy: deployment %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	if err := flock(f, unix.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("deploy: locking %s: %w", lp, err)
	}
	// Remove renames the directory while it holds the lock exclusively: a
	// lock file still at its place now is one a removal will see.
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(lp, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
		f.Close()
		return nil, fmt.Errorf("deploy: deployment %s: %w (being removed)", id, ErrNotFound)
	}
	return func() { f.Close() }, nil
}

// flock takes or drops a lock, retrying on EINTR.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}
