// Package boot keeps the boot loader's state on the boot partition (the ESP,
// or XBOOTLDR when there is one): Boot Loader Specification type #1 entries
// read by systemd-boot (and by GRUB's BLS support), the kernels and
// initramfs images they name, boot counting and its blessing, and the atomic
// flip between entry sets.
//
// The pure parts parse and print entries (ParseEntry, Entry.Marshal), entry
// file names with their boot counter (ParseEntryName), read what an image
// offers (FindKernel, ImageKargs, ReadOSRelease) and plan the complete entry
// set for a pair of deployments (Plan). A Partition does the I/O: copying
// kernels (InstallKernel), writing a staged set (Stage), exchanging it with
// the current one (CommitStaged), blessing the booted entry (Bless) and
// removing kernels no entry names (GC).
//
// Layout on the partition:
//
//	loader/loader.conf
//	loader/entries/twinroot<rank>_<id>[+LEFT[-DONE]].conf   the current set
//	loader/entries/.twinroot-set                             its generation and names
//	loader/entries.staged/...                                the staged set
//	twinroot/vmlinuz-<sha256 hex>                            kernels, by content
//	twinroot/initramfs-<sha256 hex>.img                      initramfs images
//	EFI/BOOT/BOOTX64.EFI, EFI/systemd/systemd-bootx64.efi    systemd-boot
//
// The package knows nothing of /etc, OCI or the object store: images come in
// as fs.FS values.
package boot

import "errors"

// Errors. Each is wrapped with the path, file or partition it concerns.
var (
	// ErrSyntax: an entry file or entry file name does not parse.
	ErrSyntax = errors.New("boot: syntax error")
	// ErrNoKernel: the image has no /usr/lib/modules/<kver>/vmlinuz.
	ErrNoKernel = errors.New("boot: image has no kernel")
	// ErrNoInitramfs: the image's kernel has no initramfs.img next to it.
	ErrNoInitramfs = errors.New("boot: image has no initramfs")
	// ErrKargs: a kargs.d file of the image does not parse.
	ErrKargs = errors.New("boot: bad kernel arguments file")
	// ErrNoSpace: the boot partition has no room for the files to copy.
	ErrNoSpace = errors.New("boot: not enough space on the boot partition")
	// ErrNotMounted: the boot partition directory is not a mount point.
	ErrNotMounted = errors.New("boot: not a mount point")
	// ErrNoBootPartition: no ESP or XBOOTLDR partition was found.
	ErrNoBootPartition = errors.New("boot: no boot partition found")
	// ErrBadDeployment: a Deployment given to Plan or Stage is incomplete.
	ErrBadDeployment = errors.New("boot: bad deployment")
	// ErrMissingKernel: an entry would name a kernel or initramfs that is
	// not on the boot partition.
	ErrMissingKernel = errors.New("boot: kernel file missing on the boot partition")
	// ErrNoStaged: there is no staged entry set to commit.
	ErrNoStaged = errors.New("boot: no staged entry set")
	// ErrNotBooted: the booted entry cannot be found (no boot counting
	// variable, or it names no entry).
	ErrNotBooted = errors.New("boot: booted entry unknown")
	// ErrNoLoader: no systemd-boot EFI binary found to install.
	ErrNoLoader = errors.New("boot: no systemd-boot EFI binary")
)
