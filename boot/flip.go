package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Stage writes the complete entry set for first and fallback (nil: none)
// into loader/entries.staged, replacing any staged set; the current set is
// not touched. The kernels the entries name must be on the partition
// (InstallKernel) or Stage fails with ErrMissingKernel. The set is built in
// a temporary directory (every file written, fsynced, the directory
// fsynced) and renamed into place, so a staged set is complete or absent.
func (p *Partition) Stage(ctx context.Context, first Deployment, fallback *Deployment) error {
	unlock, err := p.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := p.cleanupLocked(); err != nil {
		return err
	}
	deps := []Deployment{first}
	if fallback != nil {
		deps = append(deps, *fallback)
	}
	for _, d := range deps {
		for _, f := range []string{d.Kernel.Linux, d.Kernel.Initrd} {
			if f == "" {
				return fmt.Errorf("%w: deployment %s has no installed kernel", ErrMissingKernel, d.ID)
			}
			fi, err := os.Stat(filepath.Join(p.dir, filepath.FromSlash(f)))
			if err != nil || !fi.Mode().IsRegular() {
				return fmt.Errorf("%w: %s%s for deployment %s", ErrMissingKernel, p.dir, f, d.ID)
			}
		}
	}
	loader := filepath.Join(p.dir, loaderDir)
	cur, err := readSet(filepath.Join(loader, entriesName))
	if err != nil {
		return err
	}
	planned, err := Plan(first, fallback, currentNames(cur), p.tries())
	if err != nil {
		return err
	}
	build := filepath.Join(loader, buildingPrefix+randSuffix())
	if err := os.Mkdir(build, 0o755); err != nil {
		return fmt.Errorf("boot: %w", mapNoSpace(err, p.dir))
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(build)
		}
	}()
	var bases []string
	for _, f := range planned {
		if err := writeFile(ctx, build, f.File(), f.Entry.Marshal()); err != nil {
			return err
		}
		bases = append(bases, f.Name.Base)
	}
	if err := writeFile(ctx, build, setFile, formatSetFile(cur.gen+1, bases)); err != nil {
		return err
	}
	if err := syncDir(build); err != nil {
		return err
	}
	staged := filepath.Join(loader, stagedName)
	if err := p.removeSet(loader, stagedName); err != nil {
		return err
	}
	if err := rename(build, staged); err != nil {
		return err
	}
	ok = true
	if err := syncDir(loader); err != nil {
		return err
	}
	names := make([]string, len(planned))
	for i, f := range planned {
		names[i] = f.File()
	}
	p.log.Info("boot: staged entries", "partition", p.dir, "entries", names, "generation", cur.gen+1)
	return nil
}

// currentNames maps each deployment of a set to its entry's name.
func currentNames(s entrySet) map[string]EntryName {
	m := map[string]EntryName{}
	for _, e := range s.entries {
		if e.ID != "" {
			if _, dup := m[e.ID]; !dup {
				m[e.ID] = e.Name
			}
		}
	}
	return m
}

