package updater

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLock: a second writer fails at once with NoWait, naming the holder's
// pid and verb, or waits (told who holds it) until the first releases.
func TestLock(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store", LockFile)
	first, err := acquireLock(ctx, path, LockOptions{Verb: "upgrade"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = acquireLock(ctx, path, LockOptions{Verb: "gc", NoWait: true})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock with NoWait: %v, want ErrLocked", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "upgrade") || !strings.Contains(msg, "pid "+itoa(os.Getpid())) {
		t.Errorf("message %q does not name the holder", msg)
	}

	waited := make(chan Holder, 1)
	got := make(chan error, 1)
	go func() {
		l, err := acquireLock(ctx, path, LockOptions{Verb: "gc", Waiting: func(h Holder) { waited <- h }})
		if err == nil {
			defer l.release()
		}
		got <- err
	}()
	h := <-waited
	if h.PID != os.Getpid() || h.Verb != "upgrade" {
		t.Errorf("waiting run was told %+v", h)
	}
	select {
	case err := <-got:
		t.Fatalf("second writer got the lock while the first held it (err %v)", err)
	default:
	}
	first.release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	// A waiter gives up when its context ends.
	l, err := acquireLock(ctx, path, LockOptions{Verb: "upgrade"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.release()
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := acquireLock(cctx, path, LockOptions{Verb: "gc"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting with a dead context: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestHolderRoundTrip(t *testing.T) {
	h := Holder{PID: 42, Verb: "switch", Since: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	if got := parseHolder(formatHolder(h)); got != h {
		t.Errorf("round trip: %+v != %+v", got, h)
	}
	if got := parseHolder([]byte("garbage")); got.PID != 0 {
		t.Errorf("garbage parsed as %+v", got)
	}
}
