package objstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/verity"
)

// ImageInfo describes a committed image.
type ImageInfo struct {
	Digest  verity.Digest `json:"digest"`
	Objects int           `json:"objects"` // objects in its directory
	Bytes   int64         `json:"bytes"`   // their total size
	Meta    ImageMeta     `json:"meta"`
}

// Images lists the committed images, sorted by commit time.
func (s *Store) Images(ctx context.Context) ([]ImageInfo, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, dirImages))
	if err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	var out []ImageInfo
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, ok := s.parseImageName(e.Name())
		if !ok || !e.IsDir() {
			continue
		}
		info, err := s.Image(ctx, d)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Meta.Created.Before(out[j].Meta.Created) })
	return out, nil
}

// Image describes image d.
func (s *Store) Image(ctx context.Context, d verity.Digest) (ImageInfo, error) {
	dir := s.ImageDir(d)
	info := ImageInfo{Digest: d}
	b, err := os.ReadFile(filepath.Join(dir, fileMeta))
	if errors.Is(err, fs.ErrNotExist) {
		return info, fmt.Errorf("objstore: image %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return info, fmt.Errorf("objstore: image %s: %w", d, err)
	}
	if err := json.Unmarshal(b, &info.Meta); err != nil {
		return info, fmt.Errorf("objstore: image %s: %w: meta.json: %v", d, ErrCorrupt, err)
	}
	err = s.eachImageObject(dir, func(_ verity.Digest, _ string, st *unix.Stat_t) error {
		info.Objects++
		info.Bytes += st.Size
		return nil
	})
	if err != nil {
		return info, fmt.Errorf("objstore: image %s: %w", d, err)
	}
	return info, ctx.Err()
}

// eachImageObject calls fn for each digest-named file of an image
// directory (fan-out subdirectories only).
func (s *Store) eachImageObject(dir string, fn func(d verity.Digest, path string, st *unix.Stat_t) error) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() || len(e.Name()) != 2 {
			continue
		}
		sub := filepath.Join(dir, e.Name())
		f, err := os.Open(sub)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		for _, n := range names {
			d, ok := s.parseObjectName(e.Name(), n)
			if !ok {
				continue
			}
			p := filepath.Join(sub, n)
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				continue
			}
			if err := fn(d, p, &st); err != nil {
				return err
			}
		}
	}
	return nil
}

// Stats summarises the store's contents.
type Stats struct {
	Objects int   `json:"objects"` // files in objects/
	Bytes   int64 `json:"bytes"`   // their total size
	// SharedBytes is the size of objects that container storage (or any
	// other link outside the store) also links.
	SharedBytes   int64 `json:"shared_bytes"`
	SharedObjects int   `json:"shared_objects"`
	// GarbageObjects/GarbageBytes: objects no image references (gc deletes them).
	GarbageObjects int   `json:"garbage_objects"`
	GarbageBytes   int64 `json:"garbage_bytes"`
	// Images lists each image with the bytes only it references.
	Images []ImageStats `json:"images"`
}

// ImageStats is one image's part of Stats.
type ImageStats struct {
	Digest      verity.Digest `json:"digest"`
	Objects     int           `json:"objects"`
	Bytes       int64         `json:"bytes"`
	UniqueBytes int64         `json:"unique_bytes"` // freed if this image alone were removed
}

type inodeKey struct{ dev, ino uint64 }

// Stats walks objects/ and images/ and returns counts and sizes.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	type obj struct {
		nlink  uint64
		size   int64
		images int
		last   int // index of the last image that links it
	}
	objs := map[inodeKey]*obj{}
	objDir := filepath.Join(s.root, dirObjects)
	err := s.eachImageObject(objDir, func(_ verity.Digest, _ string, sb *unix.Stat_t) error {
		objs[inodeKey{sb.Dev, sb.Ino}] = &obj{nlink: uint64(sb.Nlink), size: sb.Size, last: -1}
		st.Objects++
		st.Bytes += sb.Size
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("objstore: %w", err)
	}
	ents, err := os.ReadDir(filepath.Join(s.root, dirImages))
	if err != nil {
		return st, fmt.Errorf("objstore: %w", err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		d, ok := s.parseImageName(e.Name())
		if !ok {
			continue
		}
		idx := len(st.Images)
		is := ImageStats{Digest: d}
		_ = s.eachImageObject(s.ImageDir(d), func(_ verity.Digest, _ string, sb *unix.Stat_t) error {
			is.Objects++
			is.Bytes += sb.Size
			if o := objs[inodeKey{sb.Dev, sb.Ino}]; o != nil && o.last != idx {
				o.images++
				o.last = idx
			}
			return nil
		})
		st.Images = append(st.Images, is)
	}
	for _, o := range objs {
		extra := int64(o.nlink) - 1 - int64(o.images)
		if extra > 0 {
			st.SharedObjects++
			st.SharedBytes += o.size
		}
		if o.nlink == 1 {
			st.GarbageObjects++
			st.GarbageBytes += o.size
		}
		if o.images == 1 && extra <= 0 {
			st.Images[o.last].UniqueBytes += o.size
		}
	}
	return st, nil
}
