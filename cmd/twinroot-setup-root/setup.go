package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/internal/bootarg"
	"github.com/twinroot/twinroot/verity"
)

// Errors of setupRoot. Each is wrapped with the path, digest or id it
// concerns.
var (
	// ErrRefused: the image does not match the command line, or the
	// verity policy forbids booting it.
	ErrRefused = errors.New("refusing to boot")
	// ErrLayout: the store, deployment or image is missing or malformed.
	ErrLayout = errors.New("bad sysroot layout")
	// ErrMount: a mount step failed (everything mounted before it was undone).
	ErrMount = errors.New("mount failed")
)

// Store layout on the physical root (see docs/architecture.md).
const (
	storeDir       = "twinroot"
	imagesDir      = "images"
	deploymentsDir = "deployments"
	imageFile      = "image.cfs"
)

// Paths says where setupRoot works.
type Paths struct {
	// Sysroot is the physical root file system, already mounted.
	Sysroot string
	// Target is where the new root is put; when it equals Sysroot (the
	// initrd convention) the physical root mount there is replaced.
	Target string
	// RunDir holds the private staging mount while the new root is
	// assembled (a tmpfs: /run in the initramfs).
	RunDir string
}

// layout is where the pieces of one boot are, all under Sysroot.
type layout struct {
	store, imageDir, image, deployment, etc, varDir string
}

func newLayout(sysroot string, arg bootarg.Arg) layout {
	store := filepath.Join(sysroot, storeDir)
	imageDir := filepath.Join(store, imagesDir, arg.Image.Hex())
	dep := filepath.Join(store, deploymentsDir, arg.ID)
	return layout{
		store:      store,
		imageDir:   imageDir,
		image:      filepath.Join(imageDir, imageFile),
		deployment: dep,
		etc:        filepath.Join(dep, "etc"),
		varDir:     filepath.Join(sysroot, "var"),
	}
}

// mountPoints are the directories the image must have: the overlay is
// read-only, so nothing can be created in it.
var mountPoints = [...]string{"etc", "var", "sysroot"}

