package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/bootarg"
	"github.com/twinroot/twinroot/verity"
)

// Names on the boot partition.
const (
	loaderDir      = "loader"
	entriesName    = "entries"
	stagedName     = "entries.staged"
	buildingPrefix = ".entries.building-"
	brokenPrefix   = ".entries.broken-" // sets that could not be removed
	setFile        = ".twinroot-set"
	kernelDir      = "twinroot"
	tmpPrefix      = ".tmp-"
)

// DefaultEFIVarsDir is where efivarfs is mounted.
const DefaultEFIVarsDir = "/sys/firmware/efi/efivars"

// Options configure a Partition.
type Options struct {
	// AllowUnmounted lets Open accept a directory that is not a mount point
	// (scratch directories in tests, image builds).
	AllowUnmounted bool
	// Tries is the boot counter of a new first entry: DefaultTries when 0,
	// no boot counting when negative.
	Tries int
	// EFIVarsDir is where Bless reads LoaderBootCountPath
	// (DefaultEFIVarsDir when empty).
	EFIVarsDir string
	// NoExchange makes CommitStaged use the ordered-rename sequence even
	// where the file system can exchange directories (tests).
	NoExchange bool
	// Log receives what the partition does (slog.Default() when nil).
	Log *slog.Logger
}

// Partition is a mounted boot partition (ESP or XBOOTLDR). Its methods that
// change the partition take an exclusive flock on loader/, so two processes
// never interleave their changes; callers still serialise InstallKernel,
// Stage and GC of one update (the updater's sysroot lock), so GC never
// removes a kernel between its installation and the Stage that names it.
type Partition struct {
	dir  string
	opts Options
	log  *slog.Logger
}

// Open returns the boot partition mounted at dir. Unless
// opts.AllowUnmounted, dir must be a mount point (ErrNotMounted, naming dir).
func Open(dir string, opts Options) (*Partition, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("boot: boot partition: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("boot: boot partition %s is not a directory", abs)
	}
	if !opts.AllowUnmounted {
		mp, err := isMountPoint(abs)
		if err != nil {
			return nil, err
		}
		if !mp {
			return nil, fmt.Errorf("%w: %s is not a mounted boot partition (mount the ESP or XBOOTLDR there, or name it with --boot)", ErrNotMounted, abs)
		}
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Partition{dir: abs, opts: opts, log: log}, nil
}

// Dir returns the partition's mount point.
func (p *Partition) Dir() string { return p.dir }

func (p *Partition) tries() int {
	switch {
	case p.opts.Tries == 0:
		return DefaultTries
	case p.opts.Tries < 0:
		return 0
	}
	return p.opts.Tries
}

// isMountPoint reports whether dir is the root of a mount: statx's
// STATX_ATTR_MOUNT_ROOT, else a device change from the parent.
func isMountPoint(dir string) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_BASIC_STATS, &stx); err != nil {
		return false, fmt.Errorf("boot: statx %s: %w", dir, err)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	var a, b unix.Stat_t
	if err := unix.Stat(dir, &a); err != nil {
		return false, fmt.Errorf("boot: stat %s: %w", dir, err)
	}
	if err := unix.Stat(filepath.Dir(dir), &b); err != nil {
		return false, fmt.Errorf("boot: stat %s: %w", filepath.Dir(dir), err)
	}
	return a.Dev != b.Dev || a.Ino == b.Ino, nil
}

// lock takes the partition's exclusive lock (flock on loader/, created when
// missing) and returns its release.
func (p *Partition) lock(ctx context.Context) (func(), error) {
	dir := filepath.Join(p.dir, loaderDir)
	if err := mkdirSync(dir); err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("boot: flock %s: %w", dir, err)
		}
		if err := sleepCtx(ctx); err != nil {
			f.Close()
			return nil, err
		}
	}
	return func() { f.Close() }, nil
}

// InstalledEntry is an entry file on the partition.
type InstalledEntry struct {
	File  string    // file name in its directory
	Name  EntryName // parsed file name (boot counter)
	Entry Entry
	// ID and Image come from the entry's twinroot= option; empty when it
	// has none (or a malformed one, then ArgErr says why).
	ID     string
	Image  verity.Digest
	ArgErr error
}

