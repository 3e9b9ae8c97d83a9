package verity

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Enable turns on fs-verity for f with alg, 4096-byte blocks and no salt
// (FS_IOC_ENABLE_VERITY), after which the file is read-only for good and
// the kernel checks every read against the Merkle tree. f must be opened
// read-only, and no writable descriptor of the file may exist anywhere.
// The kernel reads the whole file, so this takes time on large files.
//
// Errors (all naming f.Name()) wrap ErrNotSupported when the kernel or
// filesystem lacks fs-verity, ErrFileBusy when a writable descriptor is
// open (ETXTBSY), ErrAlreadyEnabled when the file already has fs-verity,
// and otherwise the errno. Sentinel errors also wrap the errno.
//
// Enable holds syscall.ForkLock for reading during the ioctl, so that no
// child forked by this process still holds a copy of a writable descriptor
// it had not yet closed on exec (which would give ETXTBSY).
func Enable(f *os.File, alg Algorithm) error {
	if alg.Size() == 0 {
		return fmt.Errorf("%s: %w: %d", f.Name(), ErrUnknownAlgorithm, alg)
	}
	arg := unix.FsverityEnableArg{
		Version:        1,
		Hash_algorithm: uint32(alg),
		Block_size:     BlockSize,
	}
	errno := ioctl(f, unix.FS_IOC_ENABLE_VERITY, unsafe.Pointer(&arg), true)
	if errno == 0 {
		return nil
	}
	return ioctlError(f.Name(), "enable fs-verity", errno)
}

// measureArg is struct fsverity_digest followed by room for the largest
// digest.
type measureArg struct {
	unix.FsverityDigest
	digest [maxDigestSize]byte
}

// Measure returns the fs-verity digest the kernel holds for f
// (FS_IOC_MEASURE_VERITY). It equals DigestFile of the same contents with
// the algorithm verity was enabled with. Errors name f.Name() and wrap
// ErrNotEnabled (ENODATA) or ErrNotSupported, or the errno.
func Measure(f *os.File) (Digest, error) {
	var arg measureArg
	arg.Size = maxDigestSize
	errno := ioctl(f, unix.FS_IOC_MEASURE_VERITY, unsafe.Pointer(&arg), false)
	if errno != 0 {
		return Digest{}, ioctlError(f.Name(), "measure fs-verity", errno)
	}
	alg := Algorithm(arg.Algorithm)
	if int(arg.Size) > maxDigestSize || alg.Size() != int(arg.Size) {
		return Digest{}, fmt.Errorf("%s: %w: kernel reports algorithm %d with %d-byte digest",
			f.Name(), ErrUnknownAlgorithm, arg.Algorithm, arg.Size)
	}
	return NewDigest(alg, arg.digest[:arg.Size])
}

// IsEnabled reports whether f has fs-verity enabled, from the
// STATX_ATTR_VERITY attribute. On a filesystem without fs-verity it
// reports false and no error.
func IsEnabled(f *os.File) (bool, error) {
	var stx unix.Statx_t
	var err error
	rc, err := f.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("%s: %w", f.Name(), err)
	}
	cerr := rc.Control(func(fd uintptr) {
		err = unix.Statx(int(fd), "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, 0, &stx)
	})
	if cerr != nil {
		return false, fmt.Errorf("%s: %w", f.Name(), cerr)
	}
	if err != nil {
		return false, fmt.Errorf("%s: statx: %w", f.Name(), err)
	}
	return stx.Attributes&unix.STATX_ATTR_VERITY != 0, nil
}

// Supported probes whether the kernel and the filesystem holding f
// implement the fs-verity ioctls, by measuring f: a digest or ENODATA
// means yes, EOPNOTSUPP or ENOTTY means no. f may be any regular file on
// the filesystem. On ext4 and f2fs a true result still needs the
// filesystem's "verity" feature flag for Enable to succeed.
func Supported(f *os.File) (bool, error) {
	_, err := Measure(f)
	switch {
	case err == nil, errors.Is(err, ErrNotEnabled):
		return true, nil
	case errors.Is(err, ErrNotSupported):
		return false, nil
	}
	return false, err
}

// ioctl runs one ioctl on f's descriptor with a pointer argument,
// retrying on EINTR, optionally under syscall.ForkLock.
func ioctl(f *os.File, req uint, arg unsafe.Pointer, forkLock bool) syscall.Errno {
	rc, err := f.SyscallConn()
	if err != nil {
		return syscall.EBADF
	}
	var errno syscall.Errno
	cerr := rc.Control(func(fd uintptr) {
		if forkLock {
			syscall.ForkLock.RLock()
			defer syscall.ForkLock.RUnlock()
		}
		for {
			_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
			if errno != syscall.EINTR {
				return
			}
		}
	})
	if cerr != nil {
		return syscall.EBADF
	}
	return errno
}

// ioctlError maps an fs-verity ioctl errno to the package's sentinels.
func ioctlError(name, op string, errno syscall.Errno) error {
	switch errno {
	case unix.EOPNOTSUPP, unix.ENOTTY:
		return fmt.Errorf("%s: %w (%w)", name, ErrNotSupported, errno)
	case unix.ENODATA:
		return fmt.Errorf("%s: %w (%w)", name, ErrNotEnabled, errno)
	case unix.ETXTBSY:
		return fmt.Errorf("%s: %w (%w)", name, ErrFileBusy, errno)
	case unix.EEXIST:
		return fmt.Errorf("%s: %w (%w)", name, ErrAlreadyEnabled, errno)
	}
	return fmt.Errorf("%s: %s: %w", name, op, errno)
}
