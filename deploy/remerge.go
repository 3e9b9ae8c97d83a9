package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Remerge redoes the /etc merge of deployment id from deployment from's
// current /etc (the finalize step at shutdown: changes made to the booted
// /etc since id was staged carry over): base is from's image, local
// from's etc/, new id's image. The new etc/ is built in a store temp
// directory together with deployment.json (the new conflicts and
// MergedFrom) and a hardlink of the same .lock, synced, and exchanged with
// deployments/<id> in one renameat2(RENAME_EXCHANGE). A crash before the
// exchange leaves the old etc/ and record, after it the new ones: the
// record always lists the conflicts of the etc/ beside it. id must not be
// in use (ErrInUse): its etc/ is replaced. Takes deploy.lock.
func (m *Manager) Remerge(ctx context.Context, id, from string) ([]Conflict, error) {
	unlock, err := m.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	d, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	f, err := m.Get(ctx, from)
	if err != nil {
		return nil, fmt.Errorf("deploy: remerge from: %w", err)
	}
	if id == from {
		return nil, fmt.Errorf("deploy: remerge of deployment %s from itself", id)
	}
	lf, err := os.Open(filepath.Join(m.dir(id), fileDepLock))
	if err != nil {
		return nil, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	defer lf.Close()
	if unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil || m.etcMounted(id, "") {
		return nil, fmt.Errorf("deploy: deployment %s: %w: cannot replace its /etc", id, ErrInUse)
	}
	newFS, err := m.store.OpenImageFS(ctx, d.Image)
	if err != nil {
		return nil, fmt.Errorf("deploy: image %s: %w", d.Image, err)
	}
	defer newFS.Close()
	baseFS, err := m.store.OpenImageFS(ctx, f.Image)
	if err != nil {
		return nil, fmt.Errorf("deploy: image %s of deployment %s: %w", f.Image, f.ID, err)
	}
	defer baseFS.Close()
	plan, err := Merge(baseFS, newFS, m.EtcDir(from))
	if err != nil {
		return nil, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	// The whole deployment directory is rebuilt and exchanged, so that its
	// etc/ and the record listing that merge's conflicts change together.
	td, err := m.store.NewTempDir(ctx)
	if err != nil {
		return nil, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	defer td.Release() // the old deployment directory after the exchange
	build := td.Path()
	if err := apply(ctx, plan, filepath.Join(build, dirEtc), applyOptions{crash: m.crash}); err != nil {
		return nil, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	d.MergedFrom, d.Conflicts = from, plan.Conflicts
	if err := m.writeRecord(build, d, false); err != nil {
		return nil, err
	}
	// The same .lock inode: a Hold that opened it before the exchange
	// still finds it at its place after.
	if err := os.Link(filepath.Join(m.dir(id), fileDepLock), filepath.Join(build, fileDepLock)); err != nil {
		return nil, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	if err := os.Chmod(build, 0o755); err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	if err := syncfs(build); err != nil {
		return nil, err
	}
	m.crashPoint("remerge.synced")
	if err := unix.Renameat2(unix.AT_FDCWD, build, unix.AT_FDCWD, m.dir(id), unix.RENAME_EXCHANGE); err != nil {
		return nil, fmt.Errorf("deploy: deployment %s: exchanging its directory: %w", id, err)
	}
	if err := syncDirs(m.deploymentsDir(), filepath.Dir(build)); err != nil {
		return nil, err
	}
	m.crashPoint("remerge.exchanged")
	return plan.Conflicts, nil
}

func syncDirs(dirs ...string) error {
	for _, d := range dirs {
		f, err := os.Open(d)
		if err != nil {
			return fmt.Errorf("deploy: %w", err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("deploy: fsync %s: %w", d, err)
		}
	}
	return nil
}
