package deploy

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
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/internal/bootarg"
)

// Remove removes deployment id. The updater decides which deployments are
// protected (booted, staged, rollback, pinned); Remove itself refuses, with
// ErrInUse and nothing changed, a deployment whose .lock is held (Hold; the
// booted system holds it) or whose etc/ is mounted (/proc/self/mountinfo,
// which also covers a bind mount made by a process that has exited).
// Otherwise it renames the directory into the store's removed/ (holding
// the .lock exclusively, so a Hold that comes after finds it gone),
// deletes it and drops its root, after which its image may be removed
// from the store. Should the etc/ be mounted between the check and the
// rename, the removal is deferred (ErrInUse) and GC finishes it once the
// mount is gone. Takes deploy.lock.
func (m *Manager) Remove(ctx context.Context, id string) error {
	if err := bootarg.CheckID(id); err != nil {
		return fmt.Errorf("deploy: %w: %w", ErrNotFound, err)
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	dir := m.dir(id)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deploy: deployment %s: %w", id, ErrNotFound)
	}
	// O_CREATE: a damaged deployment that lost its .lock (which no Hold
	// can then have open) is still removable, as List and Get still see it.
	lf, err := os.OpenFile(filepath.Join(dir, fileDepLock), os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deploy: deployment %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("deploy: deployment %s: %w: its lock is held (booted or being used)", id, ErrInUse)
	}
	if m.etcMounted(id, "") {
		return fmt.Errorf("deploy: deployment %s: %w: its /etc is mounted", id, ErrInUse)
	}
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	name := rootPrefix + id + "." + hex.EncodeToString(rb[:])
	removedDir := filepath.Join(m.store.Root(), dirRemoved)
	if err := os.Rename(dir, filepath.Join(removedDir, name)); err != nil {
		return fmt.Errorf("deploy: removing deployment %s: %w", id, err)
	}
	if err := atomicfile.SyncDir(m.deploymentsDir()); err != nil {
		return fmt.Errorf("deploy: removing deployment %s: %w", id, err)
	}
	if err := atomicfile.SyncDir(removedDir); err != nil {
		return fmt.Errorf("deploy: removing deployment %s: %w", id, err)
	}
	m.crashPoint("remove.renamed")
	ok, err := m.finishRemoval(ctx, name, lf)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("deploy: deployment %s: %w: its /etc was mounted meanwhile; removal deferred (gc finishes it)", id, ErrInUse)
	}
	return nil
}

// finishRemoval deletes removed/<name> (a "deploy-<id>.<suffix>" entry)
// unless it is in use, then drops the root of <id>. held is the entry's
// .lock, already locked exclusively by the caller, or nil. It reports
// false when the entry is in use. Called under deploy.lock.
func (m *Manager) finishRemoval(ctx context.Context, name string, held *os.File) (bool, error) {
	id, ok := removedID(name)
	if !ok {
		return true, nil
	}
	dir := filepath.Join(m.store.Root(), dirRemoved, name)
	if held == nil {
		lf, err := os.Open(filepath.Join(dir, fileDepLock))
		switch {
		case err == nil:
			defer lf.Close()
			if unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
				return false, nil
			}
		case errors.Is(err, fs.ErrNotExist):
			// The lock file goes last: nothing left but the directory.
		default:
			return false, fmt.Errorf("deploy: %w", err)
		}
	}
	if m.etcMounted(id, name) {
		return false, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("deploy: %w", err)
	}
	for _, e := range ents {
		if e.Name() == fileDepLock {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return false, fmt.Errorf("deploy: removing deployment %s: %w", id, err)
		}
		m.crashPoint("remove.deleted")
	}
	if err := os.Remove(filepath.Join(dir, fileDepLock)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("deploy: %w", err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("deploy: %w", err)
	}
	m.crashPoint("remove.gone")
	if _, err := os.Lstat(m.dir(id)); err == nil {
		return true, nil // cannot happen: ids are not reused while removals are pending
	}
	if err := m.store.RemoveRoot(ctx, rootPrefix+id); err != nil {
		return false, fmt.Errorf("deploy: removing deployment %s: %w", id, err)
	}
	m.log.Info("deployment removed", "id", id)
	return true, nil
}

// GCResult is what GC did.
type GCResult struct {
	Removed []string // deployments whose deferred removal finished
	InUse   []string // deferred removals still in use
	Roots   []string // roots dropped because their deployment is gone
}

// GC finishes deferred and interrupted removals, and drops "deploy-<id>"
// roots whose deployment is gone (a crash between a Create's AddRoot and
// its rename, or between a removal's delete and its RemoveRoot), so their
// images may be removed. Temp directories of interrupted Creates are the
// store's (tmp/): objstore.Open and (*objstore.Store).GC delete them once
// no process holds them. Takes deploy.lock.
func (m *Manager) GC(ctx context.Context) (GCResult, error) {
	var res GCResult
	unlock, err := m.lock(ctx)
	if err != nil {
		return res, err
	}
	defer unlock()
	ents, err := os.ReadDir(filepath.Join(m.store.Root(), dirRemoved))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("deploy: %w", err)
	}
	pending := map[string]bool{}
	for _, e := range ents {
		id, ok := removedID(e.Name())
		if !ok {
			continue
		}
		done, err := m.finishRemoval(ctx, e.Name(), nil)
		if err != nil {
			return res, err
		}
		if done {
			res.Removed = append(res.Removed, id)
		} else {
			res.InUse = append(res.InUse, id)
			pending[id] = true
		}
	}
	roots, err := m.store.Roots(ctx)
	if err != nil {
		return res, fmt.Errorf("deploy: %w", err)
	}
	for r := range roots {
		id, ok := strings.CutPrefix(r, rootPrefix)
		if !ok || pending[id] {
			continue
		}
		if _, err := os.Lstat(m.dir(id)); err == nil || !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := m.store.RemoveRoot(ctx, r); err != nil {
			return res, fmt.Errorf("deploy: %w", err)
		}
		res.Roots = append(res.Roots, r)
	}
	return res, nil
}

// etcMounted reports whether the mount table shows deployment id's etc/
// mounted (as deployments/<id>/etc, or as removed/<removedName>/etc when
// that is given). Any filesystem counts: st_dev and mountinfo's device
// differ on btrfs subvolumes, and a false match only keeps a deployment.
// A mount table that cannot be read counts as mounted: deleting the
// directory would descend into a mounted etc/ and empty a live /etc.
func (m *Manager) etcMounted(id, removedName string) bool {
	table := m.mountinfo
	if table == "" {
		table = "/proc/self/mountinfo"
	}
	b, err := os.ReadFile(table)
	if err != nil {
		m.log.Warn("cannot read the mount table; treating the deployment's /etc as mounted", "id", id, "err", err)
		return true
	}
	suffixes := []string{"/" + dirDeployments + "/" + id + "/" + dirEtc}
	if removedName != "" {
		suffixes = append(suffixes, "/"+dirRemoved+"/"+removedName+"/"+dirEtc)
	}
	return mountsUnder(b, suffixes)
}

// mountsUnder reports whether a mountinfo table has a mount whose root
// (the path inside its filesystem, field 4) is one of the directories
// named by suffixes or below one; a table it cannot read to the end (a
// line over 1 MiB) counts as having one.
func mountsUnder(table []byte, suffixes []string) bool {
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		root := unescapeMountinfo(f[3])
		for _, s := range suffixes {
			if strings.HasSuffix(root, s) || strings.Contains(root, s+"/") {
				return true
			}
		}
	}
	return sc.Err() != nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 etc.).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
