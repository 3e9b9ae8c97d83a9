package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Where systemd-boot's EFI binary is found.
const (
	ImageEFIDir   = "usr/lib/systemd/boot/efi"  // in an image
	SystemEFIDir  = "/usr/lib/systemd/boot/efi" // the machine's systemd-boot-efi
	efiBinaryName = "systemd-bootx64.efi"
)

// DefaultLoaderConf is the loader.conf written on a first install: a short
// menu so a person can pick the rollback entry, and no "default" line, so
// systemd-boot boots the first entry in its order (the one Plan makes first,
// or the next one when its tries are exhausted).
const DefaultLoaderConf = "timeout 3\neditor no\n"

// LoaderFS finds systemd-boot's EFI binary: in the image's
// /usr/lib/systemd/boot/efi when it has one, else in the machine's
// /usr/lib/systemd/boot/efi. It returns the file system and path to pass to
// InstallLoader.
func LoaderFS(image fs.FS) (fs.FS, string, error) {
	p := ImageEFIDir + "/" + efiBinaryName
	if image != nil {
		if fi, err := fs.Stat(image, p); err == nil && fi.Mode().IsRegular() {
			return image, p, nil
		}
	}
	sys := os.DirFS("/")
	if fi, err := fs.Stat(sys, p); err == nil && fi.Mode().IsRegular() {
		return sys, p, nil
	}
	return nil, "", fmt.Errorf("%w: neither the image nor this machine has %s/%s (install systemd-boot-efi)", ErrNoLoader, SystemEFIDir, efiBinaryName)
}

// InstallLoader lays out an empty boot partition: loader/loader.conf
// (conf, or DefaultLoaderConf when nil; an existing one is kept) and
// systemd-boot's EFI binary from fsys at path efi as
// EFI/systemd/systemd-bootx64.efi and EFI/BOOT/BOOTX64.EFI (the removable
// media path firmware boots without a boot variable). Each file is written
// under a temporary name, fsynced, renamed, and its directory fsynced.
func (p *Partition) InstallLoader(ctx context.Context, fsys fs.FS, efi string, conf []byte) error {
	unlock, err := p.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	bin, err := fs.ReadFile(fsys, efi)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoLoader, err)
	}
	free, err := freeBytes(p.dir)
	if err != nil {
		return err
	}
	if need := uint64(2*len(bin) + 4096); free < need {
		return fmt.Errorf("%w %s: need %d bytes for the systemd-boot EFI binary, %d available", ErrNoSpace, p.dir, need, free)
	}
	loader := filepath.Join(p.dir, loaderDir)
	if _, err := os.Stat(filepath.Join(loader, "loader.conf")); errors.Is(err, fs.ErrNotExist) {
		if conf == nil {
			conf = []byte(DefaultLoaderConf)
		}
		if err := writeFile(ctx, loader, "loader.conf", conf); err != nil {
			return err
		}
		if err := syncDir(loader); err != nil {
			return err
		}
	}
	for _, dst := range []string{"EFI/systemd/" + efiBinaryName, "EFI/BOOT/BOOTX64.EFI"} {
		dir := filepath.Join(p.dir, filepath.Dir(dst))
		if err := mkdirSync(dir); err != nil {
			return err
		}
		if err := writeFile(ctx, dir, filepath.Base(dst), bin); err != nil {
			return err
		}
		if err := syncDir(dir); err != nil {
			return err
		}
	}
	p.log.Info("boot: installed systemd-boot", "partition", p.dir, "from", efi, "bytes", len(bin))
	return nil
}

// FindBootPartition finds the boot partition as bootctl does: /boot when
// it is a mounted XBOOTLDR partition, else the first of /efi, /boot and
// /boot/efi that is a mounted vfat file system (the ESP).
func FindBootPartition() (string, error) { return findBootPartition("/") }

const (
	msdosSuperMagic = 0x4d44
	xbootldrGUID    = "bc13c2ff-59e6-4262-a352-b275fd6f7172"
)

func findBootPartition(root string) (string, error) {
	boot := filepath.Join(root, "boot")
	if mp, _ := isMountPoint(boot); mp && isXBOOTLDR(root, boot) {
		return boot, nil
	}
	var tried []string
	for _, d := range []string{"efi", "boot", "boot/efi"} {
		dir := filepath.Join(root, d)
		tried = append(tried, dir)
		mp, err := isMountPoint(dir)
		if err != nil || !mp {
			continue
		}
		if isVfat(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: none of %s is a mounted ESP (vfat) or XBOOTLDR partition", ErrNoBootPartition, strings.Join(tried, ", "))
}

// isXBOOTLDR reads the partition type of dir's device from udev's database.
func isXBOOTLDR(root, dir string) bool {
	dev, err := deviceOf(dir)
	if err != nil {
		return false
	}
	data, err := os.ReadFile(filepath.Join(root, "run/udev/data", "b"+dev))
	if err != nil {
		return false
	}
	return strings.Contains(strings.ToLower(string(data)), "e:id_part_entry_type="+xbootldrGUID)
}
