package updater

import (
	"context"
	"fmt"
	"io/fs"
	"os"

	"github.com/twinroot/twinroot/boot"
	twsync "github.com/twinroot/twinroot/sync"
	"github.com/twinroot/twinroot/verity"
)

// InstallOptions are the flags of install.
type InstallOptions struct {
	// EFIDir holds systemd-bootx64.efi (default: the image's
	// /usr/lib/systemd/boot/efi, else the machine's).
	EFIDir string
	// Kargs are extra kernel arguments for the deployment.
	Kargs []string
}

// Install makes a fresh sysroot and boot partition from ref: store
// initialised, image pulled and deployed, kernel installed, boot loader
// installed and one entry (the new deployment) committed. It is what tests,
// the demo and image-based installers use; on a sysroot that already has
// deployments it adds one more and makes it the default, keeping the old
// default as fallback.
func Install(ctx context.Context, o Options, ref string, iopt InstallOptions) (Result, error) {
	u, err := open(ctx, o, "install", true, false)
	if err != nil {
		return Result{}, err
	}
	defer u.Close()
	res := Result{APIVersion: APIVersion, Kind: "Result", Verb: "install", Removed: []string{}, Conflicts: []EtcConflict{}}
	u.o.emit("resolve", "resolving "+ref)
	r, err := twsync.Resolve(ctx, ref, u.pullOptions()...)
	if err != nil {
		return res, friendly(err)
	}
	u.o.emit("pull", fmt.Sprintf("pulling %s (%d layers, %s)", ref, r.Layers, humanBytes(r.Size)))
	pr, err := twsync.Pull(ctx, u.store, ref, append(u.pullOptions(), twsync.WithSpaceCheck(u.spaceCheck))...)
	if err != nil {
		return res, friendly(err)
	}
	d, err := u.deployImage(ctx, pr, r, iopt.Kargs, "")
	if err != nil {
		return res, err
	}
	first, err := u.bootDeployment(ctx, d)
	if err != nil {
		return res, err
	}
	if err := u.installLoader(ctx, d.Image, iopt.EFIDir); err != nil {
		return res, err
	}
	s, err := u.state(ctx)
	if err != nil {
		return res, err
	}
	var fallback *boot.Deployment
	if prev, ok := s.deps[s.def]; ok && s.def != d.ID {
		fb, err := u.bootDeployment(ctx, prev)
		if err != nil {
			return res, err
		}
		fallback = &fb
	}
	u.o.emit("stage", "writing the boot entries: "+d.ID+" first")
	if err := u.boot.Apply(ctx, first, fallback); err != nil {
		return res, friendly(err)
	}
	res.Changed, res.Deployment = true, d.ID
	res.Message = fmt.Sprintf("installed %s as %s (%s) on %s, boot partition %s", ref, d.ID, versionOr(d.Origin.Version, pr.Manifest), u.o.Sysroot, u.o.Boot)
	return res, nil
}

// installLoader copies systemd-boot to the boot partition: from efiDir when
// given, else from the image, else from this machine.
func (u *Updater) installLoader(ctx context.Context, img verity.Digest, efiDir string) error {
	fsys, err := u.store.OpenImageFS(ctx, img)
	if err != nil {
		return err
	}
	defer fsys.Close()
	var lfs fs.FS
	var p string
	if efiDir != "" {
		lfs, p = os.DirFS(efiDir), "systemd-bootx64.efi"
	} else if lfs, p, err = boot.LoaderFS(fsys); err != nil {
		return err
	}
	u.o.emit("stage", "installing systemd-boot from "+p)
	return friendly(u.boot.InstallLoader(ctx, lfs, p, nil))
}
