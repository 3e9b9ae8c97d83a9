package objstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

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
	// filesystem without reflink support).
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
//     which frees our copy and shares the page cache. A mounted image's
//     directory is not touched. Content we lack is linked into objects/ so
//     later imports reuse it.
//   - Another filesystem (or a file not eligible for hardlinking): a
//     reflink (FICLONE) clone replaces our copy, verified after cloning;
//     when the filesystem cannot reflink, nothing is shared.
//   - With fs-verity available, a file without verity is not hardlinked
//     (enabling it would modify their inode).
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
func (s *Store) shareOne(ctx context.Context, f *dedupFile, res *DedupResult) error {
	obj := s.ObjectPath(f.d)
	var ours unix.Stat_t
	have := unix.Lstat(obj, &ours) == nil
	if have && ours.Dev == f.st.Dev && ours.Ino == f.st.Ino {
		res.AlreadyShared++
		return nil
	}
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
	// We have the object: put their inode (or a clone of it) under our names.
	tmpSt, err := s.newStagingDir()
	if err != nil {
		return err
	}
	defer tmpSt.remove()
	src := filepath.Join(tmpSt.dir, "share")
	if hardlink {
		if err := os.Link(f.path, src); err != nil {
			return nil // removed under us: skip
		}
	} else {
		if err := reflinkFile(f.path, src); err != nil {
			if errors.Is(err, ErrNotSupported) {
				res.NotShareable++
				return nil
			}
			return nil
		}
	}
	// Verify what we are about to link (their file may have changed since
	// it was digested, or the clone may be of newer content).
	if d, err := verity.DigestFile(ctx, src, s.alg); err != nil || d != f.d {
		return nil
	}
	names := []string{obj}
	imgs, _ := os.ReadDir(filepath.Join(s.root, dirImages))
	for _, e := range imgs {
		d, ok := s.parseImageName(e.Name())
		if !ok {
			continue
		}
		p := filepath.Join(s.ImageDir(d), f.d.ObjectPath())
		var sb unix.Stat_t
		if unix.Lstat(p, &sb) != nil || sb.Ino != ours.Ino || sb.Dev != ours.Dev {
			continue
		}
		if s.InUse(d) {
			continue // a mounted lower layer is left alone
		}
		names = append(names, p)
	}
	for _, n := range names {
		tmp := n + ".dedup-tmp"
		os.Remove(tmp)
		if err := os.Link(src, tmp); err != nil {
			return fmt.Errorf("objstore: dedup: %w", err)
		}
		if err := os.Rename(tmp, n); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("objstore: dedup: %w", err)
		}
	}
	if hardlink {
		res.Hardlinked++
		res.HardlinkedBytes += f.st.Size
	} else {
		res.Reflinked++
		res.ReflinkedBytes += f.st.Size
	}
	return nil
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
