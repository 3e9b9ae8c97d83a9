package sync

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// tf is one tar member of a test layer.
type tf struct {
	hdr  tar.Header
	data []byte
}

func reg(name string, mode int64, data []byte) tf {
	return tf{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(1700000000, 0)}, data: data}
}

func dir(name string, mode int64) tf {
	return tf{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: time.Unix(1700000000, 0)}}
}

func symlink(name, target string) tf {
	return tf{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: time.Unix(1700000000, 0)}}
}

func hardlink(name, target string) tf {
	return tf{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: time.Unix(1700000000, 0)}}
}

func whiteout(name string) tf { return reg(name, 0o644, nil) }

// tarBytes writes members into an uncompressed tar.
func tarBytes(t testing.TB, files ...tf) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := f.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// compress returns raw compressed with "gzip", "zstd" or "none".
func compress(t testing.TB, raw []byte, comp string) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch comp {
	case "gzip":
		zw := gzip.NewWriter(&buf)
		zw.Write(raw)
		zw.Close()
	case "zstd":
		zw, _ := zstd.NewWriter(&buf)
		zw.Write(raw)
		zw.Close()
	default:
		return raw
	}
	return buf.Bytes()
}

// blobLayer is a layer from fixed compressed bytes and a diff ID, so tests
// can serve exactly the bytes they want (truncated streams, lies).
type blobLayer struct {
	compressed []byte
	diffID     v1.Hash
	mt         types.MediaType
	raw        []byte // uncompressed tar, for the oracle
}

func (l *blobLayer) Digest() (v1.Hash, error) { return sha256Of(l.compressed), nil }
func (l *blobLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.compressed)), nil
}
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	if l.raw == nil {
		return nil, errors.New("blobLayer: uncompressed not available")
	}
	return io.NopCloser(bytes.NewReader(l.raw)), nil
}
func (l *blobLayer) Size() (int64, error)                { return int64(len(l.compressed)), nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mt, nil }

// layerOf makes a layer from a raw tar, compressed as comp; its diff ID is
// the tar's SHA-256 (a correct layer).
func layerOf(t testing.TB, raw []byte, comp string) v1.Layer {
	t.Helper()
	mt := map[string]types.MediaType{"gzip": types.OCILayer, "zstd": types.OCILayerZStd, "none": types.OCIUncompressedLayer}[comp]
	return &blobLayer{compressed: compress(t, raw, comp), diffID: sha256Of(raw), mt: mt, raw: raw}
}

// imageOf stacks layers into an OCI image for linux/GOARCH.
func imageOf(t testing.TB, labels map[string]string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	plat, _ := parsePlatform("")
	cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
	cf.Config.Labels = labels
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		mt, _ := l.MediaType()
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: mt}); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// writeLayout writes img as DIR with tag.
func writeLayout(t testing.TB, dir, tag string, img v1.Image) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
}

