package objstore

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// ProblemKind classifies an fsck finding.
type ProblemKind int

// The problems fsck finds.
const (
	// ProblemCorruptObject: a file's content does not match its digest name.
	ProblemCorruptObject ProblemKind = iota + 1
	// ProblemForeignFile: a file that does not belong in objects/ or in an
	// image directory (bad name or not a regular file).
	ProblemForeignFile
	// ProblemBadImage: image.cfs is missing, unreadable, or its digest is not
	// its directory's name.
	ProblemBadImage
	// ProblemMissingObject: the image references an object its directory lacks.
	ProblemMissingObject
	// ProblemNotIndexed: an image's object is absent from objects/, or
	// objects/ holds another inode for it (deduplication lost).
	ProblemNotIndexed
	// ProblemUnreferenced: an image directory holds an object the image does
	// not reference.
	ProblemUnreferenced
	// ProblemLinkCount: an object's link count is lower than the links fsck
	// found (filesystem damage).
	ProblemLinkCount
	// ProblemDanglingRoot: a GC root names an image that is not committed,
	// or does not parse.
	ProblemDanglingRoot
)

func (k ProblemKind) String() string {
	switch k {
	case ProblemCorruptObject:
		return "corrupt-object"
	case ProblemForeignFile:
		return "foreign-file"
	case ProblemBadImage:
		return "bad-image"
	case ProblemMissingObject:
		return "missing-object"
	case ProblemNotIndexed:
		return "not-indexed"
	case ProblemUnreferenced:
		return "unreferenced-object"
	case ProblemLinkCount:
		return "link-count"
	case ProblemDanglingRoot:
		return "dangling-root"
	}
	return fmt.Sprintf("problem%d", int(k))
}

