package boot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinroot/twinroot/internal/vmtest"
)

// The initramfs of TestSystemdBootVM's guest re-runs the test binary with
// these set to bless the booted entry, as a booted system's
// boot-complete.target would.
const (
	envBlessESP     = "BOOT_BLESS_ESP"
	envBlessEFIVars = "BOOT_BLESS_EFIVARS"
)

// blessMain is the guest's blessing: Bless on the mounted ESP.
func blessMain(esp, efivars string) int {
	p, err := Open(esp, Options{EFIVarsDir: efivars})
	if err == nil {
		err = p.Bless(context.Background())
	}
	switch {
	case err == nil:
		fmt.Println("TWINROOT-UEFI-BLESSED")
	case errors.Is(err, ErrNotBooted):
		fmt.Println("TWINROOT-UEFI-NOTHING-TO-BLESS:", err)
	default:
		fmt.Println("TWINROOT-UEFI-BLESS-FAILED:", err)
		return 1
	}
	return 0
}

// uefiInit is the guest's /init. A "bad" deployment reboots at once, as a
// kernel that never comes up would make the machine do; a "good" one mounts
// the ESP and efivarfs, lists the entries, blesses the booted one and powers
// off.
const uefiInit = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
cmdline=$(cat /proc/cmdline)
echo "TWINROOT-UEFI-CMDLINE: $cmdline"
case " $cmdline " in
*" twinroot.test=bad "*) echo TWINROOT-UEFI-BAD-REBOOT; reboot -f ;;
esac
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done </lib/modules/load.list
mkdir -p /run/efivars /efi
mount -t efivarfs efivarfs /run/efivars || echo "TWINROOT-UEFI: no efivarfs"
mount -t vfat /dev/vda /efi || echo "TWINROOT-UEFI: cannot mount the ESP"
echo "TWINROOT-UEFI-ENTRIES-BEFORE: $(ls /efi/loader/entries | tr '\n' ' ')"
BOOT_BLESS_ESP=/efi BOOT_BLESS_EFIVARS=/run/efivars /bless.bin
echo "TWINROOT-UEFI-ENTRIES-AFTER: $(ls /efi/loader/entries | tr '\n' ' ')"
umount /efi
sync
echo TWINROOT-UEFI-GOOD-POWEROFF
poweroff -f
`

// esp is a boot partition kept in a host directory (where boot writes it)
// and copied to and from a vfat image (where firmware reads it), with
// mkfs.vfat and mtools: the host kernel cannot mount vfat.
type esp struct {
	t   *testing.T
	dir string
	img string
}

func (e *esp) mtools(args ...string) string {
	e.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// push makes a fresh vfat image holding the directory.
func (e *esp) push() {
	e.t.Helper()
	os.Remove(e.img)
	e.mtools("mkfs.vfat", "-C", "-F", "32", "-s", "1", "-n", "ESP", e.img, "65536")
	ents, err := os.ReadDir(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, de := range ents {
		e.mtools("mcopy", "-s", "-Q", "-i", e.img, filepath.Join(e.dir, de.Name()), "::/")
	}
}

// entries lists loader/entries in the image (names as firmware left them).
func (e *esp) entries() []string {
	e.t.Helper()
	var out []string
	for _, l := range strings.Split(e.mtools("mdir", "-b", "-i", e.img, "::/loader/entries"), "\n") {
		if n, ok := strings.CutPrefix(strings.TrimSpace(l), "::/loader/entries/"); ok && strings.HasSuffix(n, ".conf") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// pull copies loader/entries back from the image into the directory.
func (e *esp) pull() {
	e.t.Helper()
	dst := filepath.Join(e.dir, "loader")
	if err := os.RemoveAll(filepath.Join(dst, "entries")); err != nil {
		e.t.Fatal(err)
	}
	e.mtools("mcopy", "-s", "-Q", "-i", e.img, "::/loader/entries", dst+"/")
}

// TestSystemdBootVM boots entry sets written by boot with the real thing:
// OVMF firmware and Debian's systemd-boot on a vfat ESP image, the vmtest
// 6.12 kernel and a busybox initramfs. It shows that systemd-boot tries the
// +3 entry and renames it (+2-1), that the booted system blesses it through
// LoaderBootCountPath, and that an entry whose boots never succeed is
// renamed down to +0-3 and then systemd-boot boots the second entry by
// itself.
func TestSystemdBootVM(t *testing.T) {
	if vmtest.InGuest() {
		t.Skip("runs QEMU itself")
	}
	if err := vmtest.UEFIAvailable(); err != nil {
		t.Skip(err)
	}
	const sdboot = SystemEFIDir + "/" + efiBinaryName
	if _, err := os.Stat(sdboot); err != nil {
		t.Skipf("%s: %v (apt-get install systemd-boot-efi)", sdboot, err)
	}
	for _, tool := range []string{"mkfs.vfat", "mcopy", "mdir"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install dosfstools mtools)", tool)
		}
	}
	ctx := t.Context()
	k, err := vmtest.Prepare(ctx)
	if err != nil {
		t.Skipf("no guest kernel: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	// The "image": the vmtest kernel and an initramfs with uefiInit.
	kver := "6.12.0-test"
	imgDir := filepath.Join(work, "image")
	modDir := filepath.Join(imgDir, "usr/lib/modules", kver)
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		t.Fatal(err)
	}
	kernel, err := os.ReadFile(k.Image)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(modDir, "vmlinuz"), kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := vmtest.WriteInitramfs(ctx, filepath.Join(modDir, "initramfs.img"), uefiInit,
		[]vmtest.File{{Host: exe, Guest: "/bless.bin", Mode: 0o755}}); err != nil {
		t.Fatal(err)
	}
	image := os.DirFS(imgDir)

	e := &esp{t: t, dir: filepath.Join(work, "esp"), img: filepath.Join(work, "esp.img")}
	if err := os.Mkdir(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := Open(e.dir, Options{AllowUnmounted: true, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	fsys, efi, err := LoaderFS(image) // the image has none: the machine's systemd-boot-efi
	if err != nil {
		t.Fatal(err)
	}
	if err := p.InstallLoader(ctx, fsys, efi, []byte("timeout 0\n")); err != nil {
		t.Fatal(err)
	}
	kern, err := FindKernel(image)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := p.InstallKernel(ctx, image, kern)
	if err != nil {
		t.Fatal(err)
	}
	dep := func(id string, b byte, mode string) Deployment {
		return Deployment{ID: id, Image: digestOf(t, b), Version: mode, Kernel: inst, Root: "/dev/vdz9",
			OSRelease: map[string]string{"NAME": "twinroot test"},
			Kargs:     []string{"console=ttyS0", "panic=-1", "quiet", "twinroot.test=" + mode}}
	}
	good := dep("9009d0000000.0", 0x90, "good")
	bad := dep("bad000000000.0", 0xba, "bad")

	vars := filepath.Join(work, "vars.fd")
	if err := vmtest.NewUEFIVars(vars); err != nil {
		t.Fatal(err)
	}
	boots := 0
	run := func() string {
		t.Helper()
		boots++
		res, err := vmtest.RunUEFI(ctx, vmtest.UEFIConfig{Vars: vars, Disks: []string{e.img}, Timeout: 150 * time.Second})
		if err != nil {
			t.Fatalf("boot %d: %v\n%s", boots, err, res.Output)
		}
		var marks []string
		for _, l := range strings.Split(res.Output, "\n") {
			if i := strings.Index(l, "TWINROOT-UEFI"); i >= 0 {
				marks = append(marks, "\t"+l[i:])
			}
		}
		t.Logf("boot %d: %v\n%s", boots, res.Duration.Round(time.Millisecond), strings.Join(marks, "\n"))
		return res.Output
	}
	booted := func(out string) string {
		m := regexp.MustCompile(`TWINROOT-UEFI-CMDLINE: .*twinroot=([a-z0-9._-]+):`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("boot %d: no kernel of ours came up:\n%s", boots, out)
		}
		return m[1]
	}
	wantImg := func(want ...string) {
		t.Helper()
		slices.Sort(want)
		if got := e.entries(); !slices.Equal(got, want) {
			t.Fatalf("after boot %d the ESP holds %q, want %q", boots, got, want)
		}
		t.Logf("after boot %d: %q", boots, want)
	}

	// 1. First install: the good deployment alone, with +3. systemd-boot
	// renames it to +2-1 and boots it; it blesses itself.
	if err := p.Apply(ctx, good, nil); err != nil {
		t.Fatal(err)
	}
	e.push()
	out := run()
	if id := booted(out); id != good.ID {
		t.Fatalf("boot 1 booted %s", id)
	}
	if !strings.Contains(out, "TWINROOT-UEFI-ENTRIES-BEFORE: twinroot1_9009d0000000.0+2-1.conf") {
		t.Fatalf("systemd-boot did not rename the +3 entry to +2-1 before booting it:\n%s", out)
	}
	if !strings.Contains(out, "TWINROOT-UEFI-BLESSED") || !strings.Contains(out, "TWINROOT-UEFI-GOOD-POWEROFF") {
		t.Fatalf("boot 1 did not bless and power off:\n%s", out)
	}
	wantImg("twinroot1_9009d0000000.0.conf")

	// 2. An update to a deployment that never boots: staged and committed
	// on the partition; systemd-boot tries it three times.
	e.pull()
	if err := p.Stage(ctx, bad, &good); err != nil {
		t.Fatal(err)
	}
	if err := p.CommitStaged(ctx); err != nil {
		t.Fatal(err)
	}
	e.push()
	for try := 1; try <= 3; try++ {
		out := run()
		if id := booted(out); id != bad.ID || !strings.Contains(out, "TWINROOT-UEFI-BAD-REBOOT") {
			t.Fatalf("boot %d booted %s, want the new (bad) deployment:\n%s", boots, id, out)
		}
		wantImg(fmt.Sprintf("twinroot1_bad000000000.0+%d-%d.conf", 3-try, try), "twinroot0_9009d0000000.0.conf")
	}
	// 3. Its tries are exhausted: systemd-boot sorts it last and boots the
	// fallback, with nothing to bless (it is blessed already).
	out = run()
	if id := booted(out); id != good.ID {
		t.Fatalf("boot %d booted %s after the tries ran out, want the fallback %s:\n%s", boots, id, good.ID, out)
	}
	if !strings.Contains(out, "TWINROOT-UEFI-NOTHING-TO-BLESS") || !strings.Contains(out, "TWINROOT-UEFI-GOOD-POWEROFF") {
		t.Fatalf("boot %d:\n%s", boots, out)
	}
	wantImg("twinroot1_bad000000000.0+0-3.conf", "twinroot0_9009d0000000.0.conf")
	// What boot reads back from the partition agrees: the fallback first.
	e.pull()
	es, err := p.Entries(ctx)
	if err != nil || len(es) != 2 || es[0].ID != good.ID || !es[1].Name.Exhausted() {
		t.Fatalf("Entries after the fallback: %+v, %v", es, err)
	}
}
