package boot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"unicode/utf16"

	"github.com/twinroot/twinroot/verity"
)

// testImage is an image file system with a kernel, an initramfs, an
// os-release and kargs.
func testImage(kernel, initrd string) fstest.MapFS {
	return fstest.MapFS{
		"usr/lib/modules/6.12.0-1-amd64/vmlinuz":       {Data: []byte(kernel)},
		"usr/lib/modules/6.12.0-1-amd64/initramfs.img": {Data: []byte(initrd)},
		"usr/lib/os-release":                           {Data: []byte("NAME=\"Debian GNU/Linux\"\nVERSION=\"13 (trixie)\"\nVERSION_ID=\"13\"\n")},
		"usr/lib/bootc/kargs.d/10-console.toml":        {Data: []byte("kargs = [\"console=ttyS0\"]\n")},
		"usr/lib/bootc/kargs.d/20-arm.toml":            {Data: []byte("kargs = [\"arm-only\"]\nmatch-architectures = [\"aarch64\"]\n")},
	}
}

func digestOf(_ testing.TB, b byte) verity.Digest {
	d, err := verity.NewDigest(verity.SHA256, bytes.Repeat([]byte{b}, 32))
	if err != nil {
		panic(err)
	}
	return d
}

func openScratch(t testing.TB, opts Options) *Partition {
	t.Helper()
	opts.AllowUnmounted = true
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	p, err := Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// deployment installs img's kernel and returns a Deployment for it.
func deployment(t testing.TB, p *Partition, id string, d verity.Digest, img fs.FS, version string) Deployment {
	t.Helper()
	ctx := context.Background()
	k, err := FindKernel(img)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := p.InstallKernel(ctx, img, k)
	if err != nil {
		t.Fatal(err)
	}
	osr, err := ReadOSRelease(img)
	if err != nil {
		t.Fatal(err)
	}
	kargs, err := ImageKargs(img, "x86_64")
	if err != nil {
		t.Fatal(err)
	}
	return Deployment{ID: id, Image: d, OSRelease: osr, Version: version, Kernel: inst,
		Root: "UUID=0f3c", ImageKargs: kargs, Kargs: []string{"quiet"}}
}

func entryFiles(t testing.TB, p *Partition) []string {
	t.Helper()
	es, err := p.Entries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.File)
	}
	return out
}

