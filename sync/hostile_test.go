package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// patchSize rewrites the size field of the first header named name in a
// raw tar (and its checksum): a header that lies about its data.
func patchSize(t testing.TB, raw []byte, name string, size int64) []byte {
	t.Helper()
	out := bytes.Clone(raw)
	for off := 0; off+512 <= len(out); off += 512 {
		blk := out[off : off+512]
		if string(bytes.TrimRight(blk[:100], "\x00")) != name {
			continue
		}
		copy(blk[124:136], fmt.Sprintf("%011o\x00", size))
		copy(blk[148:156], "        ")
		sum := 0
		for _, b := range blk {
			sum += int(b)
		}
		copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
		return out
	}
	t.Fatalf("no header %q", name)
	return nil
}

func TestHostileLayers(t *testing.T) {
	base := []tf{dir("etc/", 0o755), reg("etc/passwd", 0o644, []byte(strings.Repeat("root:x:0:0\n", 10)))}
	withBase := func(fs ...tf) []byte { return tarBytes(t, append(append([]tf{}, base...), fs...)...) }
	xattr := reg("etc/x", 0o644, []byte("x"))
	xattr.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.big": strings.Repeat("v", 40000)}
	badACL := reg("etc/acl", 0o644, []byte("x"))
	badACL.hdr.PAXRecords = map[string]string{"SCHILY.acl.access": "user:alice:rw-,group::r--"}
	manyFiles := []tf{}
	for i := range 60 {
		manyFiles = append(manyFiles, reg("f"+strconv.Itoa(i), 0o644, []byte("x")))
	}
	bomb := tarBytes(t, reg("zeros", 0o644, make([]byte, 4<<20)))
	var bombParts []tf
	for i := range 8 {
		bombParts = append(bombParts, reg("zeros"+strconv.Itoa(i), 0o644, make([]byte, 512<<10)))
	}
	bombMany := tarBytes(t, bombParts...)
	gz := compress(t, withBase(reg("etc/data", 0o644, randBytes(100000))), "gzip")
	zs := compress(t, withBase(reg("etc/data", 0o644, randBytes(100000))), "zstd")
	longData := withBase(reg("etc/lie", 0o644, randBytes(1000)))
	// A PAX path record with a NUL byte (a ustar name cannot hold one).
	nul := withBase(reg("etc/a\u00e9", 0o644, []byte("x")))
	if i := bytes.Index(nul, []byte("path=etc/a\xc3\xa9")); i >= 0 {
		copy(nul[i+len("path=etc/a"):], "\x00b")
	} else {
		t.Fatal("no PAX path record")
	}

	cases := []struct {
		name   string
		layers []v1.Layer
		lim    Limits
		want   error
	}{
		{"dotdot", []v1.Layer{layerOf(t, withBase(reg("../escape", 0o644, []byte("x"))), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"dotdot-inner", []v1.Layer{layerOf(t, withBase(reg("etc/../../escape", 0o644, []byte("x"))), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"absolute", []v1.Layer{layerOf(t, withBase(reg("/etc/shadow", 0o644, []byte("x"))), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"hardlink-missing", []v1.Layer{layerOf(t, withBase(hardlink("etc/l", "etc/nothere")), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"hardlink-escape", []v1.Layer{layerOf(t, withBase(hardlink("etc/l", "../../etc/passwd")), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"hardlink-absolute", []v1.Layer{layerOf(t, withBase(hardlink("etc/l", "/etc/passwd")), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"hardlink-dir", []v1.Layer{layerOf(t, withBase(hardlink("l", "etc")), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"whiteout-dotdot", []v1.Layer{layerOf(t, withBase(whiteout("etc/.wh...")), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"whiteout-dotdot-path", []v1.Layer{layerOf(t, withBase(whiteout("../.wh.etc")), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"through-symlink", []v1.Layer{layerOf(t, withBase(symlink("link", "/etc"), reg("link/shadow", 0o644, []byte("x"))), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"file-over-root", []v1.Layer{layerOf(t, withBase(reg(".", 0o644, nil)), "gzip")}, Limits{}, ErrUnsafeLayer},
		{"nul-in-name", []v1.Layer{layerOf(t, nul, "gzip")}, Limits{}, ErrBadLayer},
		{"truncated-gzip", []v1.Layer{&blobLayer{compressed: gz[:len(gz)/2], diffID: sha256Of(withBase()), mt: types.OCILayer}}, Limits{}, ErrBadLayer},
		{"truncated-zstd", []v1.Layer{&blobLayer{compressed: zs[:len(zs)/2], diffID: sha256Of(withBase()), mt: types.OCILayerZStd}}, Limits{}, ErrBadLayer},
		{"size-lie-bigger", []v1.Layer{layerOf(t, patchSize(t, longData, "etc/lie", 1<<20), "gzip")}, Limits{}, ErrBadLayer},
		{"size-lie-smaller", []v1.Layer{layerOf(t, patchSize(t, longData, "etc/lie", 10), "gzip")}, Limits{}, ErrBadLayer},
		{"diffid-mismatch", []v1.Layer{&blobLayer{compressed: compress(t, withBase(), "gzip"), diffID: sha256Of([]byte("other")), mt: types.OCILayer}}, Limits{}, ErrDigestMismatch},
		{"bomb", []v1.Layer{layerOf(t, bomb, "gzip")}, Limits{MaxLayerSize: 1 << 20}, ErrLimit},
		{"bomb-streamed", []v1.Layer{layerOf(t, bombMany, "zstd")}, Limits{MaxLayerSize: 1 << 20}, ErrLimit},
		{"too-many-files", []v1.Layer{layerOf(t, tarBytes(t, manyFiles...), "zstd")}, Limits{MaxFiles: 50}, ErrLimit},
		{"xattr-too-big", []v1.Layer{layerOf(t, withBase(xattr), "gzip")}, Limits{}, ErrLimit},
		{"acl-unresolvable-name", []v1.Layer{layerOf(t, withBase(badACL), "gzip")}, Limits{}, ErrBadLayer},
		{"manifest-too-large", []v1.Layer{layerOf(t, withBase(), "gzip")}, Limits{MaxManifestSize: 200}, ErrLimit},
		{"not-a-tar", []v1.Layer{layerOf(t, []byte(strings.Repeat("garbage!", 200)), "gzip")}, Limits{}, ErrBadLayer},
		{"second-layer-bad", []v1.Layer{layerOf(t, withBase(), "gzip"), layerOf(t, withBase(reg("../x", 0o644, nil)), "zstd")}, Limits{}, ErrUnsafeLayer},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "oci")
			writeLayout(t, dir, "bad", imageOf(t, nil, tc.layers...))
			s := newStore(t)
			_, err := Pull(context.Background(), s, "oci:"+dir+":bad", testOpts(WithLimits(tc.lim))...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			t.Logf("error: %v", err)
			checkUnchanged(t, s)
		})
	}
}

// TestHostileRegistry covers a registry that serves tampered blobs, fails
// with 500s, cuts connections and stalls mid-layer.
func TestHostileRegistry(t *testing.T) {
	raw := tarBytes(t, dir("etc/", 0o755), reg("etc/data", 0o644, randBytes(300000)))
	layer := layerOf(t, raw, "gzip")
	img := imageOf(t, nil, layer)
	ld, _ := layer.Digest()
	blobPath := "/blobs/" + ld.String()

	// failing wraps the registry: mode decides what happens to the layer
	// blob on request n (1-based).
	type mode func(n int64, w http.ResponseWriter, r *http.Request, next http.Handler) bool
	cut := func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := &captureWriter{header: http.Header{}}
		next.ServeHTTP(rec, r)
		b := rec.buf.Bytes()
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(rec.code)
		w.Write(b[:len(b)/3])
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}
	cases := []struct {
		name   string
		mode   mode
		want   error // nil: the pull succeeds (after retries)
		tries  int64 // blob requests expected (0: don't check)
		ranged int64 // of which Range requests (resumed transfers)
	}{
		{"tampered", func(n int64, w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			rec := &captureWriter{header: http.Header{}}
			next.ServeHTTP(rec, r)
			b := rec.buf.Bytes()
			b[len(b)/2] ^= 0xff
			w.WriteHeader(rec.code)
			w.Write(b)
			return true
		}, ErrDigestMismatch, 1, 0},
		{"500-then-ok", func(n int64, w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if n <= 2 {
				http.Error(w, "boom", http.StatusInternalServerError)
				return true
			}
			return false
		}, nil, 3, 0},
		{"always-500", func(n int64, w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			http.Error(w, "boom", http.StatusInternalServerError)
			return true
		}, ErrFetch, 4, 0},
		{"cut-mid-body", func(n int64, w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if n > 1 {
				return false
			}
			cut(w, r, next)
			return true
		}, nil, 2, 1},
		{"cut-every-time", func(n int64, w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			cut(w, r, next)
			return true
		}, ErrFetch, 4, 3},
		{"stall-mid-body", func(n int64, w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if n > 1 {
				return false
			}
			rec := &captureWriter{header: http.Header{}}
			next.ServeHTTP(rec, r)
			b := rec.buf.Bytes()
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.WriteHeader(http.StatusOK)
			w.Write(b[:len(b)/3])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return true
		}, nil, 2, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var blobGets, ranged atomic.Int64
			host := memRegistry(t, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, blobPath) {
						if r.Header.Get("Range") != "" {
							ranged.Add(1)
						}
						if tc.mode(blobGets.Add(1), w, r, next) {
							return
						}
					}
					next.ServeHTTP(w, r)
				})
			})
			push(t, host, "os/h:1", img)
			blobGets.Store(0)
			s := newStore(t)
			_, err := Pull(context.Background(), s, host+"/os/h:1",
				testOpts(WithInsecureRegistries(host), WithStallTimeout(300*time.Millisecond))...)
			if tc.want == nil && err != nil {
				t.Fatalf("pull: %v", err)
			}
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				t.Logf("error: %v", err)
				checkUnchanged(t, s)
			}
			if tc.tries > 0 && blobGets.Load() != tc.tries {
				t.Errorf("%d blob requests, want %d", blobGets.Load(), tc.tries)
			}
			if ranged.Load() != tc.ranged {
				t.Errorf("%d resumed (Range) requests, want %d", ranged.Load(), tc.ranged)
			}
		})
	}
}

// captureWriter records a response.
type captureWriter struct {
	header http.Header
	buf    bytes.Buffer
	code   int
}

func (c *captureWriter) Header() http.Header { return c.header }
func (c *captureWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	return c.buf.Write(b)
}
func (c *captureWriter) WriteHeader(code int) { c.code = code }

func TestForeignLayerRejected(t *testing.T) {
	layer := layerOf(t, tarBytes(t, reg("a", 0o644, []byte("a"))), "gzip")
	img := imageOf(t, nil)
	img, err := mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer, URLs: []string{"https://example.com/blob"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "oci")
	writeLayout(t, dir, "f", img)
	s := newStore(t)
	_, err = Pull(context.Background(), s, "oci:"+dir+":f", testOpts()...)
	if !errors.Is(err, ErrBadManifest) || !strings.Contains(err.Error(), "foreign URLs") {
		t.Fatalf("got %v", err)
	}
	checkUnchanged(t, s)
}

func TestInsecureRefused(t *testing.T) {
	host := memRegistry(t, nil)
	push(t, host, "os/x:1", imageOf(t, nil, layerOf(t, tarBytes(t, reg("a", 0o644, []byte("a"))), "gzip")))
	s := newStore(t)
	_, err := Pull(context.Background(), s, host+"/os/x:1", testOpts()...)
	if !errors.Is(err, ErrInsecure) {
		t.Fatalf("got %v, want ErrInsecure", err)
	}
	checkUnchanged(t, s)
}

func TestNoSpace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	writeLayout(t, dir, "x", imageOf(t, nil, layerOf(t, tarBytes(t, reg("a", 0o644, randBytes(1<<20))), "gzip")))
	s := newStore(t)
	var seen Space
	_, err := Pull(context.Background(), s, "oci:"+dir+":x", testOpts(WithSpaceCheck(func(sp Space) error {
		seen = sp
		sp.Free = 1 << 20 // pretend the disk is nearly full
		return CheckSpace(sp)
	}))...)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("got %v, want ErrNoSpace", err)
	}
	t.Logf("error: %v", err)
	if seen.Fetch < 1<<20 || seen.Free <= 0 || seen.Dir != s.Root() {
		t.Errorf("space: %+v", seen)
	}
	checkUnchanged(t, s)
}

func TestRegistryManifestTooLarge(t *testing.T) {
	host := memRegistry(t, nil)
	img := imageOf(t, nil, layerOf(t, tarBytes(t, reg("a", 0o644, []byte("a"))), "gzip"))
	push(t, host, "os/big:1", img)
	raw, _ := img.RawManifest()
	s := newStore(t)
	_, err := Pull(context.Background(), s, host+"/os/big:1",
		testOpts(WithInsecureRegistries(host), WithLimits(Limits{MaxManifestSize: int64(len(raw) - 1)}))...)
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("got %v, want ErrLimit", err)
	}
	checkUnchanged(t, s)
	cfg, _ := img.RawConfigFile()
	if _, err := Pull(context.Background(), s, host+"/os/big:1",
		testOpts(WithInsecureRegistries(host), WithLimits(Limits{MaxManifestSize: int64(max(len(raw), len(cfg)))}))...); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
}
