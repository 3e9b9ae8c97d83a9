package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// TestStoreRmRooted: rm of an image a deployment keeps fails, naming the
// deployment, and leaves the image in place; gc keeps it too.
func TestStoreRmRooted(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte(strings.Repeat("rooted ", 100)), 0o644)
	if code, _, errs := storeCLI(t, "--store", store, "store", "init"); code != 0 {
		t.Fatal(errs)
	}
	code, out, errs := storeCLI(t, "--store", store, "store", "import", src)
	if code != 0 {
		t.Fatal(errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	hex := lines[len(lines)-1]
	d, err := verity.ParseDigest(hex)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := objstore.Open(ctx, store, objstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddRoot(ctx, "deploy-0123456789ab.0", d); err != nil {
		t.Fatal(err)
	}
	s.Close()
	code, _, errs = storeCLI(t, "--store", store, "store", "rm", hex)
	if code != exitFailure || !strings.Contains(errs, "kept by deployment 0123456789ab.0") {
		t.Errorf("rm of a deployed image: %d %q", code, errs)
	}
	if code, _, errs := storeCLI(t, "--store", store, "store", "gc"); code != 0 {
		t.Fatal(errs)
	}
	if _, err := os.Stat(filepath.Join(store, "images", hex, "image.cfs")); err != nil {
		t.Errorf("deployed image gone: %v", err)
	}
}