// CommitStaged makes the staged set the current one. First the staged
// entries' boot counters are brought up to date from the current names (a
// blessing or a try systemd-boot counted after Stage is kept); then
// loader/entries.staged and loader/entries are exchanged with one
// renameat2(RENAME_EXCHANGE) and loader/ is fsynced; the old set, now in
// loader/entries.staged, is removed. Where the file system cannot exchange,
// the ordered-rename sequence of commitByRenames is used. Without a staged
// set newer than the current one it returns ErrNoStaged.
func (p *Partition) CommitStaged(ctx context.Context) error {
	unlock, err := p.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := p.cleanupLocked(); err != nil {
		return err
	}
	loader := filepath.Join(p.dir, loaderDir)
	curDir, stDir := filepath.Join(loader, entriesName), filepath.Join(loader, stagedName)
	cur, err := readSet(curDir)
	if err != nil {
		return err
	}
	st, err := readSet(stDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(stDir); err != nil || st.gen != cur.gen+1 {
		return fmt.Errorf("%w on %s", ErrNoStaged, p.dir)
	}
	if cur.gen == 0 && len(cur.entries) > 0 {
		var foreign []string
		for _, e := range cur.entries {
			foreign = append(foreign, e.File)
		}
		p.log.Warn("boot: loader/entries holds entries twinroot did not write; the commit replaces them", "partition", p.dir, "entries", foreign)
	}
	if len(st.entries) != len(st.bases) || len(st.entries) == 0 {
		return fmt.Errorf("boot: staged set %s is incomplete: %d entries for %d names", stDir, len(st.entries), len(st.bases))
	}
	// Rebuild the names from the current ones.
	names := currentNames(cur)
	renamed := false
	for i := range st.entries {
		e := &st.entries[i]
		isFirst := strings.HasPrefix(e.Name.Base, entryPrefix+fileRankFirst+"_")
		want := e.Name // a deployment new to the set keeps its staged counter
		if c, have := names[e.ID]; have && e.ID != "" {
			want = counterFor(e.Name, isFirst, c, true, p.tries())
		}
		if want != e.Name {
			if err := rename(filepath.Join(stDir, e.File), filepath.Join(stDir, want.String())); err != nil {
				return err
			}
			p.log.Debug("boot: staged entry renamed from the current set", "from", e.File, "to", want.String())
			e.Name, e.File = want, want.String()
			renamed = true
		}
	}
	if renamed {
		if err := syncDir(stDir); err != nil {
			return err
		}
	}
	var files []string
	for _, e := range st.entries {
		files = append(files, e.File)
	}
	if _, err := os.Stat(curDir); errors.Is(err, fs.ErrNotExist) {
		if err := rename(stDir, curDir); err != nil {
			return err
		}
		if err := syncDir(loader); err != nil {
			return err
		}
		p.log.Info("boot: committed entries", "partition", p.dir, "entries", files, "generation", st.gen, "how", "rename")
		return nil
	}
	how := "exchange"
	err = errors.ErrUnsupported
	if !p.opts.NoExchange {
		err = exchange(loader, stagedName, entriesName)
	}
	switch {
	case err == nil:
		if err := syncDir(loader); err != nil {
			return err
		}
	case errors.Is(err, errors.ErrUnsupported) || exchangeUnsupported(err):
		how = "renames"
		if err := p.commitByRenames(ctx, cur, st); err != nil {
			return err
		}
	default:
		return fmt.Errorf("boot: %w", err)
	}
	// The old set (or what the renames left) is in entries.staged now,
	// with a generation that is not newer than the current one.
	if err := os.RemoveAll(stDir); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if err := syncDir(loader); err != nil {
		return err
	}
	p.log.Info("boot: committed entries", "partition", p.dir, "entries", files, "generation", st.gen, "how", how)
	return nil
}

// commitByRenames commits st into loader/entries where the directories
// cannot be exchanged, in an order that is bootable at every step:
//
//  1. each new entry, the fallback first and the default last, is written
//     into loader/entries (temporary name, fsync, rename) and any other
//     file of the same name base (an older counter) is removed; the
//     directory is fsynced after each entry. Old and new entries are all
//     complete, so whichever sorts first boots.
//  2. the set file (generation and names of the new set) is replaced; from
//     here the staged set is no longer newer than the current one.
//  3. entries the set file does not list (the old set) are removed.
//
// A crash before 2 leaves the staged set committable and CommitStaged
// redoes the steps; a crash after it leaves old entries that the next
// Stage, CommitStaged or GC removes (cleanupLocked).
func (p *Partition) commitByRenames(ctx context.Context, cur, st entrySet) error {
	loader := filepath.Join(p.dir, loaderDir)
	curDir, stDir := filepath.Join(loader, entriesName), filepath.Join(loader, stagedName)
	order := slices.Clone(st.entries)
	slices.Reverse(order)
	for _, e := range order {
		data, err := os.ReadFile(filepath.Join(stDir, e.File))
		if err != nil {
			return fmt.Errorf("boot: %w", err)
		}
		if err := writeFile(ctx, curDir, e.File, data); err != nil {
			return err
		}
		if err := removeVariants(curDir, e.Name); err != nil {
			return err
		}
		if err := syncDir(curDir); err != nil {
			return err
		}
	}
	if err := writeFile(ctx, curDir, setFile, formatSetFile(st.gen, st.bases)); err != nil {
		return err
	}
	if err := syncDir(curDir); err != nil {
		return err
	}
	return p.removeExtras()
}

// removeVariants removes the files in dir with n's base but another counter.
func removeVariants(dir string, n EntryName) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	for _, de := range ents {
		m, err := ParseEntryName(de.Name())
		if err != nil || m.Base != n.Base || de.Name() == n.String() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, de.Name())); err != nil {
			return fmt.Errorf("boot: %w", err)
		}
	}
	return nil
}

