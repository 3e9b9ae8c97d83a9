package erofs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/verity"
)

// VerityMode selects how the overlay mount checks external file content
// against the fs-verity digests stored in the image (overlayfs "verity=").
type VerityMode int

// The verity modes. VerityAuto is the zero value.
const (
	// VerityAuto uses VerityRequire when the objects' filesystem supports
	// fs-verity and VerityOff (with a logged warning) when it does not.
	VerityAuto VerityMode = iota
	// VerityRequire refuses to open any external file whose object lacks
	// fs-verity or whose digest differs (EIO).
	VerityRequire
	// VerityOn checks the digest of objects that have fs-verity enabled.
	VerityOn
	// VerityOff checks nothing.
	VerityOff
)

// String returns "auto", "require", "on" or "off".
func (m VerityMode) String() string {
	switch m {
	case VerityAuto:
		return "auto"
	case VerityRequire:
		return "require"
	case VerityOn:
		return "on"
	case VerityOff:
		return "off"
	}
	return "VerityMode(" + strconv.Itoa(int(m)) + ")"
}

// ParseVerityMode parses "auto", "require", "on" or "off".
func ParseVerityMode(s string) (VerityMode, error) {
	for m := VerityAuto; m <= VerityOff; m++ {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("erofs: unknown verity mode %q (want auto, require, on or off)", s)
}

// MountOptions tune Mount.
type MountOptions struct {
	// Verity is the overlayfs verity mode; see VerityMode.
	Verity VerityMode
	// Logger receives warnings (verity turned off) and debug messages;
	// nil discards them.
	Logger *slog.Logger
}

// ErrMount wraps the errors of Mount, with the kernel's own message when
// it gave one.
var ErrMount = errors.New("erofs: mount failed")

// mountSource is the overlay's source name as shown in /proc/mounts.
const mountSource = "composefs"

// Mount mounts the composefs image file image read-only at target: the
// EROFS image is mounted straight from the file (through a loop device on
// kernels that cannot), privately (a detached mount that only the overlay
// references), and an overlayfs with metacopy=on, redirect_dir=on,
// the image as its lower layer and objects as its data-only layer is
// moved onto target. "noacl" is passed unless the image says it has ACLs.
func Mount(ctx context.Context, image, objects, target string, opts MountOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	img, err := OpenFile(image)
	if err != nil {
		return fmt.Errorf("erofs: mount %s: %w", image, err)
	}
	hasACL := img.HasACL()
	f := img.c.(*os.File)
	defer img.Close()

	if st, err := os.Stat(objects); err != nil {
		return fmt.Errorf("erofs: mount: objects: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("erofs: mount: objects %s: %w", objects, ErrNotDir)
	}
	mode := opts.Verity
	if mode == VerityAuto {
		mode = probeVerity(objects, log)
	}

	emnt, err := mountErofs(f, image, hasACL, log)
	if err != nil {
		return err
	}
	defer unix.Close(emnt)
	layer := "/proc/self/fd/" + strconv.Itoa(emnt)
	err = mountOverlay(layer, objects, target, mode, log)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 6.15 cannot use a detached mount as a layer
		// ("failed to clone lowerpath"): attach it to a private temp dir
		// for the time it takes to create the overlay, then detach it.
		log.Debug("overlay refused the detached EROFS mount; retrying through a temp dir", "err", err)
		err = mountOverlayViaDir(emnt, objects, target, mode, log)
	}
	if err != nil {
		return fmt.Errorf("erofs: mount %s on %s: %w", image, target, err)
	}
	log.Debug("mounted composefs image", "image", image, "objects", objects, "target", target, "verity", mode)
	return nil
}

// probeVerity decides VerityAuto: require when the objects' filesystem can
// enable fs-verity, else off, with a warning.
func probeVerity(objects string, log *slog.Logger) VerityMode {
	ok, err := verityWorks(objects)
	if ok {
		return VerityRequire
	}
	log.Warn("fs-verity is not available for the object directory; mounting WITHOUT verity checks (verity=off)",
		"objects", objects, "reason", err)
	return VerityOff
}

// verityWorks tries fs-verity on a nameless O_TMPFILE in dir, so that a
// crash can never leave a probe file among the objects (for a store image,
// dir is the image's own directory); when dir is not writable it looks at
// the first object instead.
func verityWorks(dir string) (bool, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		w := os.NewFile(uintptr(fd), filepath.Join(dir, "(probe)"))
		_, werr := w.Write(make([]byte, verity.BlockSize))
		// fs-verity needs a descriptor that is not writable and no writer
		// left: reopen read-only through /proc, then close the writer.
		f, oerr := os.Open(fmt.Sprintf("/proc/self/fd/%d", fd))
		cerr := w.Close()
		if werr != nil || oerr != nil || cerr != nil {
			if f != nil {
				f.Close()
			}
			return false, errors.Join(werr, oerr, cerr)
		}
		defer f.Close()
		if err := verity.Enable(f, verity.SHA256); err != nil {
			return false, err
		}
		return true, nil
	}
	var found *os.File
	werr := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		found, err = os.Open(p)
		if err != nil {
			return nil
		}
		return fs.SkipAll
	})
	if found == nil {
		return false, fmt.Errorf("cannot probe %s: %w", dir, errors.Join(err, werr))
	}
	defer found.Close()
	return verity.IsEnabled(found)
}

