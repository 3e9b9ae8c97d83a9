package sync

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ociBlobs reads the files of an OCI image layout: a directory or a tar
// archive of one.
type ociBlobs interface {
	open(name string) (io.ReadCloser, error)
}

// ociFetcher serves an OCI image layout (image-spec image-layout.md).
// Layout contents are as untrusted as a registry's: the resolver checks
// every digest, and blob names are built only from validated digests.
type ociFetcher struct {
	name  string
	files ociBlobs
}

func (f *ociFetcher) String() string { return f.name }

func blobName(d v1.Hash) (string, error) {
	h, err := v1.NewHash(d.String()) // validates algorithm and hex
	if err != nil || h.Algorithm != "sha256" {
		return "", fmt.Errorf("%w: blob digest %q", ErrBadManifest, d)
	}
	return "blobs/sha256/" + h.Hex, nil
}

func (f *ociFetcher) manifest(ctx context.Context, ref string, max int64) ([]byte, error) {
	d, err := v1.NewHash(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %q is not a digest", ErrBadReference, f.name, ref)
	}
	rc, err := f.blob(ctx, d, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := readLimited(rc, max, "manifest "+ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.name, err)
	}
	return b, nil
}

func (f *ociFetcher) blob(ctx context.Context, d v1.Hash, size int64) (io.ReadCloser, error) {
	n, err := blobName(d)
	if err != nil {
		return nil, err
	}
	rc, err := f.files.open(n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.name, err)
	}
	return rc, nil
}

// resolveOCI picks the image from a layout's index.json: by tag (the
// org.opencontainers.image.ref.name annotation) when one is given, the only
// entry when there is one, else by platform.
func resolveOCI(ctx context.Context, f *ociFetcher, tag, source string, want v1.Platform, lim Limits) (*image, error) {
	rc, err := f.files.open("index.json")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.name, err)
	}
	raw, err := readLimited(rc, lim.MaxManifestSize, "index.json")
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.name, err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: index.json: %w", ErrBadManifest, f.name, err)
	}
	var pick []v1.Descriptor
	for _, d := range idx.Manifests {
		if tag == "" || d.Annotations["org.opencontainers.image.ref.name"] == tag {
			pick = append(pick, d)
		}
	}
	switch {
	case len(pick) == 0 && tag != "":
		return nil, fmt.Errorf("%w: %s has no image tagged %q", ErrNotFound, f.name, tag)
	case len(pick) == 0:
		return nil, fmt.Errorf("%w: %s has no images", ErrNotFound, f.name)
	case len(pick) > 1:
		d, err := choosePlatform(&v1.IndexManifest{Manifests: pick}, want)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		pick = []v1.Descriptor{d}
	}
	d := pick[0]
	if d.Size > lim.MaxManifestSize {
		return nil, fmt.Errorf("%w: manifest %s of %d bytes", ErrLimit, d.Digest, d.Size)
	}
	m, err := f.manifest(ctx, d.Digest.String(), lim.MaxManifestSize)
	if err != nil {
		return nil, err
	}
	if err := checkDigest("manifest", m, d.Digest, d.Size); err != nil {
		return nil, err
	}
	img, err := resolveRaw(ctx, f, m, source, want, lim)
	if err != nil {
		return nil, err
	}
	img.setTop(m)
	return img, nil
}

// dirBlobs reads a layout directory. Names come from blobName, never from
// the layout's contents, and symlinks are not followed out of it.
type dirBlobs struct{ root *os.Root }

func (d dirBlobs) open(name string) (io.ReadCloser, error) {
	f, err := d.root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return f, err
}

// tarBlobs reads an oci-archive: a tar of a layout directory, indexed once
// so that blobs are read in place.
type tarBlobs struct {
	f     *os.File
	files map[string][2]int64 // name → offset, size
}

func openTarBlobs(file string) (*tarBlobs, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	t := &tarBlobs{f: f, files: map[string][2]int64{}}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return t, nil
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: %w", ErrBadManifest, file, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		// The tar reader reads headers block by block without buffering
		// ahead, so the file offset now is where the member's data starts.
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			f.Close()
			return nil, err
		}
		t.files[path.Clean(strings.TrimPrefix(hdr.Name, "./"))] = [2]int64{off, hdr.Size}
	}
}

func (t *tarBlobs) open(name string) (io.ReadCloser, error) {
	loc, ok := t.files[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return io.NopCloser(io.NewSectionReader(t.f, loc[0], loc[1])), nil
}

// splitTag splits "PATH[:tag]"; a tag holds no slash.
func splitTag(s string) (string, string) {
	if i := strings.LastIndexByte(s, ':'); i >= 0 && !strings.Contains(s[i+1:], "/") {
		return s[:i], s[i+1:]
	}
	return s, ""
}

// openOCIDir opens "oci:DIR[:tag]".
func openOCIDir(spec string) (*ociFetcher, string, func(), error) {
	dir, tag := splitTag(spec)
	root, err := os.OpenRoot(filepath.Clean(dir))
	if err != nil {
		return nil, "", nil, fmt.Errorf("%w: oci:%s: %w", ErrBadReference, dir, err)
	}
	return &ociFetcher{name: "oci:" + dir, files: dirBlobs{root}}, tag, func() { root.Close() }, nil
}

// openOCIArchive opens "oci-archive:FILE[:tag]".
func openOCIArchive(spec string) (*ociFetcher, string, func(), error) {
	file, tag := splitTag(spec)
	t, err := openTarBlobs(file)
	if err != nil {
		return nil, "", nil, fmt.Errorf("oci-archive:%s: %w", file, err)
	}
	return &ociFetcher{name: "oci-archive:" + file, files: t}, tag, func() { t.f.Close() }, nil
}