// removeExtras removes the entry files of loader/entries that its set file
// does not list (what an interrupted commitByRenames leaves).
func (p *Partition) removeExtras() error {
	curDir := filepath.Join(p.dir, loaderDir, entriesName)
	s, err := readSet(curDir)
	if err != nil {
		return err
	}
	for _, f := range s.extra {
		if err := os.Remove(filepath.Join(curDir, f)); err != nil {
			return fmt.Errorf("boot: %w", err)
		}
	}
	if len(s.extra) > 0 {
		p.log.Info("boot: removed entries left by an interrupted commit", "entries", s.extra)
		return syncDir(curDir)
	}
	return nil
}

// cleanupLocked removes what interrupted operations leave: half-built
// staged sets, a staged set that is not newer than the current one (the old
// set after an exchange), temporary files, and entries outside the current
// set. Only while a commit is pending (staged newer than current) are the
// extra entries kept, as the commit in progress may have written them.
func (p *Partition) cleanupLocked() error {
	loader := filepath.Join(p.dir, loaderDir)
	ents, err := os.ReadDir(loader)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	changed := false
	for _, de := range ents {
		n := de.Name()
		switch {
		case strings.HasPrefix(n, buildingPrefix) || strings.HasPrefix(n, tmpPrefix):
			// Nothing reads these; one that cannot be removed is set
			// aside rather than stopping every later stage and commit.
			if err := p.removeSet(loader, n); err != nil {
				return err
			}
			changed = true
		case strings.HasPrefix(n, brokenPrefix):
			if os.RemoveAll(filepath.Join(loader, n)) == nil {
				changed = true
			}
		}
	}
	cur, err := readSet(filepath.Join(loader, entriesName))
	if err != nil {
		return err
	}
	stDir := filepath.Join(loader, stagedName)
	pending := false
	if _, err := os.Stat(stDir); err == nil {
		st, err := readSet(stDir)
		switch {
		case err != nil:
			// A power cut can leave a FAT directory that reads back as
			// EIO. A staged set that cannot be read cannot be committed;
			// it is dropped like a stale one, so that the next upgrade
			// can stage again without waiting for fsck.fat.
			p.log.Warn("boot: the staged entry set cannot be read; discarding it", "partition", p.dir, "err", err)
			if err := p.removeSet(loader, stagedName); err != nil {
				return err
			}
			changed = true
		case st.gen != cur.gen+1:
			if err := p.removeSet(loader, stagedName); err != nil {
				return err
			}
			changed = true
		default:
			pending = true
		}
	}
	for _, d := range []string{entriesName, stagedName} {
		dd := filepath.Join(loader, d)
		des, _ := os.ReadDir(dd)
		for _, de := range des {
			if strings.HasPrefix(de.Name(), tmpPrefix) {
				os.Remove(filepath.Join(dd, de.Name()))
			}
		}
	}
	if changed {
		if err := syncDir(loader); err != nil {
			return err
		}
	}
	if !pending {
		return p.removeExtras()
	}
	return nil
}

// removeSet removes loader/name. When its contents cannot be removed (a
// damaged FAT directory gives EIO) it is renamed to a hidden name in
// loader/, where neither systemd-boot nor a later readSet looks, and later
// cleanups try again to remove it.
func (p *Partition) removeSet(loader, name string) error {
	dir := filepath.Join(loader, name)
	err := os.RemoveAll(dir)
	if err == nil {
		return nil
	}
	aside := filepath.Join(loader, brokenPrefix+randSuffix())
	if rerr := os.Rename(dir, aside); rerr != nil {
		return fmt.Errorf("boot: %w (and renaming it aside: %v)", err, rerr)
	}
	p.log.Warn("boot: a directory could not be removed; set aside", "dir", dir, "aside", aside, "err", err)
	return nil
}

// DiscardStaged removes the staged set, if any.
func (p *Partition) DiscardStaged(ctx context.Context) error {
	unlock, err := p.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	loader := filepath.Join(p.dir, loaderDir)
	if _, err := os.Lstat(filepath.Join(loader, stagedName)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := p.removeSet(loader, stagedName); err != nil {
		return err
	}
	return syncDir(loader)
}

// Apply stages the set for first and fallback and commits it at once: a
// rollback, or the first install.
func (p *Partition) Apply(ctx context.Context, first Deployment, fallback *Deployment) error {
	if err := p.Stage(ctx, first, fallback); err != nil {
		return err
	}
	return p.CommitStaged(ctx)
}
