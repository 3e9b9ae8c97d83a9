package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinroot/twinroot/internal/vmtest"
	"github.com/twinroot/twinroot/verity"
)

// TestLifecycleVerityVM runs install, upgrade and finalize on a sysroot
// whose file system has fs-verity (the host lacks it): in the vmtest guest,
// on an ext4 made with -O verity, from an OCI layout (no network in the
// guest). status reports the store's fs-verity, and the store's objects
// and the deployment's image are sealed.
func TestLifecycleVerityVM(t *testing.T) {
	if !vmtest.InGuest() {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			t.Skip("qemu-system-x86_64 not installed: cannot boot the vmtest guest")
		}
		if _, err := vmtest.Prepare(t.Context()); err != nil {
			t.Skipf("no guest kernel: %v", err)
		}
		vmtest.RunTestInGuest(t, vmtest.Config{
			Disks:   []vmtest.Disk{{Size: 128 << 20, Verity: true}},
			Timeout: 300 * time.Second,
		})
		return
	}
	tmp := t.TempDir()
	s := &scratch{sysroot: filepath.Join(vmtest.ScratchDir(), "sysroot"), boot: filepath.Join(tmp, "boot"), cmdline: filepath.Join(tmp, "cmdline")}
	for _, d := range []string{s.sysroot, s.boot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.setBooted(t, "")
	t.Setenv(cmdlineEnv, s.cmdline)
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(tmp, "none.json"))
	// The guest has no systemd-boot: install copies a stand-in.
	efi := filepath.Join(tmp, "efi")
	os.MkdirAll(efi, 0o755)
	os.WriteFile(filepath.Join(efi, "systemd-bootx64.efi"), []byte("MZ stand-in for systemd-boot"), 0o644)

	layout := filepath.Join(vmtest.ScratchDir(), "oci")
	writeLayout(t, layout, "stable", osImage(t, "1", "6.12.1"))
	ref := "oci:" + layout + ":stable"
	v1 := lastResult(t, s.mustCLI(t, "install", "--json", "--efi-dir", efi, ref)).Deployment
	h := s.status(t)
	if !h.Status.Store.Verity || id(h.Status.Default) != v1 {
		t.Fatalf("after install on a verity ext4: verity %v, %s", h.Status.Store.Verity, roles(h))
	}
	writeLayout(t, layout, "stable", osImage(t, "2", "6.12.2"))
	v2 := lastResult(t, s.mustCLI(t, "upgrade", "--json")).Deployment
	s.mustCLI(t, "finalize")
	if h = s.status(t); id(h.Status.Default) != v2 || id(h.Status.Rollback) != v1 {
		t.Fatalf("after upgrade and finalize: %s", roles(h))
	}
	// Every object and the image's image.cfs are sealed.
	objs, _ := filepath.Glob(filepath.Join(s.sysroot, "twinroot", "objects", "*", "*"))
	cfs := filepath.Join(s.sysroot, "twinroot", "images", h.Status.Default.Image.ComposefsDigest, "image.cfs")
	if len(objs) == 0 {
		t.Fatal("no objects in the store")
	}
	for _, p := range append(objs, cfs) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := verity.IsEnabled(f)
		f.Close()
		if err != nil || !ok {
			t.Errorf("%s: fs-verity enabled %v, %v", p, ok, err)
		}
	}
	if code, out, errOut := s.cli(t, "fsck"); code != 0 {
		t.Errorf("fsck: exit %d: %s%s", code, out, errOut)
	}
	t.Logf("verity store: %d objects sealed, default %s, rollback %s", len(objs), v2, v1)
}
