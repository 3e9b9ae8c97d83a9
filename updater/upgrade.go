package updater

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/twinroot/twinroot/boot"
	"github.com/twinroot/twinroot/deploy"
	"github.com/twinroot/twinroot/objstore"
	twsync "github.com/twinroot/twinroot/sync"
	"github.com/twinroot/twinroot/verity"
)

// UpgradeOptions are the flags of upgrade and switch.
type UpgradeOptions struct {
	// DownloadOnly pulls the image and stops before deploying it.
	DownloadOnly bool
	// Apply reboots right after staging (the caller does it: Reboot).
	Apply bool
	// Kargs are extra kernel arguments for the new deployment, after the
	// image's kargs.d and the configuration's.
	Kargs []string
	// AllowDowngrade lets upgrade install an image older than the booted
	// one (never one below a deployment's signed floor). Rollback is the
	// way back to an installed deployment.
	AllowDowngrade bool
}

// Upgrade pulls what the origin names and, when it is new, deploys it
// (merging /etc from the booted deployment) and stages a boot entry set
// with it first and the booted deployment as fallback; finalize at
// shutdown makes the switch. Nothing happens when the origin's manifest is
// already booted, staged or the default.
func Upgrade(ctx context.Context, o Options, uo UpgradeOptions) (Result, error) {
	return upgrade(ctx, o, uo, "upgrade", "")
}

// upgrade is Upgrade and, with ref set, Switch.
func upgrade(ctx context.Context, o Options, uo UpgradeOptions, verb, ref string) (Result, error) {
	u, err := open(ctx, o, verb, false, false)
	if err != nil {
		return Result{}, err
	}
	defer u.Close()
	s, err := u.state(ctx)
	if err != nil {
		return Result{}, err
	}
	res := Result{APIVersion: APIVersion, Kind: "Result", Verb: verb, Removed: []string{}, Conflicts: []EtcConflict{}}
	origin, base := s.origin(u.o.Config)
	if ref != "" {
		origin = ref
	}
	if origin == "" {
		return res, fmt.Errorf("%w: no deployment and no origin in the configuration; use 'updatectl switch REF'", ErrNoOrigin)
	}
	u.o.emit("resolve", "checking "+origin)
	ropts := u.pullOptions()
	if ref == "" {
		// An upgrade of an image already booted, staged or the default
		// ends here: the daily service's run costs one manifest
		// request. (A switch to another reference of the same image
		// goes on, and needs the labels.)
		ropts = append(ropts, twsync.WithKnownManifest(s.hasManifest))
	}
	r, err := twsync.Resolve(ctx, origin, ropts...)
	if err != nil {
		return res, friendly(err)
	}
	if s.hasManifest(r.Manifest) && !(ref != "" && base != nil && base.Origin.Ref != ref) {
		res.Message = fmt.Sprintf("%s is up to date (manifest %s)", origin, r.Manifest)
		u.o.emit("resolve", res.Message)
		return res, nil
	}
	if ref != "" && s.stagedD != "" && s.deps[s.stagedD].Origin.Manifest == r.Manifest && s.deps[s.stagedD].Origin.Ref == ref {
		res.Message = fmt.Sprintf("%s is already staged as %s", ref, s.stagedD)
		return res, nil
	}
	u.o.emit("pull", fmt.Sprintf("pulling %s (%d layers, %s)", origin, r.Layers, humanBytes(r.Size)))
	popts := append(u.pullOptions(), twsync.WithSpaceCheck(u.spaceCheck))
	if verb == "upgrade" {
		// Versions are checked on what the pull resolved and the policy
		// accepted, before the store sees it: a tag re-pointed to an
		// older image, or a replayed old one, stops here. A switch is
		// the operator's explicit choice of image and is not compared.
		popts = append(popts, twsync.WithAccept(func(p twsync.Result) error {
			return u.checkVersion(ctx, s, base, p.Version, uo.AllowDowngrade)
		}))
	}
	pr, err := twsync.Pull(ctx, u.store, origin, popts...)
	if err != nil {
		return res, friendly(err)
	}
	res.Changed = true
	if uo.DownloadOnly {
		res.Message = fmt.Sprintf("downloaded %s as image %s; run 'updatectl upgrade' to stage it", origin, pr.Digest.Hex())
		return res, nil
	}
	from := ""
	if base != nil {
		from = base.ID
	}
	d, err := u.deployImage(ctx, pr, r, uo.Kargs, from)
	if err != nil {
		return res, err
	}
	res.Deployment = d.ID
	res.Conflicts = conflicts(d.Conflicts)
	var fallback *boot.Deployment
	if base != nil {
		fb, err := u.bootDeployment(ctx, *base)
		if err != nil {
			return res, err
		}
		fallback = &fb
	}
	first, err := u.bootDeployment(ctx, d)
	if err != nil {
		return res, err
	}
	u.o.emit("stage", "staging boot entries: "+d.ID+" first")
	if err := u.boot.Stage(ctx, first, fallback); err != nil {
		return res, friendly(err)
	}
	if err := u.markStaged(d.ID); err != nil {
		return res, err
	}
	res.RebootNeeded = true
	res.Message = fmt.Sprintf("staged %s (%s); it boots after the next reboot", d.ID, versionOr(d.Origin.Version, pr.Manifest))
	u.prune(ctx, &res)
	u.shareWithContainers(ctx)
	return res, nil
}

