package boot

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/vmtest"
)

// makeVfat makes a sparse FAT32 image of size bytes, as an ESP is.
func makeVfat(t *testing.T, size int64) string {
	t.Helper()
	for _, tool := range []string{"mkfs.vfat", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps)", tool)
		}
	}
	img := filepath.Join(t.TempDir(), "esp.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.vfat", "-F", "32", "-s", "1", "-n", "ESP", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat: %v\n%s", err, out)
	}
	return img
}

// TestVfatVM runs the boot partition code on a real vfat (the host kernel
// has none) in the vmtest guest on Debian's 6.12 kernel: whether vfat
// exchanges directories with RENAME_EXCHANGE, a whole lifecycle through a
// mounted (not AllowUnmounted) partition, and the crash test.
func TestVfatVM(t *testing.T) {
	if !vmtest.InGuest() {
		img := makeVfat(t, 64<<20)
		if _, err := vmtest.Prepare(t.Context()); err != nil {
			t.Skipf("no guest kernel: %v", err)
		}
		vmtest.RunTestInGuest(t, vmtest.Config{
			Disks:     []vmtest.Disk{{Image: img, FSType: "vfat"}},
			Timeout:   400 * time.Second,
			MemoryMiB: 1024,
		})
		return
	}
	ctx := context.Background()
	esp := vmtest.DiskDir(0)

	// 1. RENAME_EXCHANGE of two directories on vfat.
	for _, d := range []string{"x/a", "x/b"} {
		if err := os.MkdirAll(filepath.Join(esp, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(esp, d, "f.conf"), []byte(d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	err := exchange(filepath.Join(esp, "x"), "a", "b")
	switch {
	case err == nil:
		got, _ := os.ReadFile(filepath.Join(esp, "x/a/f.conf"))
		if string(got) != "x/b" {
			t.Fatalf("after the exchange x/a/f.conf holds %q", got)
		}
		t.Logf("vfat on %s: renameat2(RENAME_EXCHANGE) of two directories works", kernelRelease())
	case exchangeUnsupported(err):
		t.Logf("vfat on %s: no RENAME_EXCHANGE (%v): the ordered renames are used", kernelRelease(), err)
	default:
		t.Fatal(err)
	}
	exchangeWorks := err == nil
	os.RemoveAll(filepath.Join(esp, "x"))

	// 2. A lifecycle on the mounted vfat partition.
	var logs bytes.Buffer
	efivars := t.TempDir()
	p, err := Open(esp, Options{EFIVarsDir: efivars, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open of the mounted vfat: %v", err)
	}
	efi := fstest.MapFS{"usr/lib/systemd/boot/efi/systemd-bootx64.efi": {Data: []byte("MZ not really")}}
	fsys, path, err := LoaderFS(efi)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.InstallLoader(ctx, fsys, path, nil); err != nil {
		t.Fatal(err)
	}
	a := deployment(t, p, "aaaaaaaaaaaa.0", digestOf(t, 0xaa), testImage("kernel A", "initrd A"), "1")
	b := deployment(t, p, "bbbbbbbbbbbb.0", digestOf(t, 0xbb), testImage("kernel B", "initrd B"), "2")
	if err := p.Apply(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	tried := sdBootTry(t, p)
	setEFIVar(t, efivars, `\loader\entries\`+tried)
	if err := p.Stage(ctx, b, &a); err != nil {
		t.Fatal(err)
	}
	if err := p.Bless(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.CommitStaged(ctx); err != nil {
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_bbbbbbbbbbbb.0+3.conf", "twinroot0_aaaaaaaaaaaa.0.conf")
	how := "how=exchange"
	if !exchangeWorks {
		how = "how=renames"
	}
	if !strings.Contains(logs.String(), how) {
		t.Fatalf("the commit did not use %s:\n%s", how, logs.String())
	}
	if err := p.Apply(ctx, a, &b); err != nil { // rollback
		t.Fatal(err)
	}
	wantFiles(t, p, "twinroot1_aaaaaaaaaaaa.0.conf", "twinroot0_bbbbbbbbbbbb.0+3.conf")
	for _, f := range []string{"loader/loader.conf", "EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"} {
		if _, err := os.Stat(filepath.Join(esp, f)); err != nil {
			t.Error(err)
		}
	}

	// A full vfat partition: a 70 MiB kernel does not fit in 64 MiB.
	big := testImage(strings.Repeat("k", 70<<20), "i")
	k, _ := FindKernel(big)
	if _, err := p.InstallKernel(ctx, big, k); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a kernel larger than the partition: %v", err)
	} else {
		t.Log(err)
	}
	for _, d := range []string{"loader", "twinroot", "EFI"} {
		if err := os.RemoveAll(filepath.Join(esp, d)); err != nil {
			t.Fatal(err)
		}
	}

	// 3. Crash safety on vfat (process kills; the page cache survives),
	// with images an eighth of the host test's size: TCG is slow.
	t.Setenv(envCrashScale, "8")
	if err := os.Mkdir(filepath.Join(esp, "crash"), 0o755); err != nil {
		t.Fatal(err)
	}
	crashSafety(t, filepath.Join(esp, "crash"), 40, !exchangeWorks)
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}
