package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// storeCLI runs updatectl in-process.
func storeCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestStoreCLI(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	big := bytes.Repeat([]byte("twinroot object "), 1000)
	os.WriteFile(filepath.Join(src, "etc", "big"), big, 0o644)
	os.WriteFile(filepath.Join(src, "small"), []byte("hi"), 0o644)
	os.Symlink("etc/big", filepath.Join(src, "link"))

	if code, out, errs := storeCLI(t, "--store", store, "store", "images"); code != exitFailure || !strings.Contains(errs, "not initialised") {
		t.Errorf("images before init: %d %q %q", code, out, errs)
	}
	if code, out, errs := storeCLI(t, "--store", store, "store", "init"); code != 0 || !strings.Contains(out, store) {
		t.Fatalf("init: %d %q %q", code, out, errs)
	}
	code, out, errs := storeCLI(t, "--store", store, "store", "import", src)
	if code != 0 {
		t.Fatalf("import: %d %q", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	digest := lines[len(lines)-1]
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(digest) {
		t.Fatalf("import printed %q", out)
	}
	code, out, _ = storeCLI(t, "--store", store, "store", "images")
	if code != 0 || !strings.HasPrefix(out, digest+" 1 16000 import:") {
		t.Errorf("images: %d %q", code, out)
	}
	code, out, _ = storeCLI(t, "--store", store, "store", "images", "--json")
	var imgs []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &imgs) != nil || len(imgs) != 1 {
		t.Errorf("images --json: %d %q", code, out)
	}
	if code, out, _ := storeCLI(t, "--store", store, "store", "fsck"); code != 0 || !strings.Contains(out, "0 problems") {
		t.Errorf("fsck: %d %q", code, out)
	}
	code, out, _ = storeCLI(t, "--store", store, "store", "stats", "--json")
	var st struct{ Objects int }
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Objects != 1 {
		t.Errorf("stats --json: %d %q", code, out)
	}

	// Mounted with the image verbs (no lock held after the command exits):
	// rm is deferred, gc keeps it, after umount gc finishes it.
	imgDir := filepath.Join(store, "images", digest)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if code, _, errs := storeCLI(t, "image", "mount", "--verity", "off", filepath.Join(imgDir, "image.cfs"), imgDir, mnt); code != 0 {
		t.Fatalf("image mount: %d %q", code, errs)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}()
	if code, _, errs := storeCLI(t, "--store", store, "store", "rm", digest); code != 0 || !strings.Contains(errs, "deferred") {
		t.Errorf("rm of a mounted image: %d %q", code, errs)
	}
	if code, out, _ := storeCLI(t, "--store", store, "store", "gc"); code != 0 || !strings.Contains(out, "1 in use") {
		t.Errorf("gc with a mounted image: %d %q", code, out)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "etc", "big")); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("mounted image broken after rm+gc: %v", err)
	}
	if code, _, errs := storeCLI(t, "image", "umount", mnt); code != 0 {
		t.Fatalf("umount: %q", errs)
	}
	mounted = false
	if code, out, _ := storeCLI(t, "--store", store, "store", "gc"); code != 0 || !strings.Contains(out, "1 removals finished, 0 in use") {
		t.Errorf("gc after umount: %d %q", code, out)
	}
	if code, out, _ := storeCLI(t, "--store", store, "store", "gc", "--dry-run"); code != 0 || !strings.Contains(out, "would delete 0 objects") {
		t.Errorf("gc --dry-run: %d %q", code, out)
	}
	if code, _, _ := storeCLI(t, "--store", store, "store", "rm", digest); code != exitFailure {
		t.Errorf("rm of an absent image: %d", code)
	}

	// A corrupt object: fsck exits 3, --repair drops it.
	if code, _, errs := storeCLI(t, "--store", store, "store", "import", src); code != 0 {
		t.Fatalf("second import: %q", errs)
	}
	var obj string
	filepath.WalkDir(filepath.Join(store, "objects"), func(p string, d os.DirEntry, err error) error {
		if d.Type().IsRegular() {
			obj = p
		}
		return nil
	})
	os.Chmod(obj, 0o644)
	os.WriteFile(obj, bytes.Repeat([]byte("X"), len(big)), 0o644)
	if code, out, _ := storeCLI(t, "--store", store, "store", "fsck"); code != exitCheck || !strings.Contains(out, "corrupt-object") {
		t.Errorf("fsck of a corrupt store: %d %q", code, out)
	}
	if code, out, _ := storeCLI(t, "--store", store, "store", "fsck", "--json"); code != exitCheck || !strings.Contains(out, `"kind": "corrupt-object"`) {
		t.Errorf("fsck --json: %d %q", code, out)
	}
	if code, out, _ := storeCLI(t, "--store", store, "store", "dedup", "--containers-root", filepath.Join(dir, "nope")); code != 0 || !strings.Contains(out, "no sharing this time") {
		t.Errorf("dedup without container storage: %d %q", code, out)
	}
}

func TestStoreUsage(t *testing.T) {
	store := t.TempDir()
	if code, _, errs := storeCLI(t, "--store", store, "store", "init"); code != 0 {
		t.Fatal(errs)
	}
	tests := [][]string{
		{"store", "import"},
		{"store", "rm"},
		{"store", "gc", "extra"},
		{"store", "fsck", "--bogus"},
		{"store", "images", "x"},
	}
	for _, args := range tests {
		if code, _, _ := storeCLI(t, append([]string{"--store", store}, args...)...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code, _, errs := storeCLI(t, "--store", store, "store", "rm", "nothex"); code != exitFailure || !strings.Contains(errs, "malformed") {
		t.Errorf("rm nothex: %d %q", code, errs)
	}
}