// prune removes, once the update is staged, what nothing needs any more,
// as ostree's upgrade does: the deployment a newer upgrade replaced as the
// staged one, the one that was the rollback before, and their images and
// kernels, so that a machine the timer keeps current does not fill its
// disk. Pinned deployments and images not made by a deployment stay (gc
// takes those). Best effort: the update is staged whatever happens here.
func (u *Updater) prune(ctx context.Context, res *Result) {
	c, err := u.collect(ctx, false)
	res.Removed, res.FreedBytes = append(res.Removed, c.removed...), c.bytes
	if err != nil {
		u.o.Log.Warn("pruning after the upgrade failed; the update is staged, 'updatectl gc' retries", "err", err)
		return
	}
	if len(c.removed) > 0 || c.objects > 0 {
		u.o.emit("gc", "pruned: "+c.String())
	}
}

// shareWithContainers links the store's objects with identical files of
// container storage (storage.containers in config.toml, under the
// sysroot: the persistent /var is <sysroot>/var). Best effort: a storage
// that is absent, busy or unreadable is "no sharing this time", never a
// failed update.
func (u *Updater) shareWithContainers(ctx context.Context) {
	c := u.o.Config.Storage.Containers
	if c == "" {
		return
	}
	root := filepath.Join(u.o.Sysroot, c)
	if _, err := os.Stat(root); err != nil {
		return
	}
	u.o.emit("deploy", "sharing files with container storage "+root)
	r, err := u.store.Dedup(ctx, objstore.DedupOptions{GraphRoot: root, Timeout: 30 * time.Second})
	switch {
	case err != nil:
		u.o.Log.Warn("sharing with container storage failed; the update is not affected", "storage", root, "err", err)
	case r.Skipped != "":
		u.o.Log.Info("no sharing with container storage this time", "storage", root, "reason", r.Skipped)
	default:
		u.o.Log.Info("shared files with container storage", "storage", root, "hardlinked", r.Hardlinked, "bytes", r.HardlinkedBytes)
	}
}

// Switch is Upgrade with a new origin: another image or tag, or an
// oci:/oci-archive: source for machines without a registry.
func Switch(ctx context.Context, o Options, ref string, uo UpgradeOptions) (Result, error) {
	if strings.TrimSpace(ref) == "" {
		return Result{}, fmt.Errorf("%w: switch needs an image reference", ErrNoOrigin)
	}
	return upgrade(ctx, o, uo, "switch", ref)
}

