// Package updater holds the operations an administrator (updatectl) and
// the update service ask for — status, check, upgrade, switch, rollback,
// finalize, gc and install — one file each, composed from objstore, sync,
// deploy and boot. It holds no format or store code of its own: what it
// adds is the policy (which deployment is booted, staged, rollback; what
// gc keeps), the sysroot lock, and errors that name the fix.
//
// Every operation that changes the system runs under the sysroot lock
// (<store>/lock, exclusive); status and check read without it. A second
// writer waits, told who holds the lock, or fails at once with ErrLocked
// when LockOptions.NoWait is set.
package updater

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/twinroot/twinroot/boot"
	"github.com/twinroot/twinroot/deploy"
	"github.com/twinroot/twinroot/objstore"
	twsync "github.com/twinroot/twinroot/sync"
)

// Options configure one updater run.
type Options struct {
	// Sysroot is the physical root: "/" on an installer or a machine not
	// booted from twinroot, "/sysroot" on a booted twinroot system, or a
	// scratch directory.
	Sysroot string
	// Store is the object store root (default Sysroot/twinroot).
	Store string
	// Boot is the boot partition's mount point (ESP or XBOOTLDR).
	Boot string
	// AllowUnmountedBoot accepts a Boot directory that is not a mount
	// point (scratch boot directories of tests and the demo).
	AllowUnmountedBoot bool
	// Cmdline is the kernel command line that says what is booted (default:
	// the content of /proc/cmdline). Set, the mount table is not consulted:
	// it is the test hook that decides what counts as booted.
	Cmdline *string
	// Config is /etc/twinroot/config.toml (DefaultConfig when zero).
	Config Config
	// Log receives diagnostics (default: discard).
	Log *slog.Logger
	// Progress receives events of long operations (nil: none).
	Progress func(Event)
	// Lock says how to take the sysroot lock; Verb is set by each operation
	// when empty.
	Lock LockOptions
	// Pull are the registry options (credentials, registries.conf,
	// --tls-verify) of pulls and checks.
	Pull []twsync.Option
	// Arch is the architecture for kargs.d match-architectures (default
	// boot.Arch(), the running one).
	Arch string
	// EFIVars is where efivarfs is mounted (Bless; default the kernel's).
	EFIVars string
	// BootID overrides /proc/sys/kernel/random/boot_id: the test hook for
	// "a reboot happened" between staging and finalize.
	BootID string
}

// Updater is an open sysroot: store, deployments and boot partition, with
// the sysroot lock held until Close.
type Updater struct {
	o     Options
	lock  *sysrootLock
	store *objstore.Store
	dep   *deploy.Manager
	boot  *boot.Partition
}

