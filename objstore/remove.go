package objstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/verity"
)

// GCOptions configure GC.
type GCOptions struct {
	// DryRun counts what would be deleted without deleting anything.
	DryRun bool
	// Progress, when set, is called as the sweep advances.
	Progress func(Progress)
}

// GCResult is what GC deleted (or, with DryRun, would delete).
type GCResult struct {
	Objects int   // objects deleted
	Bytes   int64 // their size
	Images  int   // removals finished (directories in removed/), also by Open and Remove since the store was opened
	InUse   int   // removals still waiting because the image is in use
}

// Progress reports the advance of a long operation.
type Progress struct {
	Op    string // "import", "gc", "fsck", "dedup"
	Done  int64  // units done (files, objects, fan-out directories)
	Total int64  // units in all, 0 when unknown
	Bytes int64  // bytes processed so far
}

// Remove removes image d: its directory is renamed into removed/ (so it
// disappears from images/ at once), then deleted unless it is in use, then
// every object of the image whose link count fell to 1 is deleted (under
// the exclusive gc lock). When the image is in use (its .lock is held, or
// it shows in /proc/self/mountinfo) the error wraps ErrInUse: the removal
// is deferred, and the next Open or GC finishes it once the image is free.
func (s *Store) Remove(ctx context.Context, d verity.Digest) error {
	src := s.ImageDir(d)
	if _, err := os.Lstat(src); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("objstore: image %s: %w", d, ErrNotFound)
		}
		return fmt.Errorf("objstore: image %s: %w", d, err)
	}
	// roots.lock held exclusively from the check of the roots to the
	// rename: AddRoot either wrote its root before (and Remove refuses) or
	// finds the image gone after.
	rl, err := s.rootsLock(unix.LOCK_EX)
	if err != nil {
		return err
	}
	roots, err := s.Roots(ctx)
	if err != nil {
		rl.Close()
		return fmt.Errorf("objstore: removing image %s: %w", d, err)
	}
	if names := rootsOf(roots, d); len(names) > 0 {
		rl.Close()
		return &RootedError{Image: d, Roots: names}
	}
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	name := d.Hex() + "." + hex.EncodeToString(rb[:])
	dst := filepath.Join(s.root, dirRemoved, name)
	err = os.Rename(src, dst)
	rl.Close()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("objstore: image %s: %w", d, ErrNotFound)
		}
		return fmt.Errorf("objstore: removing image %s: %w", d, err)
	}
	// Both directories the rename touched: images/ so the image stays gone,
	// removed/ so the directory is not lost (to lost+found) with its links.
	for _, dir := range []string{dirImages, dirRemoved} {
		if err := atomicfile.SyncDir(filepath.Join(s.root, dir)); err != nil {
			return fmt.Errorf("objstore: removing image %s: %w", d, err)
		}
	}
	s.crashPoint("remove.renamed")
	res, err := s.finishRemoval(ctx, name, false)
	if err != nil {
		return err
	}
	if !res {
		return fmt.Errorf("objstore: image %s: %w: removal deferred until it is no longer mounted", d, ErrInUse)
	}
	return nil
}

// finishRemovals deletes what it can in removed/; it returns how many
// entries it finished and how many are in use.
func (s *Store) finishRemovals(ctx context.Context, dry bool) (done, inUse int, err error) {
	ents, err := os.ReadDir(filepath.Join(s.root, dirRemoved))
	if err != nil {
		return 0, 0, fmt.Errorf("objstore: %w", err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return done, inUse, err
		}
		if !s.ownRemoval(e.Name()) {
			continue // another package's (deploy's "deploy-<id>.<suffix>")
		}
		ok, err := s.finishRemoval(ctx, e.Name(), dry)
		if err != nil {
			return done, inUse, err
		}
		if ok {
			done++
		} else {
			inUse++
		}
	}
	return done, inUse, nil
}

// ownRemoval reports whether removed/<name> is an image removal of this
// package: "<image hex>.<suffix>". Other names in removed/ belong to other
// packages that use the same rename-then-delete protocol (deploy).
func (s *Store) ownRemoval(name string) bool {
	hexd, _, ok := strings.Cut(name, ".")
	if !ok {
		return false
	}
	_, ok = s.parseImageName(hexd)
	return ok
}

