package main

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/bootarg"
	"github.com/twinroot/twinroot/internal/vmtest"
	"github.com/twinroot/twinroot/verity"
)

// In the guest: the binary, the physical root's device and mount point.
const (
	guestBin      = "/vmtest/twinroot-setup-root"
	guestDisk     = "/dev/vda"
	guestSysroot  = "/sysroot"
	fixtureRecord = "fixture.cmdline" // on the disk: the command line boot 2 uses
	envBenchRuns  = "TWINROOT_BENCH_SETUPROOT"
)

// vmConfig boots the guest with the setup-root binary and disk as
// /dev/vda, left unmounted: the guest test mounts it at /sysroot as an
// initramfs would.
func vmConfig(bin, disk string, env ...string) vmtest.Config {
	return vmtest.Config{
		Disks:   []vmtest.Disk{{Image: disk}},
		Files:   []vmtest.File{{Host: bin, Guest: guestBin, Mode: 0o755}},
		Env:     env,
		Timeout: 300 * time.Second,
	}
}

// vmHost prepares the host side of a VM test: the binary and an empty
// ext4 with the verity feature on a host file that survives several boots.
func vmHost(t *testing.T) (bin, disk string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed: cannot boot the vmtest guest")
	}
	if _, err := vmtest.Prepare(t.Context()); err != nil {
		t.Skipf("no guest kernel: %v", err)
	}
	bin = setupRootBinary(t)
	disk = filepath.Join(t.TempDir(), "physical-root.ext4")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(256 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", "-O", "verity", disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return bin, disk
}

// TestSetupRootVM runs setup-root for real under Debian's 6.12 kernel with
// fs-verity, twice on one disk, with / made recursively shared first as
// systemd does in an initrd. Boot 1 (the systemd/dracut layout: the
// physical root at /sysroot) makes a store and a deployment on the disk
// (objstore seals every object and image.cfs), checks that a digest that
// does not match refuses with the physical root untouched and the message
// in the kernel log, then sets up the root and checks it (verity=require
// in the overlay's mount options, the image's content, the deployment's
// /etc, /var and /sysroot), and leaves a file in /var. Boot 2 (Debian's
// initramfs-tools layout) has twinroot= on its real kernel command line
// and runs dist's local-bottom script with the physical root at /root;
// the result has boot 1's /var and /etc files. Then one byte of an object
// is flipped on the block device: reading that file through the new root
// gives EIO.
func TestSetupRootVM(t *testing.T) {
	var bin, disk, karg string
	if !vmtest.InGuest() {
		bin, disk = vmHost(t)
	}
	ok := t.Run("boot1", func(t *testing.T) {
		if !vmtest.InGuest() {
			res := vmtest.RunTest(t, t.Name(), vmConfig(bin, disk))
			if res.ExitCode != 0 || !strings.Contains(res.Output, "--- PASS: "+t.Name()+" (") {
				t.Fatalf("guest test failed (exit status %d)\n--- guest console:\n%s", res.ExitCode, res.Output)
			}
			t.Logf("--- guest console:\n%s", res.Output)
			m := fixtureArgRe.FindStringSubmatch(res.Output)
			if m == nil {
				t.Fatal("boot 1 printed no fixture argument")
			}
			karg = m[1]
			return
		}
		guestBoot1(t)
	})
	if !ok && !vmtest.InGuest() {
		t.Fatal("boot 1 failed: not booting the disk again")
	}
	t.Run("boot2", func(t *testing.T) {
		if !vmtest.InGuest() {
			cfg := vmConfig(bin, disk)
			cfg.KernelArgs = []string{"rw", karg}
			cfg.Files = append(cfg.Files,
				vmtest.File{Host: bin, Guest: installPath, Mode: 0o755},
				vmtest.File{Host: localBottom, Guest: "/scripts/local-bottom/twinroot", Mode: 0o755})
			vmtest.RunTestInGuest(t, cfg)
			return
		}
		guestBoot2(t)
	})
}

