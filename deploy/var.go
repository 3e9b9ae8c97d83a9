package deploy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
)

// Names used while seeding the persistent /var.
const (
	varSeedTmp  = ".twinroot-seed.tmp" // being copied; garbage after a crash
	varSeedDone = ".twinroot-seed"     // complete copy, entries being moved up
)

// SeedVar seeds the persistent /var (<sysroot>/var, shared by all
// deployments) from the /var of the image fsys when it is missing or
// empty; a /var with anything in it is left alone. Create calls it after
// every deployment (a no-op but for the first); it is exported for
// installers that lay out a sysroot by hand.
//
// Crash safety: a missing /var is built as <sysroot>/.twinroot-var.tmp,
// synced and renamed into place. An existing empty /var (it may be a
// mount point) gets the copy in var/.twinroot-seed.tmp, synced, renamed to
// var/.twinroot-seed (complete), whose entries are then renamed up one by
// one; a crash leaves either a .tmp copy (deleted and redone) or a
// complete .twinroot-seed, whose moves the next call finishes.
func (m *Manager) SeedVar(ctx context.Context, fsys fs.FS) error {
	return m.seedVar(ctx, fsys)
}

func (m *Manager) seedVar(ctx context.Context, fsys fs.FS) error {
	if m.sysroot == "" {
		return fmt.Errorf("deploy: seeding /var: no sysroot")
	}
	varDir := filepath.Join(m.sysroot, "var")
	ents, err := os.ReadDir(varDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		plan, err := varPlan(fsys)
		if err != nil {
			return err
		}
		tmp := filepath.Join(m.sysroot, ".twinroot-var.tmp")
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("deploy: seeding /var: %w", err)
		}
		if err := apply(ctx, plan, tmp, applyOptions{crash: m.crash}); err != nil {
			return fmt.Errorf("deploy: seeding %s: %w", varDir, err)
		}
		if err := syncfs(tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, varDir); err != nil {
			return fmt.Errorf("deploy: seeding /var: %w", err)
		}
		m.crashPoint("var.renamed")
		return atomicfile.SyncDir(m.sysroot)
	case err != nil:
		return fmt.Errorf("deploy: seeding /var: %w", err)
	}
	done, other := false, false
	for _, e := range ents {
		switch e.Name() {
		case varSeedTmp:
			if err := os.RemoveAll(filepath.Join(varDir, varSeedTmp)); err != nil {
				return fmt.Errorf("deploy: seeding /var: %w", err)
			}
		case varSeedDone:
			done = true
		default:
			other = true
		}
	}
	if !done && other {
		return nil // not empty: never touched
	}
	seed := filepath.Join(varDir, varSeedDone)
	plan, err := varPlan(fsys)
	if err != nil {
		return err
	}
	if !done {
		tmp := filepath.Join(varDir, varSeedTmp)
		if err := apply(ctx, plan, tmp, applyOptions{crash: m.crash}); err != nil {
			return fmt.Errorf("deploy: seeding %s: %w", varDir, err)
		}
		if err := syncfs(tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, seed); err != nil {
			return fmt.Errorf("deploy: seeding /var: %w", err)
		}
		if err := atomicfile.SyncDir(varDir); err != nil {
			return err
		}
		m.crashPoint("var.seed-complete")
	}
	// Move the complete copy's entries up, then its (now empty) directory
	// away; its own metadata becomes /var's.
	names, err := os.ReadDir(seed)
	if err != nil {
		return fmt.Errorf("deploy: seeding /var: %w", err)
	}
	for _, e := range names {
		// An entry that appeared in /var meanwhile wins over the seed's.
		err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(seed, e.Name()), unix.AT_FDCWD, filepath.Join(varDir, e.Name()), unix.RENAME_NOREPLACE)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("deploy: seeding /var: %w", err)
		}
		m.crashPoint("var.moved")
	}
	if r := plan.new.get("."); r != nil {
		if err := setMeta(varDir, r, false); err != nil {
			return err
		}
	}
	if err := atomicfile.SyncDir(varDir); err != nil {
		return err
	}
	if err := os.RemoveAll(seed); err != nil {
		return fmt.Errorf("deploy: seeding /var: %w", err)
	}
	return atomicfile.SyncDir(varDir)
}

// varPlan plans a copy of the image's /var (an empty directory when the
// image has none).
func varPlan(fsys fs.FS) (Plan, error) {
	t, ok, err := loadFS(fsys, "var", "image /var")
	if err != nil {
		return Plan{}, err
	}
	if !ok {
		t = &tree{name: "empty /var", entries: map[string]*entry{".": {mode: 0o040755}}}
	}
	m := &merger{new: t}
	m.take(t, ".")
	return m.plan(), nil
}
