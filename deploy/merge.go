package deploy

import (
	"fmt"
	"io/fs"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Source says which tree a path of the merged /etc is copied from.
type Source int

const (
	// FromNew: the new image's /etc.
	FromNew Source = iota + 1
	// FromLocal: the local /etc (the deployment merged from).
	FromLocal
)

// String returns "new" or "local".
func (s Source) String() string {
	switch s {
	case FromNew:
		return "new"
	case FromLocal:
		return "local"
	}
	return fmt.Sprintf("source%d", int(s))
}

// Action is one path of the merged /etc and where it comes from. Paths are
// relative to /etc ("." is /etc itself); a directory's action precedes its
// children's.
type Action struct {
	Path string
	From Source
	Type string // "directory", "file", "symlink", "character device", ...
}

// Plan is the result of Merge: the complete merged /etc as actions, plus
// the conflicts (paths changed on both sides, where the local version won).
// It refers to the trees Merge read: the new image's file system must stay
// open, and the local /etc unchanged, until Apply has run.
type Plan struct {
	Actions   []Action
	Conflicts []Conflict

	local, new *tree // where Apply reads from
}

// Merge plans the three-way merge of /etc, ostree's and bootc's rule:
// base is the image the local /etc was deployed from, newImage the image
// being deployed (both file systems rooted at the image root, their /etc
// read from "etc"), local the /etc directory holding the user's changes.
//
// For each path: unchanged locally (the whole subtree, compared with
// base: type, mode, owner, xattrs, content, symlink target) → the new
// image's version; changed locally but not in the new image → the local
// version; changed on both sides → the local version and a Conflict, or,
// for two directories, a merge of their entries (a local directory that
// differs from base only by deleted entries counts as unchanged against a
// new image that removes or replaces it). A local non-directory
// where the new image has a directory with changes cannot be merged: the
// error wraps ErrEtcMerge and names the path. With base nil and local ""
// the plan is a copy of the new image's /etc. A new image without /etc
// gives ErrNoEtc; a base image without one counts as an empty /etc.
//
// Merge only reads; Apply writes the plan.
func Merge(base, newImage fs.FS, local string) (Plan, error) {
	if newImage == nil {
		return Plan{}, fmt.Errorf("deploy: merge: no new image")
	}
	nt, ok, err := loadFS(newImage, "etc", "new image /etc")
	if err != nil {
		return Plan{}, err
	}
	if !ok {
		return Plan{}, fmt.Errorf("deploy: %w", ErrNoEtc)
	}
	if (base == nil) != (local == "") {
		return Plan{}, fmt.Errorf("deploy: merge: base and local /etc go together")
	}
	m := &merger{new: nt, memo: map[memoKey]bool{}}
	if base == nil {
		m.take(nt, ".")
		return m.plan(), nil
	}
	bt, ok, err := loadFS(base, "etc", "base image /etc")
	if err != nil {
		return Plan{}, err
	}
	if !ok {
		bt = &tree{name: "base image /etc (none)", entries: map[string]*entry{}}
	}
	lt, err := loadDir(local)
	if err != nil {
		return Plan{}, err
	}
	m.base, m.local = bt, lt
	if err := m.compareFiles(); err != nil {
		return Plan{}, err
	}
	if err := m.dir("."); err != nil {
		return Plan{}, err
	}
	return m.plan(), nil
}

type memoKey struct {
	a, b *tree
	p    string
}

type merger struct {
	base, local, new *tree
	actions          []Action
	conflicts        []Conflict
	memo             map[memoKey]bool
	quiet            int             // > 0: below a directory already reported as a conflict
	buf              []byte          // content comparisons
	content          map[string]bool // local vs base content of regular files, from compareFiles
}

// compareWorkers bounds the content comparisons compareFiles runs at once.
const compareWorkers = 4

// compareFiles compares, on a few workers, the content of every regular
// file that local and base both have with the same metadata and size:
// the comparisons the planner needs most, and the ones that read files.
func (m *merger) compareFiles() error {
	var paths []string
	for p, l := range m.local.entries {
		if l.typ() != unix.S_IFREG || l.size == 0 {
			continue
		}
		if b := m.base.get(p); b != nil && b.size == l.size && sameMeta(l, b) {
			paths = append(paths, p)
		}
	}
	m.content = make(map[string]bool, len(paths))
	var mu sync.Mutex
	bufs := sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}
	g := new(errgroup.Group)
	g.SetLimit(compareWorkers)
	for _, p := range paths {
		g.Go(func() error {
			buf := bufs.Get().(*[]byte)
			defer bufs.Put(buf)
			same, err := sameContent(m.local, m.local.get(p), m.base, m.base.get(p), p, *buf)
			if err != nil {
				return err
			}
			mu.Lock()
			m.content[p] = same
			mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

func (m *merger) plan() Plan {
	return Plan{Actions: m.actions, Conflicts: m.conflicts, local: m.local, new: m.new}
}

// same reports whether path p is the same whole subtree in a and b.
func (m *merger) same(a, b *tree, p string) (bool, error) {
	ea, eb := a.get(p), b.get(p)
	if ea == nil || eb == nil {
		return ea == nil && eb == nil, nil
	}
	k := memoKey{a, b, p}
	if v, ok := m.memo[k]; ok {
		return v, nil
	}
	v, err := m.sameUncached(a, ea, b, eb, p)
	if err != nil {
		return false, err
	}
	m.memo[k] = v
	return v, nil
}

func (m *merger) sameUncached(a *tree, ea *entry, b *tree, eb *entry, p string) (bool, error) {
	if !sameMeta(ea, eb) {
		return false, nil
	}
	switch ea.typ() {
	case 0o100000: // regular
		if a == m.local && b == m.base {
			if v, ok := m.content[p]; ok {
				return v, nil
			}
		}
		if m.buf == nil {
			m.buf = make([]byte, 64<<10)
		}
		return sameContent(a, ea, b, eb, p, m.buf)
	case 0o040000: // directory
		if len(ea.children) != len(eb.children) {
			return false, nil
		}
		for i, n := range ea.children {
			if eb.children[i] != n {
				return false, nil
			}
			ok, err := m.same(a, b, join(p, n))
			if err != nil || !ok {
				return false, err
			}
		}
	}
	return true, nil
}

// take adds p and, for a directory, its whole subtree from t.
func (m *merger) take(t *tree, p string) {
	e := t.get(p)
	if e == nil {
		return
	}
	m.add(t, p, e)
	for _, n := range e.children {
		m.take(t, join(p, n))
	}
}

func (m *merger) add(t *tree, p string, e *entry) {
	src := FromNew
	if t == m.local {
		src = FromLocal
	}
	m.actions = append(m.actions, Action{Path: p, From: src, Type: typeName(e)})
}

func (m *merger) conflict(p, reason string) {
	if m.quiet > 0 {
		return
	}
	m.conflicts = append(m.conflicts, Conflict{Path: p, Reason: reason})
}

// decide plans path p, whose parent is a directory of the result.
func (m *merger) decide(p string) error {
	sameL, err := m.same(m.local, m.base, p)
	if err != nil {
		return err
	}
	if sameL {
		m.take(m.new, p) // untouched locally
		return nil
	}
	sameN, err := m.same(m.new, m.base, p)
	if err != nil {
		return err
	}
	if sameN {
		m.take(m.local, p) // the image did not change it
		return nil
	}
	l, n := m.local.get(p), m.new.get(p)
	if l.isDir() && n.isDir() {
		return m.dir(p)
	}
	eq, err := m.same(m.local, m.new, p)
	if err != nil {
		return err
	}
	switch {
	case eq:
		m.take(m.local, p) // the same change on both sides
	case n.isDir() && l != nil:
		// The local file would hide the new image's directory: an error
		// when that directory has entries the base did not have as they
		// are (new files the new system may need).
		changed, err := m.childrenChanged(p, n)
		if err != nil {
			return err
		}
		if changed {
			return fmt.Errorf("deploy: %w: /etc/%s: a local %s where the new image has a directory with new or changed entries", ErrEtcMerge, p, typeName(l))
		}
		m.conflict(p, fmt.Sprintf("the new image changes this directory; kept the local %s", typeName(l)))
		m.take(m.local, p)
	case n.isDir():
		m.conflict(p, "deleted locally, changed in the new image; kept deleted")
	case l.isDir():
		only, err := m.deletionsOnly(p)
		if err != nil {
			return err
		}
		if only {
			// Deletions alone leave nothing of the user's to keep (ostree
			// and bootc alike): the new image's removal or replacement wins.
			m.take(m.new, p)
			return nil
		}
		if n == nil {
			m.conflict(p, "removed by the new image; kept the local directory with its changes")
		} else {
			m.conflict(p, fmt.Sprintf("the new image replaces the directory with a %s; kept the local directory", typeName(n)))
		}
		// Below, every local change is one the new image removed: one
		// conflict for the directory says it.
		m.add(m.local, p, l)
		m.quiet++
		defer func() { m.quiet-- }()
		return m.children(p, l, nil)
	case l == nil:
		m.conflict(p, "deleted locally, changed in the new image; kept deleted")
	case n == nil:
		m.conflict(p, "changed locally, removed by the new image; kept the local version")
		m.take(m.local, p)
	default:
		m.conflict(p, "changed locally and in the new image; kept the local version")
		m.take(m.local, p)
	}
	return nil
}

// deletionsOnly reports whether the local directory p differs from the
// base's only by entries the user deleted: its metadata and every entry
// it still has are the base's (recursively).
func (m *merger) deletionsOnly(p string) (bool, error) {
	l, b := m.local.get(p), m.base.get(p)
	if !l.isDir() || !b.isDir() || !sameMeta(l, b) {
		return false, nil
	}
	for _, c := range l.children {
		cp := join(p, c)
		same, err := m.same(m.local, m.base, cp)
		if err != nil {
			return false, err
		}
		if same {
			continue
		}
		if only, err := m.deletionsOnly(cp); err != nil || !only {
			return false, err
		}
	}
	return true, nil
}

// childrenChanged reports whether any entry of the new image's directory
// p differs from the base's entry of that path.
func (m *merger) childrenChanged(p string, n *entry) (bool, error) {
	for _, c := range n.children {
		same, err := m.same(m.new, m.base, join(p, c))
		if err != nil || !same {
			return !same, err
		}
	}
	return false, nil
}

// dir plans a directory that both local and new have (or the root): its
// own metadata by the three-way rule, then each entry of any side.
func (m *merger) dir(p string) error {
	l, n, b := m.local.get(p), m.new.get(p), m.base.get(p)
	lSame := b != nil && sameMeta(l, b)
	nSame := b != nil && sameMeta(n, b)
	switch {
	case lSame:
		m.add(m.new, p, n)
	case nSame || sameMeta(l, n):
		m.add(m.local, p, l)
	default:
		m.conflict(p, "directory mode, owner or xattrs changed locally and in the new image; kept the local ones")
		m.add(m.local, p, l)
	}
	return m.children(p, l, n)
}

// children plans the union of the entries of l, n and the base directory
// p. Entries are looked up by path, so a side whose p is not a directory
// has none.
func (m *merger) children(p string, l, n *entry) error {
	names := map[string]bool{}
	for _, e := range []*entry{l, n, m.base.get(p)} {
		if e.isDir() {
			for _, c := range e.children {
				names[c] = true
			}
		}
	}
	sorted := make([]string, 0, len(names))
	for c := range names {
		sorted = append(sorted, c)
	}
	sort.Strings(sorted)
	for _, c := range sorted {
		if err := m.decide(join(p, c)); err != nil {
			return err
		}
	}
	return nil
}
