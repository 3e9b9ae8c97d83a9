package updater

import "errors"

// Errors of the updater. Each message a user sees names the fix; the
// sentinels let the CLI pick an exit code and tests check the class.
var (
	// ErrLocked: another run holds the sysroot lock (with NoWait).
	ErrLocked = errors.New("the sysroot is locked")
	// ErrNotRoot: the operation needs root (or write access to the sysroot).
	ErrNotRoot = errors.New("permission denied")
	// ErrNotInitialised: the sysroot has no twinroot store (or no deployment).
	ErrNotInitialised = errors.New("sysroot not initialised")
	// ErrNotBootable: the image lacks a kernel or initramfs.
	ErrNotBootable = errors.New("image not bootable")
	// ErrNoSpace: the store's filesystem or the boot partition is full.
	ErrNoSpace = errors.New("not enough space")
	// ErrUnreachable: the registry cannot be reached.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrAuth: the registry refused the credentials (or there were none).
	ErrAuth = errors.New("registry refused the credentials")
	// ErrNoDeployment: there is no deployment to act on (e.g. no rollback).
	ErrNoDeployment = errors.New("no such deployment")
	// ErrConfig: /etc/twinroot/config.toml is malformed.
	ErrConfig = errors.New("bad configuration")
	// ErrNoOrigin: neither the booted deployment nor the configuration
	// names an image to follow.
	ErrNoOrigin = errors.New("no origin to update from")
)
