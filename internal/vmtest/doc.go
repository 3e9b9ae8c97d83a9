// Package vmtest runs code under a real Linux kernel with fs-verity, erofs
// and overlayfs, in QEMU, from ordinary Go tests.
//
// The development kernel lacks fs-verity, so tests that need it (Enable and
// Measure, composefs mounts with verity=require, the setup-root binary) boot
// Debian trixie's 6.12 kernel instead. A boot takes a few seconds under TCG.
//
// # Kernel and base initramfs
//
// test/vm/prepare-kernel.sh downloads the kernel package with apt through a
// private sources list, lists and cache (never the system's), trusted by the
// Debian archive keyring, and unpacks it into /var/cache/twinroot-vmtest/<kver>
// (TWINROOT_VMTEST_CACHE overrides). It writes there vmlinuz and base.cpio:
// busybox-static with its applet links, and the modules the guest loads
// (virtio_blk, ext4, erofs, overlay, loop, crc32c and their dependencies),
// decompressed, with load.list giving the load order from modules.dep. The
// script is idempotent (a stamp file holds the recipe, so changing the
// module list rebuilds base.cpio without downloading again) and serialised by
// flock. Prepare runs it before every boot; with a complete cache it returns
// in milliseconds, so `go test ./...` works on a fresh machine after
// `make deps` without a separate step.
//
// # A boot
//
// RunContext writes a second newc archive after base.cpio holding the
// generated /init, /dev/console and Config.Files (the kernel unpacks
// concatenated archives in order). Each Disk without an Image is a sparse
// file formatted on the host with mkfs.ext4 (-O verity if asked, -d to fill
// it from a host directory) and attached as a virtio drive (cache=unsafe:
// the file is thrown away); a Disk with an Image attaches a host file (an
// EROFS image, say) as it is, mounted if FSType is set. /init mounts
// proc, sys and devtmpfs, loads the modules, mounts the fresh disks at
// DiskDir(i), prints a start marker, runs Config.Command under a guest-side
// timeout with a clean environment (TWINROOT_VMTEST_GUEST=1 marks it), prints
// "TWINROOT-VMTEST-EXIT=<status>" and powers off. QEMU runs with
// -accel tcg -cpu max -nodefaults -serial stdio -no-reboot and panic=-1, so
// every way the guest ends also ends QEMU; the console is captured from
// stdout and parsed for the markers. TCG runs one CPU by default: with
// several CPUs on several host threads, the guest kernel now and then oopses
// on code another CPU has just patched, so more CPUs share one thread. A
// guest that dies before the start marker (no test code ran yet) is booted
// again, at most three times in all. A whole-boot timeout (120 s by default)
// kills QEMU. KVM is used only when TWINROOT_VMTEST_ACCEL=kvm: it is not
// probed, because on some hosts a KVM guest hangs instead of failing.
//
// # Running a test in the guest
//
// Tests are built with CGO_ENABLED=0, so the test binary is static and runs
// in the guest as it is. RunTestInGuest copies os.Executable() into the
// initramfs, runs it with -test.run selecting exactly the calling test and
// -test.v, and passes, skips or fails the host test as the guest one did. A
// guest test passes only with exit status 0 and its own "--- PASS" line, so
// a pattern that matched nothing is a failure, not a silent pass:
//
//	func TestX(t *testing.T) {
//		if !vmtest.InGuest() {
//			vmtest.RunTestInGuest(t, vmtest.Config{Disks: []vmtest.Disk{{Verity: true}}})
//			return
//		}
//		// runs in the guest, as root, with ScratchDir() mounted
//	}
//
// RunTest returns the Result without judging it (to test failures), and
// Run boots any Config.Command, e.g. a busybox shell line or a static
// binary built with BuildBinary and passed in Config.Files. The guest test
// runs in /tmp, not in its package directory: testdata it needs goes in
// through Files or a Disk filled From a host directory.
//
// TWINROOT_VMTEST_CONSOLE=1 streams the guest console to stderr while it
// runs.
package vmtest