func wantFiles(t testing.TB, p *Partition, want ...string) {
	t.Helper()
	if got := entryFiles(t, p); !reflect.DeepEqual(got, want) {
		t.Fatalf("entries (boot order) %q, want %q", got, want)
	}
	// Only the set's files and its set file are in loader/entries.
	des, err := os.ReadDir(filepath.Join(p.Dir(), "loader/entries"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	if len(names) != len(want)+1 {
		t.Fatalf("loader/entries holds %q", names)
	}
}

// setEFIVar writes an efivarfs-style LoaderBootCountPath.
func setEFIVar(t testing.TB, dir, value string) {
	b := []byte{7, 0, 0, 0}
	for _, c := range utf16.Encode([]rune(value + "\x00")) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	if err := os.WriteFile(filepath.Join(dir, BootCountVar), b, 0o644); err != nil {
		panic(err)
	}
}

// sdBootTry does to the first entry what systemd-boot does when it boots
// an entry with a counter: +L-D becomes +(L-1)-(D+1). It returns the new
// file name.
func sdBootTry(t testing.TB, p *Partition) string {
	t.Helper()
	es, err := p.Entries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e := es[0]
	if !e.Name.Counted || e.Name.Left == 0 {
		return e.File
	}
	n := e.Name
	n.Left--
	n.Done++
	dir := filepath.Join(p.Dir(), "loader/entries")
	if err := os.Rename(filepath.Join(dir, e.File), filepath.Join(dir, n.String())); err != nil {
		t.Fatal(err)
	}
	return n.String()
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	efivars := t.TempDir()
	p := openScratch(t, Options{EFIVarsDir: efivars})
	imgA := testImage("kernel A", "initrd A")
	imgB := testImage("kernel B", "initrd A") // same initramfs content
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), imgA, "1.0")
	b := deployment(t, p, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), imgB, "2.0")
	if a.Kernel.Initrd != b.Kernel.Initrd || a.Kernel.Linux == b.Kernel.Linux {
		t.Fatalf("kernels %+v and %+v: the same initramfs content must be one file", a.Kernel, b.Kernel)
	}
	if files, _ := os.ReadDir(filepath.Join(p.Dir(), "twinroot")); len(files) != 3 {
		t.Fatalf("twinroot/ holds %d files, want 2 kernels and 1 initramfs", len(files))
	}

	// First install: one entry, counted.
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0+3.conf")
	data, err := os.ReadFile(filepath.Join(p.Dir(), "loader/entries/twinroot1_aaaaaaaaaaaa.0+3.conf"))
	if err != nil {
		t.Fatal(err)
	}
	ksum := sha256.Sum256([]byte("kernel A"))
	isum := sha256.Sum256([]byte("initrd A"))
	want := "title Debian GNU/Linux 13 (trixie) 1.0\n" +
		"version 1.0\n" +
		"sort-key twinroot-0\n" +
		"linux /twinroot/vmlinuz-" + hex.EncodeToString(ksum[:]) + "\n" +
		"initrd /twinroot/initramfs-" + hex.EncodeToString(isum[:]) + ".img\n" +
		"options root=UUID=0f3c twinroot=aaaaaaaaaaaa.0:" + strings.Repeat("aa", 32) + " rw console=ttyS0 quiet\n"
	if string(data) != want {
		t.Fatalf("entry:\n%s\nwant:\n%s", data, want)
	}

	// It boots (systemd-boot counts a try) and is blessed.
	tried := sdBootTry(t, p)
	if tried != "twinroot1_aaaaaaaaaaaa.0+2-1.conf" {
		t.Fatalf("tried name %q", tried)
	}
	setEFIVar(t, efivars, `\loader\entries\`+tried)
	if err := p.Bless(ctx); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0.conf")
	if err := p.Bless(ctx); err != nil { // blessing twice is fine
		t.Fatal(err)
	}

	// Upgrade to B: B first with +3, A second, blessed, after commit.
	if err := p.Stage(ctx, b, &a); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0.conf") // staging leaves the current set alone
	st, ok, err := p.Staged(ctx)
	if err != nil || !ok || len(st) != 2 || st[0].File != "twinroot1_bbbbbbbbbbbb.0+3.conf" || st[1].File != "twinroot0_aaaaaaaaaaaa.0.conf" {
		t.Fatalf("staged %v %v %+v", ok, err, st)
	}
	if err := p.CommitStaged(ctx); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_bbbbbbbbbbbb.0+3.conf", "twinroot0_aaaaaaaaaaaa.0.conf")
	if _, ok, _ := p.Staged(ctx); ok {
		t.Fatal("a staged set remains after commit")
	}
	if err := p.CommitStaged(ctx); !errors.Is(err, ErrNoStaged) {
		t.Fatalf("second commit: %v, want ErrNoStaged", err)
	}
	es, _ := p.Entries(ctx)
	if es[0].ID != b.ID || es[0].Image != b.Image || es[1].ID != a.ID {
		t.Fatalf("entries carry ids %s %s", es[0].ID, es[1].ID)
	}

	// B never boots successfully: three tries, then it sorts last.
	for i := 0; i < 3; i++ {
		sdBootTry(t, p)
	}
	wantFiles(t, p, "twinroot0_aaaaaaaaaaaa.0.conf", "twinroot1_bbbbbbbbbbbb.0+0-3.conf")

	// Rollback to A (the booted one): A first keeping its blessing, B
	// second: its exhausted counter is dropped, as a fallback has none.
	if err := p.Apply(ctx, a, &b); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0.conf", "twinroot0_bbbbbbbbbbbb.0.conf")

	// GC: A's and B's kernels and the shared initramfs are referenced.
	removed, err := p.GC(ctx)
	if err != nil || len(removed) != 0 {
		t.Fatalf("GC removed %q, %v", removed, err)
	}
	c := deployment(t, p, "cccccccccccc.0", digestOf(t, 0xcc), testImage("kernel C", "initrd C"), "3.0")
	if err := p.Apply(ctx, c, &a); err != nil {
		t.Fatal(err)
	}
	removed, err = p.GC(ctx)
	bsum := sha256.Sum256([]byte("kernel B"))
	if err != nil || !reflect.DeepEqual(removed, []string{"/twinroot/vmlinuz-" + hex.EncodeToString(bsum[:])}) {
		t.Fatalf("GC removed %q, %v", removed, err)
	}
}

// TestBlessingAfterStaging: the booted entry is blessed after the update
// was staged; the commit keeps the blessing.
func TestBlessingAfterStaging(t *testing.T) {
	ctx := context.Background()
	efivars := t.TempDir()
	p := openScratch(t, Options{EFIVarsDir: efivars})
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	b := deployment(t, p, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), testImage("kB", "iB"), "2")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	tried := sdBootTry(t, p) // booted, not yet blessed
	if err := p.Stage(ctx, b, &a); err != nil {
		t.Fatal(err)
	}
	st, _, _ := p.Staged(ctx)
	if st[1].File != "twinroot0_aaaaaaaaaaaa.0+2-1.conf" {
		t.Fatalf("staged fallback %q", st[1].File)
	}
	setEFIVar(t, efivars, `\loader\entries\`+tried)
	if err := p.Bless(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.CommitStaged(ctx); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_bbbbbbbbbbbb.0+3.conf", "twinroot0_aaaaaaaaaaaa.0.conf")
}

func TestCommitByRenames(t *testing.T) {
	ctx := context.Background()
	p := openScratch(t, Options{NoExchange: true})
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	b := deployment(t, p, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), testImage("kB", "iB"), "2")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, b, &a); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_bbbbbbbbbbbb.0+3.conf", "twinroot0_aaaaaaaaaaaa.0+3.conf")
	if err := p.Apply(ctx, a, &b); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0+3.conf", "twinroot0_bbbbbbbbbbbb.0+3.conf")
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	p := openScratch(t, Options{})
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	before := entryFiles(t, p)

	noKernel := testImage("k", "i")
	delete(noKernel, "usr/lib/modules/6.12.0-1-amd64/vmlinuz")
	if _, err := FindKernel(noKernel); !errors.Is(err, ErrNoKernel) || !strings.Contains(err.Error(), "/usr/lib/modules/<kver>/vmlinuz") {
		t.Errorf("no kernel: %v", err)
	}
	noInitrd := testImage("k", "i")
	delete(noInitrd, "usr/lib/modules/6.12.0-1-amd64/initramfs.img")
	if _, err := FindKernel(noInitrd); !errors.Is(err, ErrNoInitramfs) || !strings.Contains(err.Error(), "/usr/lib/modules/6.12.0-1-amd64/initramfs.img") {
		t.Errorf("no initramfs: %v", err)
	}
	for name, content := range map[string]string{
		"syntax":  "kargs = [\"a\"\n",
		"unknown": "kargs = [\"a\"]\nfoo = 1\n",
		"nokargs": "match-architectures = [\"x86_64\"]\n",
		"type":    "kargs = \"a\"\n",
	} {
		img := testImage("k", "i")
		img["usr/lib/bootc/kargs.d/30-bad.toml"] = &fstest.MapFile{Data: []byte(content)}
		if _, err := ImageKargs(img, "x86_64"); !errors.Is(err, ErrKargs) || !strings.Contains(err.Error(), "/usr/lib/bootc/kargs.d/30-bad.toml") {
			t.Errorf("kargs %s: %v", name, err)
		}
	}
	// An entry naming a kernel that is not on the partition.
	b := a
	b.ID, b.Kernel.Linux = "bbbbbbbbbbbb.0", "/twinroot/vmlinuz-missing"
	if err := p.Stage(ctx, b, &a); !errors.Is(err, ErrMissingKernel) || !strings.Contains(err.Error(), "vmlinuz-missing") {
		t.Errorf("missing kernel: %v", err)
	}
	// A directory that is not a mount point.
	dir := t.TempDir()
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNotMounted) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "--boot") {
		t.Errorf("unmounted: %v", err)
	}
	if got := entryFiles(t, p); !reflect.DeepEqual(got, before) {
		t.Errorf("entries changed to %q", got)
	}
}

// TestFullPartition: a boot partition without room for the new kernel
// fails before copying, naming the partition and the bytes needed, and
// leaves the entries and the kernel directory as they were.
func TestFullPartition(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	ctx := context.Background()
	dir := t.TempDir()
	if err := unixMount("tmpfs", dir, "tmpfs", "size=4m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unixUnmount(dir) })
	p, err := Open(dir, Options{Log: slog.New(slog.DiscardHandler)}) // a mount point: no AllowUnmounted needed
	if err != nil {
		t.Fatal(err)
	}
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	before := entryFiles(t, p)
	kdirBefore, _ := os.ReadDir(filepath.Join(dir, "twinroot"))
	big := testImage(strings.Repeat("k", 3<<20), strings.Repeat("i", 2<<20))
	k, _ := FindKernel(big)
	_, err = p.InstallKernel(ctx, big, k)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "need 5242880 bytes") {
		t.Fatalf("InstallKernel on a full partition: %v", err)
	}
	t.Log(err)
	if got := entryFiles(t, p); !reflect.DeepEqual(got, before) {
		t.Errorf("entries changed to %q", got)
	}
	if kdir, _ := os.ReadDir(filepath.Join(dir, "twinroot")); len(kdir) != len(kdirBefore) {
		t.Errorf("twinroot/ holds %d files, had %d", len(kdir), len(kdirBefore))
	}
}

func TestInstallLoader(t *testing.T) {
	ctx := context.Background()
	p := openScratch(t, Options{})
	img := fstest.MapFS{"usr/lib/systemd/boot/efi/systemd-bootx64.efi": {Data: []byte("MZ image's")}}
	fsys, path, err := LoaderFS(img)
	if err != nil || path != "usr/lib/systemd/boot/efi/systemd-bootx64.efi" {
		t.Fatalf("LoaderFS = %q, %v", path, err)
	}
	if err := os.MkdirAll(filepath.Join(p.Dir(), "loader"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.Dir(), "loader/loader.conf"), []byte("timeout 9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.InstallLoader(ctx, fsys, path, nil); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{
		"EFI/BOOT/BOOTX64.EFI":            "MZ image's",
		"EFI/systemd/systemd-bootx64.efi": "MZ image's",
		"loader/loader.conf":              "timeout 9\n", // kept
	} {
		if got, err := os.ReadFile(filepath.Join(p.Dir(), f)); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", f, got, err, want)
		}
	}
	// An empty partition gets the default loader.conf; an image without
	// systemd-boot falls back to the machine's.
	q := openScratch(t, Options{})
	if err := q.InstallLoader(ctx, fsys, path, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(q.Dir(), "loader/loader.conf")); string(got) != DefaultLoaderConf {
		t.Errorf("loader.conf = %q", got)
	}
	if _, err := os.Stat(SystemEFIDir + "/" + efiBinaryName); err == nil {
		if _, path, err := LoaderFS(fstest.MapFS{}); err != nil || path != ImageEFIDir+"/"+efiBinaryName {
			t.Errorf("LoaderFS of an image without systemd-boot: %q, %v", path, err)
		}
	}
}

func TestNoCounting(t *testing.T) {
	ctx := context.Background()
	p := openScratch(t, Options{Tries: -1})
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0.conf")
	q := openScratch(t, Options{Tries: 5})
	b := deployment(t, q, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), testImage("kB", "iB"), "1")
	if err := q.Apply(ctx, b, nil); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, q, "twinroot1_bbbbbbbbbbbb.0+5.conf")
}

// TestBrokenEntry: an entry file that does not parse (damage, or another
// tool's) is left out of Entries, and the next commit removes it.
func TestBrokenEntry(t *testing.T) {
	ctx := context.Background()
	p := openScratch(t, Options{})
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kA", "iA"), "1")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(p.Dir(), "loader/entries/twinroot1_aaaaaaaaaaaa.0.conf")
	if err := os.WriteFile(bad, []byte("title \xff\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := entryFiles(t, p); !reflect.DeepEqual(got, []string{"twinroot1_aaaaaaaaaaaa.0+3.conf"}) {
		t.Fatalf("entries %q", got)
	}
	b := deployment(t, p, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), testImage("kB", "iB"), "2")
	if err := p.Apply(ctx, b, &a); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_bbbbbbbbbbbb.0+3.conf", "twinroot0_aaaaaaaaaaaa.0+3.conf")
}