// entrySet is a directory of entries with its set file.
type entrySet struct {
	gen     int
	bases   []string // from the set file, in boot order
	entries []InstalledEntry
	extra   []string // .conf files whose base the set file does not list, or that do not parse
}

// readSet reads dir (loader/entries or loader/entries.staged). A missing
// directory is an empty set of generation 0.
func readSet(dir string) (entrySet, error) {
	var s entrySet
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("boot: %w", err)
	}
	haveSet := false
	if data, err := os.ReadFile(filepath.Join(dir, setFile)); err == nil {
		gen, bases, err := parseSetFile(data)
		if err != nil {
			return s, fmt.Errorf("boot: %s: %w", filepath.Join(dir, setFile), err)
		}
		s.gen, s.bases, haveSet = gen, bases, true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return s, fmt.Errorf("boot: %w", err)
	}
	for _, de := range ents {
		name := de.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".conf") || !de.Type().IsRegular() {
			continue
		}
		n, err := ParseEntryName(name)
		if err != nil {
			continue
		}
		if haveSet && !slices.Contains(s.bases, n.Base) {
			s.extra = append(s.extra, name)
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return s, fmt.Errorf("boot: %w", err)
		}
		e, err := ParseEntry(data)
		if err != nil {
			// systemd-boot skips an entry it cannot parse; so do we, and the
			// next commit drops it with the other extras.
			s.extra = append(s.extra, name)
			continue
		}
		ie := InstalledEntry{File: name, Name: n, Entry: e}
		if a, err := bootarg.Parse(e.Options()); err == nil {
			ie.ID, ie.Image = a.ID, a.Image
		} else if !errors.Is(err, bootarg.ErrMissing) {
			ie.ArgErr = err
		}
		s.entries = append(s.entries, ie)
	}
	SortEntries(s.entries)
	return s, nil
}

// SortEntries sorts entries into boot order, as systemd-boot does.
func SortEntries(es []InstalledEntry) {
	slices.SortStableFunc(es, func(a, b InstalledEntry) int {
		return compareEntries(a.Name, a.Entry, b.Name, b.Entry)
	})
}

// parseSetFile parses a set file: "generation N" and one "entry BASE" line
// per entry, in the BLS key-value syntax.
func parseSetFile(data []byte) (int, []string, error) {
	e, err := ParseEntry(data)
	if err != nil {
		return 0, nil, err
	}
	g, ok := e.Get("generation")
	if !ok {
		return 0, nil, fmt.Errorf("%w: no generation", ErrSyntax)
	}
	gen, err := strconv.Atoi(g)
	if err != nil || gen < 0 {
		return 0, nil, fmt.Errorf("%w: generation %q", ErrSyntax, g)
	}
	return gen, e.All("entry"), nil
}

func formatSetFile(gen int, bases []string) []byte {
	e := Entry{Fields: []Field{{Key: "generation", Value: strconv.Itoa(gen)}}}
	for _, b := range bases {
		e.Fields = append(e.Fields, Field{Key: "entry", Value: b})
	}
	return e.Marshal()
}

// Entries returns the current entry set in boot order. Files a crashed
// commit left behind (names the set does not list) are not in it.
func (p *Partition) Entries(ctx context.Context) ([]InstalledEntry, error) {
	s, err := readSet(filepath.Join(p.dir, loaderDir, entriesName))
	return s.entries, err
}

// Staged returns the staged entry set in boot order, and whether there is
// one that CommitStaged would commit (complete, and newer than the current
// set).
func (p *Partition) Staged(ctx context.Context) ([]InstalledEntry, bool, error) {
	cur, err := readSet(filepath.Join(p.dir, loaderDir, entriesName))
	if err != nil {
		return nil, false, err
	}
	st, err := readSet(filepath.Join(p.dir, loaderDir, stagedName))
	if err != nil {
		// Unreadable (a FAT directory damaged by a power cut): nothing
		// that can be committed; the next Stage or commit removes it.
		p.log.Warn("boot: the staged entry set cannot be read; it is ignored and replaced by the next upgrade", "partition", p.dir, "err", err)
		return nil, false, nil
	}
	if st.gen != cur.gen+1 || len(st.entries) == 0 || len(st.entries) != len(st.bases) {
		return nil, false, nil
	}
	return st.entries, true, nil
}