// setupRoot assembles the deployment arg on the physical root at
// p.Sysroot and puts the result at p.Target:
//
//  1. check that the deployment's etc/ and the image exist, that
//     image.cfs's fs-verity digest is the one on the command line (the
//     kernel's measurement; under PolicyIfSupported without fs-verity, a
//     digest computed here), and that the image has etc, var and sysroot
//     directories to mount on;
//  2. in a private tmpfs under p.RunDir, mount the composefs image
//     (EROFS + overlayfs, the image's directory as the data-only layer,
//     verity=require unless the policy allowed off), bind the
//     deployment's etc/ on /etc, <sysroot>/var (created if missing) on
//     /var, and the physical root (recursively) on /sysroot;
//  3. detach the physical root from p.Target (when it is p.Sysroot) and
//     move the new root there.
//
// Assembling under a private mount keeps MS_MOVE legal when the initrd's
// mounts are shared (systemd makes / shared; the kernel refuses to move a
// mount whose parent is shared). Until step 3 nothing outside the staging
// directory has changed, and on any error every mount made so far is
// undone in reverse order. In step 3 a failed move puts the physical
// root back at p.Sysroot.
func setupRoot(ctx context.Context, sys mounter, p Paths, arg bootarg.Arg, policy Policy, log *slog.Logger) (err error) {
	start := time.Now()
	lap := start
	// Step times go into one summary line (each is also a debug line):
	// fewer console writes, and the benchmark reads them from the log.
	var steps strings.Builder
	step := func(name string, args ...any) {
		now := time.Now()
		fmt.Fprintf(&steps, " %s=%s", name, ms(now.Sub(lap)))
		log.Debug("step done", append([]any{"step", name, "ms", ms(now.Sub(lap))}, args...)...)
		lap = time.Now() // the log write is not the next step's
	}
	l := newLayout(p.Sysroot, arg)
	replace := sameFile(p.Sysroot, p.Target)

	// 1. Check everything before mounting anything.
	if replace {
		if mp, err := isMountPoint(p.Sysroot); err != nil {
			return fmt.Errorf("%w: %w", ErrLayout, err)
		} else if !mp {
			return fmt.Errorf("%w: %s is not a mount point: the physical root must be mounted there", ErrLayout, p.Sysroot)
		}
	}
	if fi, err := os.Stat(p.Target); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: target %s is not a directory (%v)", ErrLayout, p.Target, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(p.Sysroot, &sfs); err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, &os.PathError{Op: "statfs", Path: p.Sysroot, Err: err})
	}
	if sfs.Flags&unix.ST_RDONLY != 0 {
		log.Warn("the physical root is mounted read-only, so /etc and /var will be too (boot with rw)", "sysroot", p.Sysroot)
	}
	if fi, err := os.Stat(l.etc); err != nil {
		return fmt.Errorf("%w: deployment %s: %w", ErrLayout, arg.ID, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("%w: deployment %s: %s is not a directory", ErrLayout, arg.ID, l.etc)
	}
	f, err := os.Open(l.image)
	if err != nil {
		return fmt.Errorf("%w: image %s of deployment %s: %w", ErrLayout, arg.Image.Hex(), arg.ID, err)
	}
	defer f.Close()
	mode, err := checkImage(ctx, f, arg, policy, log)
	if err != nil {
		return err
	}
	step("verify", "image", l.image, "verity", mode.String())
	if err := checkMountPoints(f, l.image); err != nil {
		return err
	}
	step("inspect")

	// 2. Assemble the new root in a private staging mount.
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(log)
		}
	}()
	stage, err := os.MkdirTemp(p.RunDir, ".twinroot-setup-root.")
	if err != nil {
		return fmt.Errorf("%w: staging directory: %w", ErrMount, err)
	}
	undo.push("remove "+stage, func() error { return os.Remove(stage) })
	if err := sys.Mount("tmpfs", stage, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64k"); err != nil {
		return fmt.Errorf("%w: tmpfs on %s: %w", ErrMount, stage, err)
	}
	undo.push("unmount "+stage, func() error { return sys.Unmount(stage, unix.MNT_DETACH) })
	if err := sys.Mount("", stage, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("%w: making %s private: %w", ErrMount, stage, err)
	}
	root := filepath.Join(stage, "root")
	tmp := filepath.Join(stage, "tmp")
	for _, d := range []string{root, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("%w: %w", ErrMount, err)
		}
	}
	step("stage", "dir", stage)

	// The image is mounted through the descriptor that was measured, so
	// the file checked is the file mounted. erofs.Mount attaches the EROFS
	// layer to a temp directory for a moment on kernels before 6.15:
	// TMPDIR keeps that inside the private tmpfs.
	img := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	err = withTMPDIR(tmp, func() error {
		return sys.MountImage(ctx, img, l.imageDir, root, erofs.MountOptions{Verity: mode, Logger: log})
	})
	if err != nil {
		return fmt.Errorf("%w: composefs image %s: %w", ErrMount, l.image, err)
	}
	undo.push("unmount "+root, func() error { return sys.Unmount(root, unix.MNT_DETACH) })
	step("mount", "verity", mode.String())

	if err := bind(sys, l.etc, filepath.Join(root, "etc"), 0, &undo); err != nil {
		return err
	}
	step("bind-etc", "from", l.etc)
	if err := os.Mkdir(l.varDir, 0o755); err == nil {
		log.Info("created the persistent /var", "dir", l.varDir)
	} else if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: persistent /var: %w", ErrLayout, err)
	}
	if err := bind(sys, l.varDir, filepath.Join(root, "var"), 0, &undo); err != nil {
		return err
	}
	step("bind-var", "from", l.varDir)
	inner := filepath.Join(root, "sysroot")
	if err := bind(sys, p.Sysroot, inner, unix.MS_REC, &undo); err != nil {
		return err
	}
	step("bind-sysroot")

	// 3. Put the new root in place.
	if replace {
		if err := sys.Unmount(p.Sysroot, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("%w: detaching the physical root from %s: %w", ErrMount, p.Sysroot, err)
		}
		if err := sys.Mount(root, p.Target, "", unix.MS_MOVE, ""); err != nil {
			// Put the physical root back where it was (the recursive
			// bind holds the same mounts), then undo the rest.
			if rerr := sys.Mount(inner, p.Sysroot, "", unix.MS_MOVE, ""); rerr != nil {
				log.Error("could not put the physical root back", "dir", p.Sysroot, "err", rerr)
			} else {
				undo.drop() // the inner bind has moved back to p.Sysroot
			}
			return fmt.Errorf("%w: moving the new root to %s: %w", ErrMount, p.Target, err)
		}
	} else if err := sys.Mount(root, p.Target, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("%w: moving the new root to %s: %w", ErrMount, p.Target, err)
	}
	// Nothing under the staging tmpfs is mounted any more.
	if err := sys.Unmount(stage, 0); err != nil {
		log.Warn("unmounting the staging tmpfs", "dir", stage, "err", err)
	} else if err := os.Remove(stage); err != nil {
		log.Warn("removing the staging directory", "dir", stage, "err", err)
	}
	step("switch", "target", p.Target)
	log.Info("new root in place", "deployment", arg.ID, "image", arg.Image.Hex(), "target", p.Target,
		"verity", mode.String(), "total_ms", ms(time.Since(start)), "steps_ms", strings.TrimSpace(steps.String()))
	return nil
}