// fixtureArgRe finds the twinroot= argument boot 1 prints for boot 2's
// kernel command line.
var fixtureArgRe = regexp.MustCompile(`FIXTURE-ARG (twinroot=\S+)`)

// localBottom is the initramfs-tools script boot 2 runs.
const localBottom = distDir + "/initramfs-tools/scripts/local-bottom/twinroot"

// mountPhysicalRoot mounts the disk at dir (/sysroot as sysroot.mount
// does, /root as initramfs-tools does), after making / shared as systemd
// does.
func mountPhysicalRoot(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("", "/", "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		t.Fatalf("making / shared: %v", err)
	}
	for _, d := range []string{dir, "/run"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(guestDisk, dir, "ext4", 0, ""); err != nil {
		t.Fatalf("mounting %s on %s: %v", guestDisk, dir, err)
	}
	t.Cleanup(func() { unmountAll(t, dir); unix.Sync() })
}

// runGuest runs the binary in the guest with the default paths
// (/sysroot, /run) and the command line in a file.
func runGuest(t *testing.T, cmdline string) runResult {
	t.Helper()
	return runBinary(t, guestBin, cmdline)
}

func guestBoot1(t *testing.T) {
	mountPhysicalRoot(t, guestSysroot)
	fx := makeFixture(t, guestSysroot)
	img := filepath.Join(guestSysroot, storeDir, imagesDir, fx.arg.Image.Hex(), imageFile)
	if f, err := os.Open(img); err != nil {
		t.Fatal(err)
	} else if m, err := verity.Measure(f); err != nil || m != fx.arg.Image {
		t.Fatalf("image.cfs measures %v, %v; want it sealed as %s", m, err, fx.arg.Image)
	} else {
		f.Close()
	}
	if err := os.WriteFile(filepath.Join(guestSysroot, fixtureRecord), []byte(fx.cmdline()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIXTURE-ARG %s", fx.arg)

	// A wrong digest: an image directory of that name holding a sealed
	// copy of the real image.cfs, so the kernel's measurement is what
	// refuses (not a missing file).
	wrongDir := filepath.Join(guestSysroot, storeDir, imagesDir, otherDigest.Hex())
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, wrongDir, map[string][]byte{imageFile: b})
	if f, err := os.Open(filepath.Join(wrongDir, imageFile)); err != nil {
		t.Fatal(err)
	} else if err := verity.Enable(f, verity.SHA256); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	wrong := bootarg.Arg{ID: fx.arg.ID, Image: otherDigest}
	r := runBinary(t, guestBin, "root=/dev/vda rw "+wrong.String(), "--kmsg=true")
	if r.code != 1 {
		t.Errorf("wrong digest: exit status %d, want 1", r.code)
	}
	if out, err := exec.Command("dmesg").CombinedOutput(); err != nil {
		t.Errorf("dmesg: %v", err)
	} else if !strings.Contains(string(out), "twinroot-setup-root: ") || !strings.Contains(string(out), "refusing to boot deployment "+fx.arg.ID) {
		t.Errorf("the refusal is not in the kernel log:\n%s", out)
	}
	for _, w := range []string{"refusing to boot deployment " + fx.arg.ID, "has fs-verity digest " + fx.arg.Image.String(),
		"command line names " + otherDigest.String(), "NOT mounted"} {
		if !strings.Contains(r.output, w) {
			t.Errorf("wrong digest: output lacks %q", w)
		}
	}
	if fstype, _ := mountInfo(t, guestSysroot); fstype != "ext4" {
		t.Errorf("after the refusal %s is %s, want the physical root (ext4)", guestSysroot, fstype)
	}
	if ms := mountsUnder(t, guestSysroot); !slices.Equal(ms, []string{guestSysroot}) {
		t.Errorf("mounts under %s after the refusal: %v", guestSysroot, ms)
	}
	if err := os.RemoveAll(wrongDir); err != nil {
		t.Fatal(err)
	}

	// The real boot.
	r = runGuest(t, fx.cmdline())
	if r.code != 0 {
		t.Fatalf("setup-root: exit status %d", r.code)
	}
	checkRequire(t, guestSysroot)
	checkDataDir(t, guestSysroot, fx.arg)
	checkNewRoot(t, guestSysroot, fx)
	if err := os.WriteFile(filepath.Join(guestSysroot, "var/persist"), []byte("written in boot 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logTimes(t, r.output)
}

// guestBoot2 boots the disk the way Debian's initramfs-tools does: the
// physical root at ${rootmnt} (/root), twinroot= on the real kernel
// command line, and dist's local-bottom script running the installed
// binary with its defaults (/proc/cmdline, /run, /dev/kmsg).
func guestBoot2(t *testing.T) {
	const rootmnt = "/root"
	mountPhysicalRoot(t, rootmnt)
	b, err := os.ReadFile(filepath.Join(rootmnt, fixtureRecord))
	if err != nil {
		t.Fatalf("boot 1 left no fixture: %v", err)
	}
	arg, err := bootarg.Parse(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if k, err := os.ReadFile("/proc/cmdline"); err != nil || !strings.Contains(string(k), arg.String()) {
		t.Fatalf("/proc/cmdline %q lacks %s (%v)", k, arg, err)
	}
	fx := fixture{sysroot: rootmnt, arg: arg, files: imageFiles, etc: deploymentEtc}
	// Like initramfs-tools' panic, it returns (there, when the emergency shell exits).
	writeTree(t, "/scripts", map[string][]byte{"functions": []byte("panic() { echo \"initramfs panic: $*\"; }\n")})
	// Failures panic (initramfs-tools then drops to its shell): a rootmnt
	// that is not a mount point, and setup-root failing (a command line
	// naming an image not in the store), after which the physical root is
	// back.
	notMounted := t.TempDir()
	cmd := exec.Command("/bin/sh", "/scripts/local-bottom/twinroot")
	cmd.Env = []string{"PATH=/bin", "rootmnt=" + notMounted}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "initramfs panic: twinroot: "+notMounted+" is not where the root file system is mounted") {
		t.Errorf("local-bottom/twinroot with rootmnt=%s (not mounted): %v\n%s\nwant a panic naming the cause", notMounted, err, out)
	}
	wrong := bootarg.Arg{ID: arg.ID, Image: otherDigest}
	cf := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(cf, []byte("rw "+wrong.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(cf, "/proc/cmdline", "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command("/bin/sh", "/scripts/local-bottom/twinroot")
	cmd.Env = []string{"PATH=/bin", "rootmnt=" + rootmnt}
	out, err = cmd.CombinedOutput()
	if err := unix.Unmount("/proc/cmdline", 0); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(string(out), "initramfs panic: twinroot-setup-root failed") || !strings.Contains(string(out), "image "+otherDigest.Hex()) {
		t.Errorf("local-bottom/twinroot with an unknown digest: %v\n%s\nwant a panic after the error naming the image", err, out)
	}
	if fstype, _ := mountInfo(t, rootmnt); fstype != "ext4" {
		t.Errorf("after the failure %s is %s, want the physical root put back (ext4)", rootmnt, fstype)
	}
	if ms := mountsUnder(t, guestSysroot); len(ms) != 0 {
		t.Errorf("the failed script left %v mounted", ms)
	}
	cmd = exec.Command("/bin/sh", "/scripts/local-bottom/twinroot")
	cmd.Env = []string{"PATH=/bin", "rootmnt=" + rootmnt}
	out, err = cmd.CombinedOutput()
	t.Logf("local-bottom/twinroot: %v\n%s", err, out)
	if err != nil {
		t.Fatalf("the initramfs-tools script failed: %v", err)
	}
	if ms := mountsUnder(t, guestSysroot); len(ms) != 0 {
		t.Errorf("the script left %v mounted in the initramfs", ms)
	}
	checkDataDir(t, rootmnt, arg)
	r := runResult{output: string(out)}
	if strings.Contains(r.output, "created the persistent /var") {
		t.Errorf("boot 2 created /var again")
	}
	checkRequire(t, rootmnt)
	if got, err := os.ReadFile(filepath.Join(rootmnt, "var/persist")); err != nil || string(got) != "written in boot 1\n" {
		t.Errorf("/var/persist in boot 2: %q, %v; want boot 1's file", got, err)
	}
	if got, err := os.ReadFile(filepath.Join(rootmnt, "etc/written-at-runtime")); err != nil || string(got) != "runtime\n" {
		t.Errorf("/etc/written-at-runtime in boot 2: %q, %v; want boot 1's file", got, err)
	}
	checkNewRoot(t, rootmnt, fx)
	logTimes(t, r.output)

	// Tamper with the object of usr/share/big on the block device.
	const name, off = "usr/share/big", 4096 + 100
	content := imageFiles[name]
	obj := filepath.Join(rootmnt, "sysroot", storeDir, "objects", verity.DigestBytes(content, verity.SHA256).ObjectPath())
	phys := physicalOffset(t, obj, off)
	d, err := os.OpenFile(guestDisk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := d.ReadAt(one, phys); err != nil {
		t.Fatal(err)
	}
	if one[0] != content[off] {
		t.Fatalf("%s at %d holds %#x, the object's byte %d is %#x: wrong physical offset", guestDisk, phys, one[0], off, content[off])
	}
	one[0] ^= 0xff
	if _, err := d.WriteAt(one, phys); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(rootmnt, name)); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the tampered %s through the new root: %v, want EIO", name, err)
	}
	if got, err := os.ReadFile(filepath.Join(rootmnt, "usr/bin/hello")); err != nil || !bytes.Equal(got, imageFiles["usr/bin/hello"]) {
		t.Errorf("an intact file after the tampering: %d bytes, %v", len(got), err)
	}
}

// checkDataDir checks that the overlay at dir records its data-only layer
// as /sysroot/twinroot/images/<digest>, the path the booted system finds
// the image directory at (objstore's in-use check and the updater read it).
func checkDataDir(t *testing.T, dir string, arg bootarg.Arg) {
	t.Helper()
	_, opts := mountInfo(t, dir)
	want := filepath.Join(guestSysroot, storeDir, imagesDir, arg.Image.Hex())
	if !slices.ContainsFunc(opts, func(o string) bool { return o == "datadir+="+want || strings.HasSuffix(o, "::"+want) }) {
		t.Errorf("the overlay at %s has options %v, none naming the data-only layer %s", dir, opts, want)
	}
}

// checkRequire checks that the root at dir is the overlay with
// verity=require.
func checkRequire(t *testing.T, dir string) {
	t.Helper()
	fstype, opts := mountInfo(t, dir)
	if fstype != "overlay" || !slices.Contains(opts, "verity=require") {
		t.Errorf("%s is %s with %v; want overlay with verity=require", dir, fstype, opts)
	}
}

var (
	doneRe = regexp.MustCompile(`t=([0-9.]+)ms level=INFO msg="new root in place" .*steps_ms="([^"]*)"`)
	stepRe = regexp.MustCompile(`(\S+)=([0-9.]+)`)
)

// stepTimes parses the binary's log: the milliseconds of each step and the
// time since the process started at which the new root was in place.
func stepTimes(out string) (steps map[string]float64, total float64, err error) {
	m := doneRe.FindStringSubmatch(out)
	if m == nil {
		return nil, 0, fmt.Errorf("no \"new root in place\" line with steps_ms in the log")
	}
	steps = map[string]float64{}
	for _, sm := range stepRe.FindAllStringSubmatch(m[2], -1) {
		v, _ := strconv.ParseFloat(sm[2], 64)
		steps[sm[1]] = v
	}
	if _, ok := steps["mount"]; !ok {
		return nil, 0, fmt.Errorf("no mount step in %q", m[2])
	}
	total, err = strconv.ParseFloat(m[1], 64)
	return steps, total, err
}

func logTimes(t *testing.T, out string) {
	t.Helper()
	steps, total, err := stepTimes(out)
	if err != nil {
		t.Error(err)
		return
	}
	t.Logf("setup-root: root in place after %.3f ms, of which EROFS+overlay mount %.3f ms (steps %v)", total, steps["mount"], steps)
}

// physicalOffset returns the byte offset on the device of byte off of the
// file at p (FIBMAP; ext4 with 4096-byte blocks).
func physicalOffset(t *testing.T, p string, off int64) int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const fibmap = 1 // FIBMAP from linux/fs.h
	blk := int32(off / 4096)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fibmap, uintptr(unsafe.Pointer(&blk))); e != 0 {
		t.Fatalf("FIBMAP %s: %v", p, e)
	}
	if blk == 0 {
		t.Fatalf("FIBMAP %s: block %d is a hole", p, off/4096)
	}
	return int64(blk)*4096 + off%4096
}

// TestSetupRootBenchVM is the setup-root benchmark (bench/setup-root.sh):
// with TWINROOT_BENCH_SETUPROOT=N it boots the guest once, makes the
// fixture with benchFiles more small files (so image.cfs has the size of a
// small OS image's), and runs the binary N times with warm caches and N
// times after dropping the page cache (as at boot), tearing the root down
// between runs. It prints, for each, the medians of the time until the new
// root is in place, of the EROFS+overlay mount step, of their difference,
// and of the wall time of the process as the caller sees it, and the
// steps of the median cold run. Timings are printed, never asserted.
func TestSetupRootBenchVM(t *testing.T) {
	runs, _ := strconv.Atoi(os.Getenv(envBenchRuns))
	if !vmtest.InGuest() {
		if runs <= 0 {
			t.Skipf("benchmark: set %s=<runs> (bench/setup-root.sh does)", envBenchRuns)
		}
		bin, disk := vmHost(t)
		cfg := vmConfig(bin, disk, envBenchRuns+"="+strconv.Itoa(runs))
		cfg.Timeout = 600 * time.Second
		vmtest.RunTestInGuest(t, cfg)
		return
	}
	mountPhysicalRoot(t, guestSysroot)
	files := maps.Clone(imageFiles)
	for i := range benchFiles {
		files[fmt.Sprintf("usr/share/bench/%02x/f%d", i%97, i)] = []byte(fmt.Sprintf("small file %d\n", i))
	}
	fx := makeFixtureOf(t, guestSysroot, files)
	if fi, err := os.Stat(filepath.Join(guestSysroot, storeDir, imagesDir, fx.arg.Image.Hex(), imageFile)); err == nil {
		t.Logf("image.cfs: %d bytes, %d files", fi.Size(), len(files))
	}
	for _, cold := range []bool{false, true} {
		var totals, mounts, overheads, walls []float64
		var stepLines []string
		for i := range runs {
			if cold {
				unix.Sync()
				if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
					t.Fatal(err)
				}
			}
			begin := time.Now()
			r := runBinary(t, guestBin, fx.cmdline())
			wall := time.Since(begin)
			if r.code != 0 {
				t.Fatalf("run %d: exit status %d", i, r.code)
			}
			steps, total, err := stepTimes(r.output)
			if err != nil {
				t.Fatal(err)
			}
			totals, mounts = append(totals, total), append(mounts, steps["mount"])
			overheads = append(overheads, total-steps["mount"])
			walls = append(walls, float64(wall.Microseconds())/1000)
			stepLines = append(stepLines, fmt.Sprintf("%09.3f %v", total, steps)) // sorts by total
			unmountAll(t, guestSysroot)
			if err := unix.Mount(guestDisk, guestSysroot, "ext4", 0, ""); err != nil {
				t.Fatal(err)
			}
		}
		kind := "warm"
		if cold {
			kind = "cold"
			slices.Sort(stepLines)
			t.Logf("cold run steps (total ms, step ms), median: %s", stepLines[len(stepLines)/2])
		}
		t.Logf("BENCH setup-root %s runs=%d root-in-place-ms=%.2f mount-ms=%.2f overhead-ms=%.2f process-wall-ms=%.2f (medians; overhead = root in place - EROFS+overlay mount)",
			kind, runs, median(totals), median(mounts), median(overheads), median(walls))
	}
}

// benchFiles is how many small files the benchmark adds to the image.
const benchFiles = 3000

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