// MarshalText implements encoding.TextMarshaler.
func (k ProblemKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Problem is one fsck finding.
type Problem struct {
	Kind   ProblemKind   `json:"kind"`
	Path   string        `json:"path"`             // the file concerned
	Object verity.Digest `json:"object,omitzero"`  // the object, when known
	Image  verity.Digest `json:"image,omitzero"`   // the image, when the problem is in one
	Detail string        `json:"detail,omitempty"` // human-readable specifics
	// Repaired is set when --repair fixed it; Lost when the content is gone
	// (no correct copy anywhere in the store).
	Repaired bool `json:"repaired,omitempty"`
	Lost     bool `json:"lost,omitempty"`
}

func (p Problem) String() string {
	s := p.Kind.String() + ": " + p.Path
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	if p.Repaired {
		s += " (repaired)"
	} else if p.Lost {
		s += " (lost)"
	}
	return s
}

// FsckOptions configure Fsck.
type FsckOptions struct {
	// Repair fixes what can be fixed: relinks objects from objects/ into
	// image directories and back, removes corrupt and stray files.
	Repair bool
	// Progress, when set, is called as objects are verified.
	Progress func(Progress)
}

// FsckResult is the outcome of Fsck.
type FsckResult struct {
	Objects  int       `json:"objects"`  // objects checked in objects/
	Images   int       `json:"images"`   // images checked
	Garbage  int       `json:"garbage"`  // objects with link count 1 (not a problem; gc deletes them)
	Shared   int       `json:"shared"`   // objects also linked outside the store (container storage)
	Pending  int       `json:"pending"`  // removals waiting in removed/
	Problems []Problem `json:"problems"` // every finding, repaired or not
}

// Clean reports whether fsck found nothing wrong (repaired problems count:
// a repair run that fixed something is not clean).
func (r FsckResult) Clean() bool { return len(r.Problems) == 0 }

type fsckObj struct {
	d      verity.Digest
	path   string
	nlink  uint64
	size   int64
	ok     bool // content verified
	images int
}

// Fsck verifies the store: every object's content matches its name (the
// fs-verity measurement when enabled, else recomputed), every image's
// image.cfs matches its name and every external file it references is in
// its directory with the right content and linked in objects/, and link
// counts add up (extra links, e.g. from container storage, are fine).
func (s *Store) Fsck(ctx context.Context, opts FsckOptions) (FsckResult, error) {
	var res FsckResult
	var mu sync.Mutex
	add := func(p Problem) {
		mu.Lock()
		res.Problems = append(res.Problems, p)
		mu.Unlock()
	}
	// 1. objects/
	byIno := map[inodeKey]*fsckObj{}
	byDigest := map[verity.Digest]*fsckObj{}
	var list []*fsckObj
	objDir := filepath.Join(s.root, dirObjects)
	fans, err := os.ReadDir(objDir)
	if err != nil {
		return res, fmt.Errorf("objstore: %w", err)
	}
	for _, fan := range fans {
		p := filepath.Join(objDir, fan.Name())
		if !fan.IsDir() || len(fan.Name()) != 2 {
			add(Problem{Kind: ProblemForeignFile, Path: p, Detail: "not an object fan-out directory"})
			continue
		}
		names, err := readNames(p)
		if err != nil {
			return res, fmt.Errorf("objstore: %w", err)
		}
		for _, n := range names {
			op := filepath.Join(p, n)
			var sb unix.Stat_t
			if err := unix.Lstat(op, &sb); err != nil {
				continue
			}
			d, ok := s.parseObjectName(fan.Name(), n)
			if !ok || sb.Mode&unix.S_IFMT != unix.S_IFREG {
				pr := Problem{Kind: ProblemForeignFile, Path: op, Detail: "not a digest-named regular file"}
				if opts.Repair && os.Remove(op) == nil {
					pr.Repaired = true
				}
				add(pr)
				continue
			}
			o := &fsckObj{d: d, path: op, nlink: uint64(sb.Nlink), size: sb.Size}
			byIno[inodeKey{sb.Dev, sb.Ino}] = o
			byDigest[d] = o
			list = append(list, o)
		}
	}
	res.Objects = len(list)
	var done, doneBytes int64
	var pmu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, o := range list {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			got, err := s.contentDigest(gctx, o.path)
			if err != nil {
				add(Problem{Kind: ProblemCorruptObject, Path: o.path, Object: o.d, Detail: err.Error()})
			} else if got != o.d {
				add(Problem{Kind: ProblemCorruptObject, Path: o.path, Object: o.d, Detail: "content digest is " + got.String()})
			} else {
				o.ok = true
			}
			if opts.Progress != nil {
				pmu.Lock()
				done++
				doneBytes += o.size
				opts.Progress(Progress{Op: "fsck", Done: done, Total: int64(len(list)), Bytes: doneBytes})
				pmu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	// 2. images/
	imgDir := filepath.Join(s.root, dirImages)
	ents, err := os.ReadDir(imgDir)
	if err != nil {
		return res, fmt.Errorf("objstore: %w", err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		p := filepath.Join(imgDir, e.Name())
		d, ok := s.parseImageName(e.Name())
		if !ok || !e.IsDir() {
			add(Problem{Kind: ProblemForeignFile, Path: p, Detail: "not an image directory"})
			continue
		}
		res.Images++
		if err := s.fsckImage(ctx, d, opts, byIno, byDigest, add); err != nil {
			return res, err
		}
	}
	// 3. Corrupt objects of objects/: with repair, drop the index entry so
	// no new image links bad content.
	if opts.Repair {
		for i := range res.Problems {
			pr := &res.Problems[i]
			if pr.Kind == ProblemCorruptObject && pr.Image.IsZero() && !pr.Repaired {
				if os.Remove(pr.Path) == nil {
					pr.Repaired = true
				}
			}
		}
	}
	// 4. Link counts.
	for _, o := range list {
		want := uint64(1 + o.images)
		switch {
		case o.nlink < want:
			add(Problem{Kind: ProblemLinkCount, Path: o.path, Object: o.d,
				Detail: fmt.Sprintf("link count %d, found %d links", o.nlink, want)})
		case o.nlink == 1:
			res.Garbage++
		case o.nlink > want:
			res.Shared++
		}
	}
	if ents, err := os.ReadDir(filepath.Join(s.root, dirRemoved)); err == nil {
		res.Pending = len(ents)
	}
	// 5. Roots name committed images.
	roots, err := s.Roots(ctx)
	if err != nil {
		add(Problem{Kind: ProblemDanglingRoot, Path: filepath.Join(s.root, dirRoots), Detail: err.Error()})
	}
	for name, d := range roots {
		if _, err := os.Lstat(filepath.Join(s.ImageDir(d), fileImage)); err != nil {
			add(Problem{Kind: ProblemDanglingRoot, Path: filepath.Join(s.root, dirRoots, name), Image: d,
				Detail: "names an image that is not in the store"})
		}
	}
	return res, nil
}

// contentDigest returns a file's fs-verity digest: the kernel's
// measurement when fs-verity is enabled on it, else computed.
func (s *Store) contentDigest(ctx context.Context, path string) (verity.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return verity.Digest{}, err
	}
	defer f.Close()
	if m, err := verity.Measure(f); err == nil {
		// The measurement is metadata: it holds whatever the data became.
		// The kernel checks each block against the Merkle tree as it is
		// read, so reading the whole file (no hashing of ours) finds
		// damaged blocks as EIO.
		bp := s.bufs.Get().(*[]byte)
		defer s.bufs.Put(bp)
		if _, err := io.CopyBuffer(io.Discard, ctxReader{ctx, f}, *bp); err != nil {
			return verity.Digest{}, err // *PathError: "read PATH: input/output error"
		}
		return m, nil
	}
	return verity.DigestFileHandle(ctx, f, s.alg)
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// fsckImage checks one image directory.
func (s *Store) fsckImage(ctx context.Context, d verity.Digest, opts FsckOptions,
	byIno map[inodeKey]*fsckObj, byDigest map[verity.Digest]*fsckObj, add func(Problem)) error {
	dir := s.ImageDir(d)
	ip := filepath.Join(dir, fileImage)
	got, err := s.contentDigest(ctx, ip)
	if err != nil {
		add(Problem{Kind: ProblemBadImage, Path: ip, Image: d, Detail: err.Error()})
		return nil
	}
	if got.Hex() != d.Hex() {
		add(Problem{Kind: ProblemBadImage, Path: ip, Image: d, Detail: "image digest is " + got.String()})
		return nil
	}
	img, err := erofs.OpenFile(ip)
	if err != nil {
		add(Problem{Kind: ProblemBadImage, Path: ip, Image: d, Detail: err.Error()})
		return nil
	}
	root, err := img.Tree()
	img.Close()
	if err != nil {
		add(Problem{Kind: ProblemBadImage, Path: ip, Image: d, Detail: err.Error()})
		return nil
	}
	refs := map[string]*erofs.Node{}
	_ = root.Walk(func(n *erofs.Node) error {
		if n.Link == nil && n.Type() == erofs.ModeReg && n.Payload != "" {
			if _, ok := refs[n.Payload]; !ok {
				refs[n.Payload] = n
			}
		}
		return nil
	})
	for payload, n := range refs {
		if err := ctx.Err(); err != nil {
			return err
		}
		op := filepath.Join(dir, payload)
		od := n.Digest
		if od.IsZero() {
			x, rest := filepath.Split(payload)
			od, _ = s.parseObjectName(filepath.Clean(x), rest)
		}
		idx := byDigest[od]
		var sb unix.Stat_t
		if err := unix.Lstat(op, &sb); err != nil {
			pr := Problem{Kind: ProblemMissingObject, Path: op, Object: od, Image: d, Detail: "referenced by " + n.Path()}
			if idx != nil && idx.ok {
				if opts.Repair && s.relink(idx.path, op) == nil {
					pr.Repaired = true
					idx.images++
				}
			} else {
				pr.Lost = true
			}
			add(pr)
			continue
		}
		o := byIno[inodeKey{sb.Dev, sb.Ino}]
		if o != nil && o.d == od {
			o.images++
			if !o.ok {
				add(Problem{Kind: ProblemCorruptObject, Path: op, Object: od, Image: d, Detail: "shares the corrupt inode of " + o.path, Lost: true})
			}
			continue
		}
		// Not the indexed inode: verify this copy on its own.
		good := false
		if gd, err := s.contentDigest(ctx, op); err == nil && (gd == od || od.IsZero()) {
			good = true
		}
		if !good {
			pr := Problem{Kind: ProblemCorruptObject, Path: op, Object: od, Image: d, Detail: "content does not match"}
			if idx != nil && idx.ok {
				if opts.Repair && s.relink(idx.path, op) == nil {
					pr.Repaired = true
					idx.images++
				}
			} else {
				pr.Lost = true
			}
			add(pr)
			continue
		}
		pr := Problem{Kind: ProblemNotIndexed, Path: op, Object: od, Image: d}
		switch {
		case idx == nil:
			pr.Detail = "absent from objects/"
			if opts.Repair && s.relink(op, s.ObjectPath(od)) == nil {
				pr.Repaired = true
			}
		case idx.ok:
			pr.Detail = "objects/ holds another inode with this content"
			if opts.Repair && s.relink(idx.path, op) == nil {
				pr.Repaired = true
				idx.images++
			}
		default: // objects/ copy is corrupt: put the good one in its place
			pr.Detail = "objects/ holds a corrupt copy"
			if opts.Repair && s.relink(op, idx.path) == nil {
				pr.Repaired = true
			}
		}
		add(pr)
	}
	// Stray files in the image directory.
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("objstore: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		switch {
		case e.Name() == fileImage || e.Name() == fileMeta || e.Name() == fileLock:
			continue
		case !e.IsDir() || len(e.Name()) != 2:
			add(Problem{Kind: ProblemForeignFile, Path: p, Image: d, Detail: "unexpected file in image directory"})
			continue
		}
		names, err := readNames(p)
		if err != nil {
			return fmt.Errorf("objstore: %w", err)
		}
		for _, n := range names {
			if refs[e.Name()+"/"+n] != nil {
				continue
			}
			fp := filepath.Join(p, n)
			kind := ProblemUnreferenced
			if _, ok := s.parseObjectName(e.Name(), n); !ok {
				kind = ProblemForeignFile
			}
			pr := Problem{Kind: kind, Path: fp, Image: d, Detail: "not referenced by image.cfs"}
			if opts.Repair && os.Remove(fp) == nil {
				pr.Repaired = true
			}
			add(pr)
		}
	}
	return nil
}

// relink makes dst a hardlink of src, replacing dst atomically.
func (s *Store) relink(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	tmp := dst + ".fsck-tmp"
	os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