// checkImage compares image.cfs (open as f) with the digest on the
// command line and returns the overlay's verity mode. With fs-verity the
// kernel's measurement is used (and the mode is require); without it,
// PolicyRequire refuses and PolicyIfSupported computes the digest here and
// returns VerityOff, with a warning.
func checkImage(ctx context.Context, f *os.File, arg bootarg.Arg, policy Policy, log *slog.Logger) (erofs.VerityMode, error) {
	want := arg.Image
	got, merr := verity.Measure(f)
	switch {
	case merr == nil:
		if got != want {
			return 0, fmt.Errorf("%w deployment %s: %s has fs-verity digest %s, but the kernel command line names %s",
				ErrRefused, arg.ID, f.Name(), got, want)
		}
		return erofs.VerityRequire, nil
	case errors.Is(merr, verity.ErrNotSupported), errors.Is(merr, verity.ErrNotEnabled):
		if policy == PolicyRequire {
			return 0, fmt.Errorf("%w deployment %s: %s has no fs-verity (%w) and the verity policy is require (%s=if-supported boots without it)",
				ErrRefused, arg.ID, f.Name(), merr, VerityKey)
		}
		got, err := verity.DigestFileHandle(ctx, f, want.Algorithm())
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrLayout, err)
		}
		if got != want {
			return 0, fmt.Errorf("%w deployment %s: %s has digest %s (computed, no fs-verity), but the kernel command line names %s",
				ErrRefused, arg.ID, f.Name(), got, want)
		}
		log.Warn("fs-verity is not available: the image digest was checked in software and the root is mounted WITHOUT fs-verity checks of file contents (verity=off)",
			"image", f.Name(), "policy", policy.String(), "reason", merr)
		return erofs.VerityOff, nil
	}
	return 0, fmt.Errorf("%w: %w", ErrLayout, merr)
}

// checkMountPoints checks that the image (open as f) has a directory for
// each of mountPoints.
func checkMountPoints(f *os.File, name string) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	img, err := erofs.Open(f, st.Size())
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrLayout, name, err)
	}
	for _, d := range mountPoints {
		fi, err := img.Lstat(d)
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("%w: image %s has no /%s directory to mount on", ErrLayout, name, d)
		}
	}
	return nil
}

// bind bind-mounts src on dst (flags may add MS_REC) and pushes its undo.
func bind(sys mounter, src, dst string, flags uintptr, undo *undoStack) error {
	if err := sys.Mount(src, dst, "", unix.MS_BIND|flags, ""); err != nil {
		return fmt.Errorf("%w: bind %s on %s: %w", ErrMount, src, dst, err)
	}
	undo.push("unmount "+dst, func() error { return sys.Unmount(dst, unix.MNT_DETACH) })
	return nil
}

// mounter is the mounting setupRoot does, so that tests can make each
// call fail in turn and check what is left behind.
type mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	Unmount(target string, flags int) error
	MountImage(ctx context.Context, image, objects, target string, opts erofs.MountOptions) error
}

// kernel is the mounter of the running kernel.
type kernel struct{}

var _ mounter = kernel{}

func (kernel) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

func (kernel) Unmount(target string, flags int) error { return unix.Unmount(target, flags) }

func (kernel) MountImage(ctx context.Context, image, objects, target string, opts erofs.MountOptions) error {
	return erofs.Mount(ctx, image, objects, target, opts)
}

// isMountPoint reports whether dir is the root of a mount.
func isMountPoint(dir string) (bool, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &st); err != nil {
		return false, &os.PathError{Op: "statx", Path: dir, Err: err}
	}
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, fmt.Errorf("statx %s: the kernel does not report mount roots", dir)
	}
	return st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// withTMPDIR runs fn with $TMPDIR set to dir, then restores it.
func withTMPDIR(dir string, fn func() error) error {
	old, had := os.LookupEnv("TMPDIR")
	if err := os.Setenv("TMPDIR", dir); err != nil {
		return err
	}
	defer func() {
		if had {
			os.Setenv("TMPDIR", old)
		} else {
			os.Unsetenv("TMPDIR")
		}
	}()
	return fn()
}

// sameFile reports whether a and b name the same directory.
func sameFile(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// undoStack holds the actions that reverse the steps done so far.
type undoStack []undoAction

type undoAction struct {
	what string
	fn   func() error
}

func (u *undoStack) push(what string, fn func() error) { *u = append(*u, undoAction{what, fn}) }

// drop forgets the last action (its step was reversed another way).
func (u *undoStack) drop() { *u = (*u)[:len(*u)-1] }

// run undoes in reverse order, logging what fails.
func (u *undoStack) run(log *slog.Logger) {
	for i := len(*u) - 1; i >= 0; i-- {
		a := (*u)[i]
		if err := a.fn(); err != nil {
			log.Error("undo failed", "action", a.what, "err", err)
		} else {
			log.Debug("undone", "action", a.what)
		}
	}
	*u = nil
}