func (o *Options) defaults() {
	if o.Sysroot == "" {
		o.Sysroot = "/"
	}
	if o.Store == "" {
		o.Store = filepath.Join(o.Sysroot, "twinroot")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Config.Update.AutoApply == "" {
		o.Config = DefaultConfig()
	}
	if o.Arch == "" {
		o.Arch = boot.Arch()
	}
}

func (o *Options) emit(phase, msg string) {
	o.Log.Info(msg, "phase", phase)
	if o.Progress != nil {
		o.Progress(Event{Kind: "Event", Phase: phase, Message: msg})
	}
}

// open takes the lock and opens store, deployments and boot partition.
// create initialises a missing store (install); shared (status, check)
// takes no lock.
func open(ctx context.Context, o Options, verb string, create, shared bool) (*Updater, error) {
	o.defaults()
	if o.Lock.Verb == "" {
		o.Lock.Verb = verb
	}
	if c := filepath.Clean(o.Sysroot); o.Boot == "" && c != "/" && c != "/sysroot" {
		return nil, fmt.Errorf("updater: --sysroot %s is not this system's, so its boot partition cannot be looked for: pass --boot DIR (the running system's boot partition is never written for another root)", o.Sysroot)
	}
	if !create {
		if _, err := os.Stat(filepath.Join(o.Store, "store.json")); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no twinroot store; install a system first with 'updatectl --sysroot %s install REF', or pass the right --sysroot",
				ErrNotInitialised, o.Store, o.Sysroot)
		}
	}
	if o.Lock.Waiting == nil {
		log := o.Log
		o.Lock.Waiting = func(h Holder) {
			log.Warn("waiting for the sysroot lock", "holder", h.String())
		}
	}
	// Readers take no lock: every change they could see is an atomic
	// rename (deployments, image directories, the entry set exchange), so
	// status answers at once even while a long upgrade runs.
	var l *sysrootLock
	if !shared {
		var err error
		if l, err = acquireLock(ctx, filepath.Join(o.Store, LockFile), o.Lock); err != nil {
			return nil, err
		}
	}
	u := &Updater{o: o, lock: l}
	var err error
	u.store, err = objstore.Open(ctx, o.Store, objstore.Options{Logger: o.Log, Create: create})
	if err != nil {
		l.release()
		return nil, friendly(err)
	}
	u.dep = deploy.New(u.store, o.Sysroot, o.Log)
	if o.Boot == "" {
		if o.Boot, err = boot.FindBootPartition(); err != nil {
			u.Close()
			return nil, fmt.Errorf("no boot partition found (%w); mount the ESP or XBOOTLDR partition, or pass --boot DIR", err)
		}
		u.o.Boot = o.Boot
	}
	u.boot, err = boot.Open(o.Boot, boot.Options{AllowUnmounted: o.AllowUnmountedBoot, Log: o.Log, EFIVarsDir: o.EFIVars})
	if err != nil {
		u.Close()
		return nil, friendly(err)
	}
	return u, nil
}

// Close releases the store and the sysroot lock.
func (u *Updater) Close() error {
	var err error
	if u.store != nil {
		err = u.store.Close()
	}
	u.lock.release()
	return err
}

// friendly adds the fix to errors a user meets.
func friendly(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotRoot), errors.Is(err, ErrNoSpace), errors.Is(err, ErrNotBootable),
		errors.Is(err, ErrUnreachable), errors.Is(err, ErrAuth), errors.Is(err, ErrLocked):
		return err // already explained
	case errors.Is(err, twsync.ErrUnauthorized):
		return fmt.Errorf("%w: %w; log in with 'podman login' or 'skopeo login' (or write an auth.json and pass --authfile); check the user name and password", ErrAuth, err)
	case errors.Is(err, twsync.ErrUnreachable):
		return fmt.Errorf("%w: %w; check the network, the registry's host and port in the reference, and proxy settings", ErrUnreachable, err)
	case errors.Is(err, twsync.ErrInsecure):
		return err // names registries.conf and --tls-verify=false itself
	case errors.Is(err, boot.ErrNoKernel), errors.Is(err, boot.ErrNoInitramfs):
		return fmt.Errorf("%w: %w; a bootable image carries /usr/lib/modules/<kver>/vmlinuz and initramfs.img (bootc image layout)", ErrNotBootable, err)
	case errors.Is(err, boot.ErrNotMounted):
		return fmt.Errorf("%w; mount the boot partition (ESP or XBOOTLDR) there, or pass --boot with the directory where it is mounted", err)
	case errors.Is(err, twsync.ErrNoSpace), errors.Is(err, boot.ErrNoSpace), errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("%w: %w; free space ('updatectl gc' removes deployments and images no longer needed) or grow the file system", ErrNoSpace, err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%w; remount the sysroot or boot partition read-write (mount -o remount,rw); if the kernel made a FAT boot partition read-only itself (dmesg: 'FAT-fs ... corrupted directory'), unmount it and run fsck.fat -a until it finds nothing: after a power cut, one pass can leave a directory the kernel refuses", err)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w: %w; run as root (sudo updatectl ...)", ErrNotRoot, err)
	case errors.Is(err, objstore.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotInitialised, err)
	}
	return err
}
