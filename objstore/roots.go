package objstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/verity"
)

// GC roots keep images alive: roots/<name> holds the digest of one image,
// and Remove refuses an image that any root names. A root is written with
// atomicfile (temp name, fsync, rename, fsync of roots/), so after a crash
// it is either there, complete, or absent.
//
// roots.lock orders roots against removal: AddRoot holds it shared while
// it checks that the image exists and writes the root, Remove holds it
// exclusively while it reads the roots and renames the image into
// removed/. So either AddRoot comes first and Remove sees the root, or
// Remove comes first and AddRoot finds the image gone (ErrNotFound): a
// root never names an image that is being removed.
const (
	dirRoots      = "roots"
	fileRootsLock = "roots.lock"
)

// maxRootName bounds a root's name.
const maxRootName = 200

// RootedError is the error Remove returns for an image that GC roots keep
// alive; it wraps ErrRooted.
type RootedError struct {
	Image verity.Digest
	Roots []string // sorted
}

func (e *RootedError) Error() string {
	return fmt.Sprintf("objstore: image %s: %v: kept by root %s", e.Image, ErrRooted, strings.Join(e.Roots, ", "))
}

// Unwrap makes errors.Is(err, ErrRooted) hold.
func (e *RootedError) Unwrap() error { return ErrRooted }

// checkRootName accepts [A-Za-z0-9._-]+ not starting with a dot.
func checkRootName(name string) error {
	if name == "" || len(name) > maxRootName || name[0] == '.' {
		return fmt.Errorf("objstore: invalid root name %q", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("objstore: invalid root name %q", name)
		}
	}
	return nil
}

// rootsLock opens roots.lock and takes it (how: unix.LOCK_SH or LOCK_EX);
// closing the file drops the lock.
func (s *Store) rootsLock(how int) (*os.File, error) {
	p := filepath.Join(s.root, fileRootsLock)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	if err := flock(f, how); err != nil {
		f.Close()
		return nil, fmt.Errorf("objstore: locking %s: %w", p, err)
	}
	return f, nil
}

// rootsDir returns roots/, creating it (durably) in stores made before
// roots existed.
func (s *Store) rootsDir() (string, error) {
	p := filepath.Join(s.root, dirRoots)
	if err := os.Mkdir(p, 0o700); err == nil {
		if err := atomicfile.SyncDir(s.root); err != nil {
			return "", fmt.Errorf("objstore: %w", err)
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("objstore: %w", err)
	}
	return p, nil
}

// AddRoot records the GC root name for image d, replacing an older root
// of that name. The image must be committed (ErrNotFound otherwise, also
// when a removal of d is under way). Takes roots.lock shared.
func (s *Store) AddRoot(ctx context.Context, name string, d verity.Digest) error {
	if err := checkRootName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, err := s.rootsDir()
	if err != nil {
		return err
	}
	l, err := s.rootsLock(unix.LOCK_SH)
	if err != nil {
		return err
	}
	defer l.Close()
	if _, err := os.Lstat(filepath.Join(s.ImageDir(d), fileImage)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("objstore: root %s: image %s: %w", name, d, ErrNotFound)
		}
		return fmt.Errorf("objstore: root %s: %w", name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, name), []byte(d.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("objstore: root %s: %w", name, err)
	}
	s.crashPoint("root.added")
	return nil
}

// RemoveRoot deletes the GC root name (durably); a root that does not
// exist is not an error. The image it named becomes removable.
func (s *Store) RemoveRoot(ctx context.Context, name string) error {
	if err := checkRootName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Join(s.root, dirRoots)
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("objstore: root %s: %w", name, err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("objstore: root %s: %w", name, err)
	}
	return nil
}

// Roots returns every GC root and the image it names. A root file that
// does not parse is reported as an error wrapping ErrCorrupt (it still
// protects nothing: Remove refuses to guess and fails too).
func (s *Store) Roots(ctx context.Context) (map[string]verity.Digest, error) {
	out := map[string]verity.Digest{}
	dir := filepath.Join(s.root, dirRoots)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue // atomicfile's temporary names
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("objstore: root %s: %w", name, err)
		}
		d, err := verity.ParseDigest(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("objstore: root %s: %w: %v", filepath.Join(dir, name), ErrCorrupt, err)
		}
		out[name] = d
	}
	return out, nil
}

// rootsOf returns the sorted names of the roots naming d.
func rootsOf(roots map[string]verity.Digest, d verity.Digest) []string {
	var names []string
	for n, rd := range roots {
		if rd == d {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}
