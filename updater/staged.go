package updater

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/twinroot/twinroot/internal/atomicfile"
)

// A staged entry set is only committed at the shutdown of the boot that
// staged it. The boot partition keeps entries.staged across a crash, so
// without this a power cut after an upgrade would still switch at the next
// clean shutdown; instead, as with ostree's staged deployment in /run, an
// update staged in an earlier boot that never shut down cleanly is
// dropped. The marker <store>/state/updater/staged records the boot id
// (/proc/sys/kernel/random/boot_id) and the staged deployment. It is
// written after the staged set: a crash between the two leaves a set
// without marker, which finalize discards (the update is dropped, never
// the system).

const stagedMarker = "staged"

// bootID is the current boot's id (Options.BootID overrides it: tests).
func (u *Updater) bootID() (string, error) {
	if u.o.BootID != "" {
		return u.o.BootID, nil
	}
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("updater: boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (u *Updater) markerPath() (string, error) {
	dir, err := u.store.StateDir("updater")
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, stagedMarker), nil
}

// markStaged records that deployment id was staged in this boot.
func (u *Updater) markStaged(id string) error {
	bid, err := u.bootID()
	if err != nil {
		return err
	}
	p, err := u.markerPath()
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(p, fmt.Appendf(nil, "boot_id=%s deployment=%s\n", bid, id), 0o644)
}

// stagedThisBoot reports whether the marker names deployment id and the
// current boot.
func (u *Updater) stagedThisBoot(id string) (bool, error) {
	bid, err := u.bootID()
	if err != nil {
		return false, err
	}
	p, err := u.markerPath()
	if err != nil {
		return false, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("updater: %w", err)
	}
	return strings.TrimSpace(string(b)) == fmt.Sprintf("boot_id=%s deployment=%s", bid, id), nil
}

// clearStaged removes the marker.
func (u *Updater) clearStaged() {
	if p, err := u.markerPath(); err == nil {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			u.o.Log.Warn("removing the staged marker", "err", err)
		}
	}
}
