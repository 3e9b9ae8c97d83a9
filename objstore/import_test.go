package objstore

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/twinroot/twinroot/verity"
)

// The import cache file round-trips, and every damaged or foreign file is
// rejected (never a wrong digest for a key).
func TestImportCacheEncoding(t *testing.T) {
	c := importCache{
		{dev: 1, ino: 2, size: 3, mtime: 4, mnsec: 5, ctime: 6, cnsec: 7}:           verity.DigestBytes([]byte("a"), verity.SHA256),
		{dev: 1, ino: 9, size: -1, mtime: -4, mnsec: 999999999, ctime: 0, cnsec: 0}: verity.DigestBytes([]byte("b"), verity.SHA256),
	}
	good := encodeImportCache(verity.SHA256, c)
	got, err := decodeImportCache(verity.SHA256, good)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(c) {
		t.Fatalf("decoded %d entries, want %d", len(got), len(c))
	}
	for k, d := range c {
		if got[k] != d {
			t.Errorf("key %+v: %v, want %v", k, got[k], d)
		}
	}
	if e, err := decodeImportCache(verity.SHA256, encodeImportCache(verity.SHA256, importCache{})); err != nil || len(e) != 0 {
		t.Errorf("empty cache: %v, %d entries", err, len(e))
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
