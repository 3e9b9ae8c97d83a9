package verity_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/vmtest"
	"github.com/twinroot/twinroot/verity"
)

// This file tests Enable and Measure against a real kernel. The development
// host has no fs-verity, so TestVMKernel boots Debian's kernel under QEMU
// (internal/vmtest) and runs its own body there on an ext4 made with
// -O verity; TestHostKernel pins down what the host's kernel does.

// testData returns size deterministic pseudo-random bytes.
func testData(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(size)))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeFile creates path with data and closes it, so no writable descriptor
// is left (Enable needs that).
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// enable opens path read-only and enables fs-verity with alg.
func enable(t *testing.T, path string, alg verity.Algorithm) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := verity.Enable(f, alg); err != nil {
		t.Fatalf("Enable(%s, %v): %v", path, alg, err)
	}
}

func TestVMKernel(t *testing.T) {
	if !vmtest.InGuest() {
		vmtest.RunTestInGuest(t, vmtest.Config{Disks: []vmtest.Disk{{Size: 64 << 20, Verity: true}}})
		return
	}
	dir := vmtest.ScratchDir()
	t.Run("EnableMeasure", func(t *testing.T) { testEnableMeasure(t, dir) })
	t.Run("Busy", func(t *testing.T) { testBusy(t, dir) })
	t.Run("NotEnabled", func(t *testing.T) { testNotEnabled(t, dir) })
	t.Run("Unsupported", testUnsupportedFS)
	// Last: it unmounts and remounts the scratch file system.
	t.Run("Tamper", func(t *testing.T) { testTamper(t, dir) })
}

// testEnableMeasure checks that the kernel's measurement equals our digest.
func testEnableMeasure(t *testing.T, dir string) {
	for _, tc := range []struct {
		size int
		alg  verity.Algorithm
	}{
		{0, verity.SHA256},
		{1, verity.SHA256},
		{4096, verity.SHA256},
		{4097, verity.SHA256},
		{1<<20 + 1, verity.SHA256},
		{1, verity.SHA512},
		{4096, verity.SHA512},
		{1<<20 + 1, verity.SHA512},
	} {
		t.Run(fmt.Sprintf("%s-%d", tc.alg, tc.size), func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("measure-%s-%d", tc.alg, tc.size))
			data := testData(tc.size, uint64(tc.alg))
			writeFile(t, path, data)

			want, err := verity.DigestFile(t.Context(), path, tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			fromReader, n, err := verity.DigestReader(bytes.NewReader(data), tc.alg)
			if err != nil || n != int64(tc.size) || fromReader != want {
				t.Fatalf("DigestReader = %v, %d, %v; DigestFile = %v", fromReader, n, err, want)
			}

			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if on, err := verity.IsEnabled(f); err != nil || on {
				t.Errorf("IsEnabled before Enable = %v, %v", on, err)
			}
			if err := verity.Enable(f, tc.alg); err != nil {
				t.Fatalf("Enable: %v", err)
			}
			got, err := verity.Measure(f)
			if err != nil {
				t.Fatalf("Measure: %v", err)
			}
			if got != want {
				t.Errorf("kernel measured %v, DigestFile computed %v", got, want)
			}
			if on, err := verity.IsEnabled(f); err != nil || !on {
				t.Errorf("IsEnabled after Enable = %v, %v", on, err)
			}
			if ok, err := verity.Supported(f); err != nil || !ok {
				t.Errorf("Supported = %v, %v", ok, err)
			}
			if err := verity.Enable(f, tc.alg); !errors.Is(err, verity.ErrAlreadyEnabled) {
				t.Errorf("second Enable: err = %v, want ErrAlreadyEnabled", err)
			}
			// The file is read-only for good and still reads back intact.
			if w, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
				w.Close()
				t.Error("opened a verity file for writing")
			}
			back, err := io.ReadAll(f)
			if err != nil || !bytes.Equal(back, data) {
				t.Errorf("read back %d bytes, %v; want %d bytes", len(back), err, len(data))
			}
		})
	}
}

// testBusy checks Enable while a writable descriptor is open: the caller's
// own, or another one.
func testBusy(t *testing.T, dir string) {
	path := filepath.Join(dir, "busy")
	writeFile(t, path, testData(10000, 1))

	rw, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := verity.Enable(rw, verity.SHA256); !errors.Is(err, verity.ErrFileBusy) {
		t.Errorf("Enable on an O_RDWR descriptor: err = %v, want ErrFileBusy", err)
	} else if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name %s", err, path)
	}

	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := verity.Enable(ro, verity.SHA256); !errors.Is(err, verity.ErrFileBusy) {
		t.Errorf("Enable with another writable descriptor open: err = %v, want ErrFileBusy", err)
	}
	if err := rw.Close(); err != nil {
		t.Fatal(err)
	}
	// With the writer gone it works.
	if err := verity.Enable(ro, verity.SHA256); err != nil {
		t.Errorf("Enable after the writer closed: %v", err)
	}
}

// testNotEnabled checks Measure on a file without fs-verity.
func testNotEnabled(t *testing.T, dir string) {
	path := filepath.Join(dir, "plain")
	writeFile(t, path, []byte("plain file"))
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := verity.Measure(f); !errors.Is(err, verity.ErrNotEnabled) {
		t.Errorf("Measure on a plain file: err = %v, want ErrNotEnabled", err)
	}
	if ok, err := verity.Supported(f); err != nil || !ok {
		t.Errorf("Supported on verity ext4 = %v, %v; want true", ok, err)
	}
}

