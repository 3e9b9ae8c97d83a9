package sync

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// ObjectAdder stores regular-file content as objects of the image being
// built. objstore.Staging implements it.
type ObjectAdder interface {
	// AddObject streams exactly size bytes from r into an object and
	// returns its digest; added is false when the object already existed.
	AddObject(ctx context.Context, r io.Reader, size int64) (d verity.Digest, added bool, err error)
	// LinkObject references an object that is already stored, without its
	// content; the error wraps objstore.ErrNotFound when it is not.
	LinkObject(ctx context.Context, d verity.Digest) error
}

// InlineMax is the largest regular file kept inside the composefs image
// instead of an object, as mkcomposefs does for directory input.
const InlineMax = 64

// Whiteout markers of the OCI layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	whiteoutMeta   = ".wh..wh." // other AUFS metadata (.wh..wh.plnk etc.), ignored
)

// layerStats counts what unpacking a layer did.
type layerStats struct {
	Entries       int
	ObjectsNew    int
	ObjectsReused int
}

// readLayer reads an uncompressed layer tar from r: every regular file of
// more than InlineMax bytes streams into an object through objs, and the
// layer's changes come back as entries, in order. Nothing touches the tree:
// the caller applies the entries once the layer's digests are verified.
// The uncompressed stream is bounded by lim.MaxLayerSize and the entry
// count by lim.MaxFiles.
func readLayer(ctx context.Context, r io.Reader, objs ObjectAdder, lim Limits, progress func(layerStats)) ([]entry, layerStats, error) {
	var st layerStats
	tr := tar.NewReader(r)
	var entries []entry
	for {
		if err := ctx.Err(); err != nil {
			return nil, st, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return entries, st, nil
		}
		if err != nil {
			return nil, st, fmt.Errorf("%w: reading tar: %w", ErrBadLayer, err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if lim.MaxFiles > 0 && len(entries) >= lim.MaxFiles {
			return nil, st, fmt.Errorf("%w: layer has more than %d entries", ErrLimit, lim.MaxFiles)
		}
		e, skip, err := headerEntry(hdr, lim)
		if err != nil {
			return nil, st, err
		}
		if skip {
			continue
		}
		if e.Op == opAdd && e.Mode&erofs.ModeType == erofs.ModeReg && e.Link == "" && hdr.Size > 0 {
			if hdr.Size <= InlineMax {
				e.Content = make([]byte, hdr.Size)
				if _, err := io.ReadFull(tr, e.Content); err != nil {
					return nil, st, fmt.Errorf("%w: %q: %w", ErrBadLayer, hdr.Name, unexpected(err))
				}
			} else {
				d, added, err := objs.AddObject(ctx, tr, hdr.Size)
				if err != nil {
					var ne *netError
					if errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &ne) {
						return nil, st, fmt.Errorf("%w: %q: %w", ErrBadLayer, hdr.Name, err)
					}
					return nil, st, fmt.Errorf("%q: %w", hdr.Name, err)
				}
				e.Digest = d
				if added {
					st.ObjectsNew++
				} else {
					st.ObjectsReused++
				}
			}
		}
		entries = append(entries, e)
		st.Entries++
		if progress != nil {
			progress(st)
		}
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// headerEntry turns a tar header into an entry (without content). skip is
// true for headers that change nothing (AUFS metadata).
func headerEntry(hdr *tar.Header, lim Limits) (e entry, skip bool, err error) {
	p, err := cleanPath(hdr.Name)
	if err != nil {
		return e, false, err
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	if strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == whiteoutOpaque:
			return entry{Op: opOpaque, Path: dir}, false, nil
		case strings.HasPrefix(base, whiteoutMeta):
			return e, true, nil
		}
		name := base[len(whiteoutPrefix):]
		if name == "" || name == "." || name == ".." {
			return e, false, fmt.Errorf("%w: whiteout %q", ErrUnsafeLayer, hdr.Name)
		}
		return entry{Op: opWhiteout, Path: path.Join(dir, name)}, false, nil
	}

	e = entry{Op: opAdd, Path: p}
	if hdr.Uid < 0 || hdr.Uid > math.MaxUint32 || hdr.Gid < 0 || hdr.Gid > math.MaxUint32 {
		return e, false, fmt.Errorf("%w: %q: owner %d:%d out of range", ErrBadLayer, hdr.Name, hdr.Uid, hdr.Gid)
	}
	e.UID, e.GID = uint32(hdr.Uid), uint32(hdr.Gid)
	e.Mtime, e.Nsec = hdr.ModTime.Unix(), uint32(hdr.ModTime.Nanosecond())
	perm := uint32(hdr.Mode) & 0o7777
	if e.Xattrs, err = paxXattrs(hdr, lim); err != nil {
		return e, false, err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		if hdr.Size < 0 || (lim.MaxLayerSize > 0 && hdr.Size > lim.MaxLayerSize) {
			return e, false, fmt.Errorf("%w: %q: size %d", ErrLimit, hdr.Name, hdr.Size)
		}
		e.Mode, e.Size = erofs.ModeReg|perm, uint64(hdr.Size)
	case tar.TypeDir:
		e.Mode = erofs.ModeDir | perm
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) >= 4096 || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return e, false, fmt.Errorf("%w: %q: symlink target of %d bytes", ErrBadLayer, hdr.Name, len(hdr.Linkname))
		}
		e.Mode, e.Target, e.Size = erofs.ModeLink|0o777, hdr.Linkname, uint64(len(hdr.Linkname))
	case tar.TypeLink:
		l, err := cleanPath(hdr.Linkname)
		if err != nil {
			return e, false, fmt.Errorf("hardlink %q: %w", hdr.Name, err)
		}
		if l == "" {
			return e, false, fmt.Errorf("%w: hardlink %q to the root", ErrUnsafeLayer, hdr.Name)
		}
		if p == "" {
			return e, false, fmt.Errorf("%w: hardlink replacing the root", ErrUnsafeLayer)
		}
		e = entry{Op: opAdd, Path: p, Link: l}
	case tar.TypeChar, tar.TypeBlock:
		if hdr.Devmajor < 0 || hdr.Devmajor > math.MaxUint32 || hdr.Devminor < 0 || hdr.Devminor > math.MaxUint32 {
			return e, false, fmt.Errorf("%w: %q: device %d:%d out of range", ErrBadLayer, hdr.Name, hdr.Devmajor, hdr.Devminor)
		}
		typ := uint32(erofs.ModeChar)
		if hdr.Typeflag == tar.TypeBlock {
			typ = erofs.ModeBlock
		}
		e.Mode = typ | perm
		e.Rdev = uint32(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
	case tar.TypeFifo:
		e.Mode = erofs.ModeFifo | perm
	default:
		return e, false, fmt.Errorf("%w: %q: unsupported tar entry type %q", ErrBadLayer, hdr.Name, hdr.Typeflag)
	}
	if p == "" && hdr.Typeflag != tar.TypeDir {
		return e, false, fmt.Errorf("%w: root entry %q is not a directory", ErrUnsafeLayer, hdr.Name)
	}
	return e, false, nil
}

// PAX record keys carrying extended attributes and POSIX ACLs.
const (
	paxXattr      = "SCHILY.xattr."
	paxACLAccess  = "SCHILY.acl.access"
	paxACLDefault = "SCHILY.acl.default"
)

// paxXattrs collects a header's extended attributes, sorted by name, and
// checks them against composefs's limits. ACLs in star's text form become
// the binary system.posix_acl_* xattrs the kernel uses, unless the binary
// form is present too.
func paxXattrs(hdr *tar.Header, lim Limits) ([]erofs.Xattr, error) {
	var xs []erofs.Xattr
	seen := map[string]bool{}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok {
			continue
		}
		xs = append(xs, erofs.Xattr{Name: name, Value: []byte(v)})
		seen[name] = true
	}
	for key, name := range map[string]string{paxACLAccess: "system.posix_acl_access", paxACLDefault: "system.posix_acl_default"} {
		text, ok := hdr.PAXRecords[key]
		if !ok || seen[name] || text == "" {
			continue
		}
		b, err := aclFromText(text)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %s: %w", ErrBadLayer, hdr.Name, key, err)
		}
		xs = append(xs, erofs.Xattr{Name: name, Value: b})
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].Name < xs[j].Name })
	total := 12
	for _, x := range xs {
		if len(x.Name) == 0 || len(x.Name) > 255 || strings.IndexByte(x.Name, 0) >= 0 {
			return nil, fmt.Errorf("%w: %q: xattr name %q", ErrBadLayer, hdr.Name, x.Name)
		}
		if len(x.Value) > 65535 {
			return nil, fmt.Errorf("%w: %q: xattr %s of %d bytes", ErrLimit, hdr.Name, x.Name, len(x.Value))
		}
		total += 7 + len(x.Name) + len(x.Value)
	}
	if len(xs) > 0 && lim.MaxXattrSize > 0 && total > lim.MaxXattrSize {
		return nil, fmt.Errorf("%w: %q: %d bytes of xattrs (max %d)", ErrLimit, hdr.Name, total, lim.MaxXattrSize)
	}
	return xs, nil
}

// errBadACL is wrapped by aclFromText's errors.
var errBadACL = errors.New("malformed ACL")