// deployImage makes a deployment of a pulled image, its /etc merged from
// the deployment from ("" = the image's /etc as is).
// r is what the check resolved; when the tag moved between check and
// pull, the labels come from the committed image and the creation time is
// left unknown.
func (u *Updater) deployImage(ctx context.Context, pr twsync.Result, r twsync.Resolved, kargs []string, from string) (deploy.Deployment, error) {
	origin := deploy.Origin{Ref: r.Source, Manifest: pr.Manifest, Config: pr.Config}
	if pr.Manifest == r.Manifest {
		origin.Version, origin.Created = r.Labels[LabelVersion], r.Created
	} else if info, err := u.store.Image(ctx, pr.Digest); err == nil {
		origin.Version = info.Meta.Labels[LabelVersion]
	}
	// The kernel comes first: an image that cannot boot, or whose kernel
	// does not fit on the boot partition, is refused before a deployment
	// exists. (Installing is once per content, so bootDeployment's second
	// call copies nothing.)
	if err := u.installKernel(ctx, pr.Digest); err != nil {
		return deploy.Deployment{}, err
	}
	u.o.emit("deploy", "deploying image "+pr.Digest.Hex()[:12]+mergeNote(from))
	all := append(append([]string{}, u.o.Config.Boot.Kargs...), kargs...)
	d, err := u.dep.Create(ctx, deploy.CreateOptions{Image: pr.Digest, Origin: origin, Kargs: all, MergeFrom: from})
	if err != nil {
		return deploy.Deployment{}, friendly(err)
	}
	return d, nil
}

func mergeNote(from string) string {
	if from == "" {
		return ""
	}
	return ", /etc merged from " + from
}

// installKernel copies an image's kernel and initramfs to the boot
// partition.
func (u *Updater) installKernel(ctx context.Context, d verity.Digest) error {
	fsys, err := u.store.OpenImageFS(ctx, d)
	if err != nil {
		return err
	}
	defer fsys.Close()
	k, err := boot.FindKernel(fsys)
	if err != nil {
		return friendly(fmt.Errorf("image %s: %w", d.Hex(), err))
	}
	u.o.emit("kernel", "installing kernel "+k.Version)
	if _, err := u.boot.InstallKernel(ctx, fsys, k); err != nil {
		return friendly(err)
	}
	return nil
}

// bootDeployment turns a deployment into what boot writes an entry from:
// the kernel installed on the boot partition (once per content), the
// image's kargs.d and os-release, and the deployment's own kernel
// arguments.
func (u *Updater) bootDeployment(ctx context.Context, d deploy.Deployment) (boot.Deployment, error) {
	fsys, err := u.store.OpenImageFS(ctx, d.Image)
	if err != nil {
		return boot.Deployment{}, err
	}
	defer fsys.Close()
	k, err := boot.FindKernel(fsys)
	if err != nil {
		return boot.Deployment{}, friendly(fmt.Errorf("deployment %s: %w", d.ID, err))
	}
	inst, err := u.boot.InstallKernel(ctx, fsys, k)
	if err != nil {
		return boot.Deployment{}, friendly(err)
	}
	ik, err := boot.ImageKargs(fsys, u.o.Arch)
	if err != nil {
		return boot.Deployment{}, err
	}
	osr := d.OSRelease
	if osr == nil {
		osr, _ = boot.ReadOSRelease(fsys)
	}
	root, err := u.rootSpec()
	if err != nil {
		return boot.Deployment{}, err
	}
	kargs := append([]string{"twinroot.verity=" + u.o.Config.Boot.Verity}, d.Kargs...)
	return boot.Deployment{ID: d.ID, Image: d.Image, OSRelease: osr, Version: d.Origin.Version, Kernel: inst,
		Root: root, ImageKargs: ik, Kargs: kargs}, nil
}

// spaceCheck is the pull's free-space check (the store's filesystem); the
// boot partition's is InstallKernel's.
func (u *Updater) spaceCheck(sp twsync.Space) error {
	return twsync.CheckSpace(sp)
}

func conflicts(cs []deploy.Conflict) []EtcConflict {
	out := []EtcConflict{}
	for _, c := range cs {
		out = append(out, EtcConflict{Path: c.Path, Reason: c.Reason})
	}
	return out
}

func versionOr(v, manifest string) string {
	if v != "" {
		return "version " + v
	}
	return "manifest " + manifest
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