// finishRemoval deletes removed/<name> if nothing uses it, object by
// object: the image's link goes, then the objects/ link when it was the
// last other one. It reports false when the entry is in use.
func (s *Store) finishRemoval(ctx context.Context, name string, dry bool) (bool, error) {
	dir := filepath.Join(s.root, dirRemoved, name)
	fi, err := os.Lstat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return true, nil // finished by someone else
		}
		return false, fmt.Errorf("objstore: %w", err)
	}
	if !fi.IsDir() {
		if !dry {
			os.Remove(dir)
		}
		return true, nil
	}
	// Finishers of one entry (Remove, GC, Open in several processes) take
	// turns on a flock of the directory itself, so that a failure to lock
	// .lock below means a user of the image, not another finisher.
	df, err := os.Open(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return true, nil
		}
		return false, fmt.Errorf("objstore: %w", err)
	}
	defer df.Close()
	if err := flock(df, unix.LOCK_EX); err != nil {
		return false, fmt.Errorf("objstore: locking %s: %w", dir, err)
	}
	var a, b unix.Stat_t
	if unix.Fstat(int(df.Fd()), &a) != nil || unix.Lstat(dir, &b) != nil || a.Ino != b.Ino {
		return true, nil // finished by the previous holder
	}
	// No lock file: the directory is empty but for itself (the lock file
	// is deleted last), so finishing it needs no lock.
	lf, err := os.Open(filepath.Join(dir, fileLock))
	if err == nil {
		defer lf.Close()
		if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return false, nil // in use
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("objstore: %w", err)
	}
	// Mounted by a process that has exited (the CLI): the mount table
	// still names the image's original directory.
	if hexd, _, ok := strings.Cut(name, "."); ok {
		if d, ok := s.parseImageName(hexd); ok && s.mounted(d) {
			return false, nil
		}
	}
	if dry {
		return true, nil
	}
	// Objects first (each fan-out directory, then its objects/ side under
	// the exclusive gc lock), then the rest, the lock file last: a
	// directory without a lock file has nothing left but itself.
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil // finished by someone else
	}
	if err != nil {
		return false, fmt.Errorf("objstore: %w", err)
	}
	// Fan-out directories in parallel: unlinking is I/O-bound.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, e := range ents {
		if !e.IsDir() || len(e.Name()) != 2 {
			continue
		}
		g.Go(func() error { return s.removeFanout(gctx, dir, e.Name()) })
	}
	if err := g.Wait(); err != nil {
		return false, err
	}
	for _, e := range ents {
		if e.Name() == fileLock {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return false, fmt.Errorf("objstore: %w", err)
		}
	}
	if err := os.Remove(filepath.Join(dir, fileLock)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("objstore: %w", err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("objstore: %w", err)
	}
	s.mu.Lock()
	s.freed.Images++
	s.mu.Unlock()
	return true, nil
}

// removeFanout deletes a removed image's links in one fan-out directory,
// then the objects/ links that became the last ones.
func (s *Store) removeFanout(ctx context.Context, dir, fan string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sub := filepath.Join(dir, fan)
	names, err := readNames(sub)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("objstore: %w", err)
	}
	var digests []verity.Digest
	for _, n := range names {
		if err := os.Remove(filepath.Join(sub, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("objstore: %w", err)
		}
		if od, ok := s.parseObjectName(fan, n); ok {
			digests = append(digests, od)
		}
	}
	s.crashPoint("remove.unlinked-refs")
	n, b, err := s.deleteUnreferenced(digests, false)
	s.mu.Lock()
	s.freed.Objects += n
	s.freed.Bytes += b
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.crashPoint("remove.deleted-objects")
	return nil
}

// deleteUnreferenced deletes from objects/ each of digests whose link count
// is 1, re-checked under the exclusive gc lock. With dry it only counts.
func (s *Store) deleteUnreferenced(digests []verity.Digest, dry bool) (n int, bytes int64, err error) {
	if len(digests) == 0 {
		return 0, 0, nil
	}
	if !dry && !s.noGCLock {
		l, err := s.gcLock()
		if err != nil {
			return 0, 0, err
		}
		defer l.Close()
		if err := l.lockExclusive(); err != nil {
			return 0, 0, fmt.Errorf("objstore: gc lock: %w", err)
		}
	}
	for _, d := range digests {
		p := s.ObjectPath(d)
		var sb unix.Stat_t
		if unix.Lstat(p, &sb) != nil || sb.Nlink != 1 || sb.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if !dry {
			s.crashPoint("gc.before-unlink")
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return n, bytes, fmt.Errorf("objstore: %w", err)
			}
		}
		n++
		bytes += sb.Size
	}
	return n, bytes, nil
}