// kernelError wraps errno with the messages the kernel logged on the
// filesystem context fd (the "e ..." lines of fsopen's log).
func kernelError(fsfd int, what string, errno error) error {
	var msgs []string
	buf := make([]byte, 4096)
	for i := 0; i < 16; i++ {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(bytes.TrimRight(buf[:n], "\x00"))))
	}
	if len(msgs) > 0 {
		return fmt.Errorf("%w: %s: %w (%s)", ErrMount, what, errno, strings.Join(msgs, "; "))
	}
	return fmt.Errorf("%w: %s: %w", ErrMount, what, errno)
}

// mountErofs mounts the image read-only and returns the detached mount's
// fd. On ENOTBLK (no file-backed EROFS) it retries through a loop device
// that the kernel frees when the mount goes away.
func mountErofs(f *os.File, image string, hasACL bool, log *slog.Logger) (int, error) {
	src := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	mfd, err := fsmountErofs(src, hasACL)
	if errors.Is(err, unix.ENOTBLK) {
		log.Debug("EROFS cannot mount a file here; using a loop device", "image", image)
		loop, lerr := attachLoop(f)
		if lerr != nil {
			return -1, fmt.Errorf("erofs: mount %s: %w (loop device: %w)", image, err, lerr)
		}
		defer loop.Close()
		mfd, err = fsmountErofs(loop.Name(), hasACL)
	}
	if err != nil {
		return -1, fmt.Errorf("erofs: mount %s: %w", image, err)
	}
	return mfd, nil
}

func fsmountErofs(src string, hasACL bool) (int, error) {
	fsfd, err := unix.Fsopen("erofs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("%w: fsopen erofs: %w", ErrMount, err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigSetString(fsfd, "source", src); err != nil {
		return -1, kernelError(fsfd, "erofs source", err)
	}
	if err := unix.FsconfigSetFlag(fsfd, "ro"); err != nil {
		return -1, kernelError(fsfd, "erofs ro", err)
	}
	if !hasACL {
		if err := unix.FsconfigSetFlag(fsfd, "noacl"); err != nil {
			return -1, kernelError(fsfd, "erofs noacl", err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, kernelError(fsfd, "erofs create", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOSUID)
	if err != nil {
		return -1, kernelError(fsfd, "erofs fsmount", err)
	}
	return mfd, nil
}

// attachLoop binds f to a free loop device, read-only and autoclear.
func attachLoop(f *os.File) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	for try := 0; try < 8; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev, err := os.OpenFile("/dev/loop"+strconv.Itoa(n), os.O_RDONLY, 0)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("LOOP_CONFIGURE: %w", err)
		}
	}
	return nil, fmt.Errorf("no free loop device: %w", unix.EBUSY)
}

// mountOverlayViaDir attaches the detached EROFS mount emnt to a new temp
// directory, builds the overlay on it, and lazily unmounts and removes the
// directory again (the overlay keeps its own reference to the layer).
func mountOverlayViaDir(emnt int, objects, target string, mode VerityMode, log *slog.Logger) error {
	dir, err := os.MkdirTemp("", ".twinroot-erofs-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := unix.MoveMount(emnt, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("%w: move_mount to %s: %w", ErrMount, dir, err)
	}
	defer func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			log.Warn("detaching the temporary EROFS mount failed", "dir", dir, "err", err)
		}
	}()
	return mountOverlay(dir, objects, target, mode, log)
}

// escapeLegacyLayer escapes a path for the legacy "lowerdir=" syntax.
func escapeLegacyLayer(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `,`, `\,`)
	return r.Replace(p)
}

// mountOverlay builds the read-only overlay of layer (the EROFS mount)
// with objects as data-only layer and moves it onto target.
func mountOverlay(layer, objects, target string, mode VerityMode, log *slog.Logger) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("%w: fsopen overlay: %w", ErrMount, err)
	}
	defer unix.Close(fsfd)
	set := func(k, v string) error {
		if err := unix.FsconfigSetString(fsfd, k, v); err != nil {
			return kernelError(fsfd, "overlay "+k+"="+v, err)
		}
		return nil
	}
	for _, kv := range [][2]string{{"source", mountSource}, {"metacopy", "on"}, {"redirect_dir", "on"}} {
		if err := set(kv[0], kv[1]); err != nil {
			return err
		}
	}
	switch mode {
	case VerityRequire, VerityOn:
		if err := set("verity", mode.String()); err != nil {
			return err
		}
	case VerityOff:
		if err := set("verity", "off"); err != nil {
			log.Debug("overlayfs has no verity option", "err", err)
		}
	}
	if err := set("lowerdir+", layer); err != nil {
		// Kernels before 6.7 have no lowerdir+/datadir+: use the
		// legacy data-only syntax "lower::data".
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
		if err := set("lowerdir", escapeLegacyLayer(layer)+"::"+escapeLegacyLayer(objects)); err != nil {
			return err
		}
	} else if err := set("datadir+", objects); err != nil {
		return err
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return kernelError(fsfd, "overlay create", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY)
	if err != nil {
		return kernelError(fsfd, "overlay fsmount", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("%w: move_mount to %s: %w", ErrMount, target, err)
	}
	return nil
}

// Unmount unmounts a composefs image mounted by Mount at target. The
// private EROFS mount under it goes away with it.
func Unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil {
		return &os.PathError{Op: "unmount", Path: target, Err: err}
	}
	return nil
}
