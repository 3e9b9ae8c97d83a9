package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LockFile is the sysroot lock's name under the store root.
const LockFile = "lock"

// Holder describes the process holding the sysroot lock, as it wrote
// itself into the lock file.
type Holder struct {
	PID   int
	Verb  string
	Since time.Time
}

// String names the holder for messages: "pid 42 (upgrade, since ...)".
func (h Holder) String() string {
	if h.PID == 0 {
		return "another updatectl run (unknown pid)"
	}
	s := fmt.Sprintf("pid %d (%s", h.PID, h.Verb)
	if !h.Since.IsZero() {
		s += ", since " + h.Since.UTC().Format(time.RFC3339)
	}
	return s + ")"
}

// formatHolder and parseHolder are the lock file's content: one line
// "pid=N verb=V since=RFC3339".
func formatHolder(h Holder) []byte {
	return fmt.Appendf(nil, "pid=%d verb=%s since=%s\n", h.PID, h.Verb, h.Since.UTC().Format(time.RFC3339))
}

func parseHolder(b []byte) Holder {
	var h Holder
	for _, f := range strings.Fields(string(bytes.TrimSpace(b))) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "pid":
			h.PID, _ = strconv.Atoi(v)
		case "verb":
			h.Verb = v
		case "since":
			h.Since, _ = time.Parse(time.RFC3339, v)
		}
	}
	return h
}

// sysrootLock is the exclusive flock every state-changing operation holds
// on <store>/lock.
type sysrootLock struct {
	f *os.File
}

// LockOptions says how to take the sysroot lock.
type LockOptions struct {
	Verb   string // written into the lock for a waiting run's message
	NoWait bool   // fail at once with ErrLocked instead of waiting
	// Waiting is called once when the lock is busy and the call is going
	// to wait, naming the holder.
	Waiting func(Holder)
}

// acquireLock takes the lock at path (creating it), waiting until ctx is
// done unless NoWait. The holder records its pid and verb in the file.
func acquireLock(ctx context.Context, path string, o LockOptions) (*sysrootLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("updater: lock %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.EROFS) {
			return nil, fmt.Errorf("updater: the sysroot lock %s is on a read-only file system (%w); remount it read-write (mount -o remount,rw) or pass the right --sysroot", path, err)
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%w: cannot open the sysroot lock %s (%w); run as root", ErrNotRoot, path, err)
		}
		return nil, fmt.Errorf("updater: lock %s: %w", path, err)
	}
	how := unix.LOCK_EX
	err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		h := readHolder(path)
		if o.NoWait {
			f.Close()
			return nil, fmt.Errorf("%w by %s; wait for it to finish, or run again without --no-wait to queue behind it", ErrLocked, h)
		}
		if o.Waiting != nil {
			o.Waiting(h)
		}
		err = flockCtx(ctx, f, how)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("updater: lock %s: %w", path, err)
	}
	h := formatHolder(Holder{PID: os.Getpid(), Verb: o.Verb, Since: time.Now()})
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt(h, 0) // advisory: a waiting run's message; never fsynced
	}
	return &sysrootLock{f: f}, nil
}

// flockCtx waits for the lock, polling so that ctx can end the wait
// (a blocking flock cannot be interrupted from Go).
func flockCtx(ctx context.Context, f *os.File, how int) error {
	delay := 10 * time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 250*time.Millisecond)
	}
}

func readHolder(path string) Holder {
	b, err := os.ReadFile(path)
	if err != nil {
		return Holder{}
	}
	return parseHolder(b)
}

// release drops the lock. The holder line stays: it is only read while
// the lock is held by someone.
func (l *sysrootLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