// testUnsupportedFS checks Enable on a file system without fs-verity
// (tmpfs) in a kernel that has it.
func testUnsupportedFS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f") // rootfs: tmpfs or ramfs
	writeFile(t, path, []byte("x"))
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := verity.Enable(f, verity.SHA256); !errors.Is(err, verity.ErrNotSupported) {
		t.Errorf("Enable on %s: err = %v, want ErrNotSupported", path, err)
	}
}

// fibmap is FIBMAP, _IO(0x00, 1): maps a logical block of a file to its
// physical block on the device.
const fibmap = 1

// physicalBlock returns the device block that holds logical block n of f.
func physicalBlock(t *testing.T, f *os.File, n int) int64 {
	t.Helper()
	blk := int32(n)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fibmap, uintptr(unsafe.Pointer(&blk))); errno != 0 {
		t.Fatalf("FIBMAP %s block %d: %v", f.Name(), n, errno)
	}
	if blk == 0 {
		t.Fatalf("FIBMAP %s block %d: unmapped", f.Name(), n)
	}
	return int64(blk)
}

// testTamper changes a data block of a verity file behind the file system's
// back and checks that reading it fails with EIO while the intact blocks
// still read.
func testTamper(t *testing.T, dir string) {
	const blocks = 4
	path := filepath.Join(dir, "tamper")
	data := testData(blocks*verity.BlockSize, 7)
	writeFile(t, path, data)
	enable(t, path, verity.SHA256)

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	before, err := verity.Measure(f)
	if err != nil {
		t.Fatal(err)
	}
	phys := physicalBlock(t, f, 2)
	f.Close()

	dev := vmtest.DiskDevice(0)
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatalf("unmount %s: %v", dir, err)
	}
	remounted := false
	defer func() {
		if !remounted {
			unix.Mount(dev, dir, "ext4", 0, "") //nolint:errcheck // best effort for later tests
		}
	}()
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Flip one byte in the middle of block 2.
	off := phys*verity.BlockSize + 100
	orig := data[2*verity.BlockSize+100]
	if _, err := d.WriteAt([]byte{^orig}, off); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, dir, "ext4", 0, ""); err != nil {
		t.Fatalf("remount %s: %v", dev, err)
	}
	remounted = true

	f, err = os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	after, err := verity.Measure(f)
	if err != nil || after != before {
		t.Errorf("Measure after tampering = %v, %v; want %v (metadata is untouched)", after, err, before)
	}
	buf := make([]byte, verity.BlockSize)
	for blk := range blocks {
		_, err := f.ReadAt(buf, int64(blk)*verity.BlockSize)
		switch {
		case blk == 2 && !errors.Is(err, syscall.EIO):
			t.Errorf("read of the tampered block: err = %v, want EIO", err)
		case blk != 2 && err != nil:
			t.Errorf("read of intact block %d: %v", blk, err)
		case blk != 2 && !bytes.Equal(buf, data[blk*verity.BlockSize:(blk+1)*verity.BlockSize]):
			t.Errorf("intact block %d reads different data", blk)
		}
	}
	if _, err := os.ReadFile(path); !errors.Is(err, syscall.EIO) {
		t.Errorf("ReadFile of the tampered file: err = %v, want EIO", err)
	}
}

// hostHasFSVerity reports whether the running kernel is built with
// fs-verity, from its symbol table (independent of the code under test).
func hostHasFSVerity(t *testing.T) bool {
	t.Helper()
	syms, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		t.Fatalf("cannot tell whether the kernel has fs-verity: %v", err)
	}
	if !bytes.Contains(syms, []byte(" ext4_")) && !bytes.Contains(syms, []byte(" vfs_read")) {
		t.Fatal("/proc/kallsyms lists no kernel symbols")
	}
	return bytes.Contains(syms, []byte(" fsverity_ioctl_enable"))
}

// TestHostKernel runs Enable on the test host's own kernel, on an ext4 with
// the verity feature mounted from a loop device: a kernel without fs-verity
// must give ErrNotSupported (the degraded path callers take), a kernel with
// it must enable and measure. Either way the outcome is asserted, not
// skipped.
func TestHostKernel(t *testing.T) {
	if vmtest.InGuest() {
		t.Skip("host-only test")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a loop device")
	}
	has := hostHasFSVerity(t)
	t.Logf("host kernel has fs-verity: %v", has)

	tmp := t.TempDir()
	img := filepath.Join(tmp, "ext4.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop: %v\n%s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v\n%s", err, out)
		}
	}()

	path := filepath.Join(mnt, "f")
	data := testData(5000, 3)
	writeFile(t, path, data)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = verity.Enable(f, verity.SHA256)
	ok, serr := verity.Supported(f)
	if !has {
		if !errors.Is(err, verity.ErrNotSupported) {
			t.Errorf("Enable on a kernel without fs-verity: err = %v, want ErrNotSupported", err)
		}
		if _, err := verity.Measure(f); !errors.Is(err, verity.ErrNotSupported) {
			t.Errorf("Measure on a kernel without fs-verity: err = %v, want ErrNotSupported", err)
		}
		if ok || serr != nil {
			t.Errorf("Supported = %v, %v; want false, nil", ok, serr)
		}
		return
	}
	if err != nil {
		t.Fatalf("Enable on a kernel with fs-verity: %v", err)
	}
	got, err := verity.Measure(f)
	want := verity.DigestBytes(data, verity.SHA256)
	if err != nil || got != want {
		t.Errorf("Measure = %v, %v; want %v", got, err, want)
	}
}
