package objstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// xattrStrings is xs as comparable strings (nil and empty alike).
func xattrStrings(xs []erofs.Xattr) []string {
	var out []string
	for _, x := range xs {
		out = append(out, x.Name+"="+string(x.Value))
	}
	return out
}

// The import cache file round-trips, and every damaged or foreign file is
// rejected (never a wrong digest for a key).
func TestImportCacheEncoding(t *testing.T) {
	c := importCache{
		{dev: 1, ino: 2, size: 3, mtime: 4, mnsec: 5, ctime: 6, cnsec: 7}: {digest: verity.DigestBytes([]byte("a"), verity.SHA256)},
		{dev: 1, ino: 9, size: -1, mtime: -4, mnsec: 999999999, ctime: 0, cnsec: 0}: {digest: verity.DigestBytes([]byte("b"), verity.SHA256),
			xattrs: []erofs.Xattr{{Name: "security.selinux", Value: []byte("system_u:object_r:bin_t:s0\x00")}, {Name: "user.empty"}}},
	}
	good := encodeImportCache(verity.SHA256, c)
	got, err := decodeImportCache(verity.SHA256, good)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(c) {
		t.Fatalf("decoded %d entries, want %d", len(got), len(c))
	}
	for k, e := range c {
		if got[k].digest != e.digest || !reflect.DeepEqual(xattrStrings(got[k].xattrs), xattrStrings(e.xattrs)) {
			t.Errorf("key %+v: %+v, want %+v", k, got[k], e)
		}
	}
	if e, err := decodeImportCache(verity.SHA256, encodeImportCache(verity.SHA256, importCache{})); err != nil || len(e) != 0 {
		t.Errorf("empty cache: %v, %d entries", err, len(e))
	}
	// resum damages a copy of good with f, then fixes its checksum, so
	// that only the parser can notice.
	resum := func(f func([]byte)) []byte {
		b := append([]byte(nil), good[:len(good)-sha256.Size]...)
		f(b)
		sum := sha256.Sum256(b)
		return append(b, sum[:]...)
	}
	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 1
		return b
	}
	for _, tc := range []struct {
		name string
		alg  verity.Algorithm
		b    []byte
	}{
		{"empty file", verity.SHA256, nil},
		{"old JSON format", verity.SHA256, []byte(`{"1:2:3:4.5:6.7":"00"}`)},
		{"torn", verity.SHA256, good[:len(good)-40]},
		{"version 1", verity.SHA256, append([]byte("twinroot-import-cache-1\n"), good[len(importCacheMagic):]...)},
		{"record count too high", verity.SHA256, resum(func(b []byte) { b[len(importCacheMagic)+1]++ })},
		{"xattr length past the end", verity.SHA256, resum(func(b []byte) {
			i := strings.Index(string(b), "security.selinux")
			b[i-2] = 0xff
		})},
		{"flipped magic", verity.SHA256, flip(0)},
		{"flipped record", verity.SHA256, flip(len(importCacheMagic) + 9 + 3)},
		{"flipped checksum", verity.SHA256, flip(len(good) - 1)},
		{"other algorithm", verity.SHA512, good},
	} {
		if _, err := decodeImportCache(tc.alg, tc.b); !errors.Is(err, errBadImportCache) {
			t.Errorf("%s: %v, want errBadImportCache", tc.name, err)
		}
	}
	// Through the files: written, read back; a damaged file reads as empty.
	p := filepath.Join(t.TempDir(), "x.cache")
	if err := writeImportCache(p, verity.SHA256, c); err != nil {
		t.Fatal(err)
	}
	if got := loadImportCache(p, verity.SHA256); len(got) != len(c) {
		t.Errorf("loaded %d entries, want %d", len(got), len(c))
	}
	if got := loadImportCache(p, verity.SHA512); len(got) != 0 {
		t.Errorf("loaded %d entries for another algorithm", len(got))
	}
}

// FuzzImportCache: any bytes either decode into a cache that encodes back
// to the same bytes, or are rejected; never a panic.
func FuzzImportCache(f *testing.F) {
	f.Add(encodeImportCache(verity.SHA256, importCache{
		{dev: 1, ino: 2}: {digest: verity.DigestBytes([]byte("a"), verity.SHA256), xattrs: []erofs.Xattr{{Name: "user.a", Value: []byte("v")}}},
	}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeImportCache(verity.SHA256, b)
		if err != nil {
			return
		}
		if _, err := decodeImportCache(verity.SHA256, encodeImportCache(verity.SHA256, c)); err != nil {
			t.Fatalf("re-encoded cache does not decode: %v", err)
		}
	})
}

// A process short of file descriptors still imports: a staging keeps up
// to 512 directory descriptors open only when the limit is high, and
// places objects by whole paths otherwise (or when opening one fails with
// EMFILE).
func TestImportOutOfDescriptors(t *testing.T) {
	s := newTestStore(t, Options{})
	files := map[string][]byte{}
	for i := range 600 {
		files[fmt.Sprintf("d%d/f%03d", i%7, i)] = content(uint64(5000+i), 100+i)
	}
	src := t.TempDir()
	writeTree(t, src, files)
	first := importDir(t, s, src) // every object new
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(open) + 40) // room for the walk and a few fan-outs
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	// A new file, so that the image differs, and a new store state: the
	// cached files are linked through objects/, most by whole paths.
	if err := os.WriteFile(filepath.Join(src, "new"), content(9, 3000), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := s.ImportDir(context.Background(), src, ImportOptions{Workers: 2})
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	if err != nil {
		t.Fatalf("import with %d descriptors: %v", low.Cur, err)
	}
	if res.Added != 1 || res.Digest == first.Digest {
		t.Errorf("added %d, digest equal %v", res.Added, res.Digest == first.Digest)
	}
	mustFsckClean(t, s)
}