// GC finishes pending removals, removes staging leftovers, and deletes
// every object of objects/ whose link count is 1 (referenced by no image
// and no container layer). Files in objects/ whose names are not digests
// are left alone (fsck reports them).
func (s *Store) GC(ctx context.Context, opts GCOptions) (GCResult, error) {
	var res GCResult
	var err error
	if !opts.DryRun {
		if err := s.cleanTmp(); err != nil {
			s.log.Warn("cleaning tmp/", "err", err)
		}
	}
	_, res.InUse, err = s.finishRemovals(ctx, opts.DryRun)
	if err != nil {
		return res, err
	}
	// Report what this Store finished since it was opened (Open finishes
	// pending removals too), then start counting afresh.
	s.mu.Lock()
	res.Images, res.Objects, res.Bytes = s.freed.Images, s.freed.Objects, s.freed.Bytes
	s.freed = GCResult{}
	s.mu.Unlock()
	objDir := filepath.Join(s.root, dirObjects)
	fans, err := os.ReadDir(objDir)
	if err != nil {
		return res, fmt.Errorf("objstore: %w", err)
	}
	for i, fan := range fans {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if !fan.IsDir() || len(fan.Name()) != 2 {
			continue
		}
		sub := filepath.Join(objDir, fan.Name())
		f, err := os.Open(sub)
		if err != nil {
			return res, fmt.Errorf("objstore: %w", err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return res, fmt.Errorf("objstore: %w", err)
		}
		var cands []verity.Digest
		for _, n := range names {
			d, ok := s.parseObjectName(fan.Name(), n)
			if !ok {
				continue
			}
			var sb unix.Stat_t
			if unix.Lstat(filepath.Join(sub, n), &sb) == nil && sb.Nlink == 1 {
				cands = append(cands, d)
			}
		}
		n, b, err := s.deleteUnreferenced(cands, opts.DryRun)
		res.Objects += n
		res.Bytes += b
		if err != nil {
			return res, err
		}
		if opts.Progress != nil {
			opts.Progress(Progress{Op: "gc", Done: int64(i + 1), Total: int64(len(fans)), Bytes: res.Bytes})
		}
	}
	return res, nil
}

// InUse reports whether image d is in use: its .lock is held by a process,
// or it appears in the mount table.
func (s *Store) InUse(d verity.Digest) bool {
	if s.mounted(d) {
		return true
	}
	f, err := os.Open(filepath.Join(s.ImageDir(d), fileLock))
	if err != nil {
		return false
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// mounted reports whether /proc/self/mountinfo names image d's directory
// or image file (as a mount source or in the mount options, e.g. an
// overlay lowerdir). Mount paths are recorded as given at mount time, so
// this works after the directory was renamed into removed/.
func (s *Store) mounted(d verity.Digest) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		// Nothing says it is free: deleting objects under a mounted image
		// would make its files fail.
		return true
	}
	var pats []string
	for _, r := range []string{s.root, s.canonRoot} {
		if r != "" {
			pats = append(pats, mountinfoEscape(filepath.Join(r, dirImages, d.Hex())),
				mountinfoEscape(filepath.Join(r, dirRemoved, d.Hex())))
		}
	}
	return mountinfoMentions(b, pats)
}

// mountinfoMentions reports whether any line of a mountinfo table has one
// of pats (escaped paths) as its mount source or inside its super options,
// followed by the end of the field or one of "/:,." (so a digest that is
// a prefix of another does not match; removed/<hex>.<suffix> does). A
// table it cannot read to the end (a line over 1 MiB) counts as a mention.
func mountinfoMentions(table []byte, pats []string) bool {
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		_, after, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(after) // fstype source superopts
		if len(f) < 2 {
			continue
		}
		fields := f[1:]
		for _, fld := range fields {
			for _, p := range pats {
				for i := 0; ; {
					j := strings.Index(fld[i:], p)
					if j < 0 {
						break
					}
					end := i + j + len(p)
					if end == len(fld) || strings.IndexByte("/:,.", fld[end]) >= 0 {
						return true
					}
					i = end
				}
			}
		}
	}
	return sc.Err() != nil
}

// mountinfoEscape escapes a path the way the kernel writes it in
// mountinfo (space, tab, newline and backslash as octal).
func mountinfoEscape(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
