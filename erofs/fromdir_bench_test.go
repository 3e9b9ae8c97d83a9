package erofs

import (
	"cmp"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// benchTree is the tree BenchmarkFromDir reads: $TWINROOT_BENCH_TREE, or the
// Debian root bench/fromdir.sh caches under $TWINROOT_BENCH_CACHE (default
// /var/cache/twinroot-bench).
func benchTree(b *testing.B) string {
	dir := os.Getenv("TWINROOT_BENCH_TREE")
	if dir == "" {
		dir = filepath.Join(cmp.Or(os.Getenv("TWINROOT_BENCH_CACHE"), "/var/cache/twinroot-bench"), "debian-root")
	}
	if _, err := os.Stat(dir); err != nil {
		b.Skipf("no benchmark tree (run bench/fromdir.sh or set TWINROOT_BENCH_TREE): %v", err)
	}
	return dir
}

// BenchmarkFromDir walks the tree and digests its files (no store).
func BenchmarkFromDir(b *testing.B) {
	dir := benchTree(b)
	for b.Loop() {
		if _, err := FromDir(context.Background(), dir, FromDirOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFromDirWrite adds writing the image.
func BenchmarkFromDirWrite(b *testing.B) {
	dir := benchTree(b)
	for b.Loop() {
		root, err := FromDir(context.Background(), dir, FromDirOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := Write(io.Discard, root, WriteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