// newStore creates an object store in a temp dir.
func newStore(t testing.TB) *objstore.Store {
	t.Helper()
	s, err := objstore.Open(context.Background(), filepath.Join(t.TempDir(), "store"), objstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// memRegistry starts go-containerregistry's in-process registry, with
// wrap (if not nil) around its handler, and returns its host:port.
func memRegistry(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// push writes img to host/repo:tag over plain HTTP.
func push(t testing.TB, host, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// testOpts are the pull options every test uses: short backoff, no
// system registries.conf, no host auth files.
func testOpts(extra ...Option) []Option {
	env := func(k string) string {
		switch k {
		case "XDG_RUNTIME_DIR":
			return "/nonexistent"
		}
		return ""
	}
	return append([]Option{WithRegistriesConf("-"), WithRetry(3, 20*time.Millisecond), WithStallTimeout(2 * time.Second), WithEnv(env)}, extra...)
}

// fileInfo is what the comparison looks at for one path.
type fileInfo struct {
	Mode    uint32
	UID     uint32
	GID     uint32
	Mtime   int64
	Nsec    int64
	Rdev    uint64
	Content string
	Target  string
	Xattrs  map[string]string
}

func (f fileInfo) String() string {
	var xs []string
	for k, v := range f.Xattrs {
		xs = append(xs, fmt.Sprintf("%s=%q", k, v))
	}
	sort.Strings(xs)
	c := f.Content
	if len(c) > 40 {
		c = fmt.Sprintf("%d bytes sha %s", len(c), sha256Of([]byte(c)).Hex[:12])
	}
	return fmt.Sprintf("mode=%o uid=%d gid=%d mtime=%d.%09d rdev=%d target=%q content=%q xattrs=%v",
		f.Mode, f.UID, f.GID, f.Mtime, f.Nsec, f.Rdev, f.Target, c, xs)
}

// scanDir reads a mounted tree into path → fileInfo (root excluded).
func scanDir(t testing.TB, root string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi := fileInfo{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Mtime: st.Mtim.Sec, Nsec: st.Mtim.Nsec, Xattrs: map[string]string{}}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fi.Content = string(b)
		case unix.S_IFLNK:
			fi.Target, _ = os.Readlink(p)
		case unix.S_IFCHR, unix.S_IFBLK:
			fi.Rdev = st.Rdev
		}
		buf := make([]byte, 65536)
		n, _ := unix.Llistxattr(p, buf)
		for _, x := range strings.Split(string(buf[:n]), "\x00") {
			if x == "" {
				continue
			}
			v := make([]byte, 65536)
			m, err := unix.Lgetxattr(p, x, v)
			if err != nil {
				return fmt.Errorf("getxattr %s %s: %w", p, x, err)
			}
			fi.Xattrs[x] = string(v[:m])
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = fi
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// expectedTree reads the flattened image (go-containerregistry's
// mutate.Extract, the oracle) into path → fileInfo. Hardlinks take their
// target's content. Directories the layers never name get 0755 root.
func expectedTree(t testing.TB, img v1.Image) map[string]fileInfo {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	out := map[string]fileInfo{}
	links := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := strings.TrimPrefix(filepath.Clean(h.Name), "./")
		if p == "." || p == "" {
			continue
		}
		fi := fileInfo{UID: uint32(h.Uid), GID: uint32(h.Gid), Mtime: h.ModTime.Unix(), Nsec: int64(h.ModTime.Nanosecond()), Xattrs: map[string]string{}}
		perm := uint32(h.Mode) & 0o7777
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, paxXattr); ok {
				fi.Xattrs[x] = v
			}
		}
		switch h.Typeflag {
		case tar.TypeReg:
			fi.Mode = unix.S_IFREG | perm
			b, _ := io.ReadAll(tr)
			fi.Content = string(b)
		case tar.TypeDir:
			fi.Mode = unix.S_IFDIR | perm
		case tar.TypeSymlink:
			fi.Mode = unix.S_IFLNK | 0o777
			fi.Target = h.Linkname
		case tar.TypeChar:
			fi.Mode = unix.S_IFCHR | perm
			fi.Rdev = unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
		case tar.TypeBlock:
			fi.Mode = unix.S_IFBLK | perm
			fi.Rdev = unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
		case tar.TypeFifo:
			fi.Mode = unix.S_IFIFO | perm
		case tar.TypeLink:
			links[p] = strings.TrimPrefix(filepath.Clean(h.Linkname), "./")
			continue
		}
		out[p] = fi
	}
	for p, target := range links {
		out[p] = out[target]
	}
	// Parents the layers never named.
	for p := range out {
		for d := filepath.Dir(p); d != "."; d = filepath.Dir(d) {
			if _, ok := out[d]; !ok {
				out[d] = fileInfo{Mode: unix.S_IFDIR | 0o755, Xattrs: map[string]string{}}
			}
		}
	}
	return out
}

// diffTrees reports differences between want and got.
func diffTrees(t testing.TB, want, got map[string]fileInfo) {
	t.Helper()
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	bad := 0
	for _, p := range paths {
		w, wok := want[p]
		g, gok := got[p]
		switch {
		case !wok:
			t.Errorf("%q: unexpected in pulled image: %v", p, g)
		case !gok:
			t.Errorf("%q: missing from pulled image: want %v", p, w)
		case w.String() != g.String():
			t.Errorf("%q:\n  want %v\n  got  %v", p, w, g)
		default:
			continue
		}
		if bad++; bad > 20 {
			t.Fatal("too many differences")
		}
	}
}

// mountImage mounts a committed image and returns the mount point.
func mountImage(t testing.TB, s *objstore.Store, d verity.Digest) string {
	t.Helper()
	target := t.TempDir()
	if err := erofs.Mount(context.Background(), filepath.Join(s.ImageDir(d), "image.cfs"), s.ImageDir(d), target, erofs.MountOptions{Verity: erofs.VerityOff}); err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := erofs.Unmount(target); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return target
}

// checkUnchanged asserts the store holds no image and fsck is clean.
func checkUnchanged(t testing.TB, s *objstore.Store) {
	t.Helper()
	ctx := context.Background()
	imgs, err := s.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 0 {
		t.Errorf("store has %d images after a failed pull", len(imgs))
	}
	res, err := s.Fsck(ctx, objstore.FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Clean() {
		t.Errorf("fsck after failed pull: %+v", res.Problems)
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "tmp"))
	if len(ents) != 0 {
		t.Errorf("tmp/ not empty after failed pull: %v", ents)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
