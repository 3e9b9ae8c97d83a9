package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinroot/twinroot/erofs"
)

// failingMounter passes calls to the kernel until call number failAt
// (1-based), which fails; later calls (the undo) pass again.
type failingMounter struct {
	failAt, calls int
	failed        string // the call that failed
}

var _ mounter = (*failingMounter)(nil)

var errInjected = errors.New("injected failure")

func (f *failingMounter) fail(what string) error {
	f.calls++
	if f.calls == f.failAt {
		f.failed = what
		return errInjected
	}
	return nil
}

func (f *failingMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	if err := f.fail(fmt.Sprintf("mount %s on %s (%s, %#x)", source, target, fstype, flags)); err != nil {
		return err
	}
	return kernel{}.Mount(source, target, fstype, flags, data)
}

func (f *failingMounter) Unmount(target string, flags int) error {
	if err := f.fail("unmount " + target); err != nil {
		return err
	}
	return kernel{}.Unmount(target, flags)
}

func (f *failingMounter) MountImage(ctx context.Context, image, objects, target string, opts erofs.MountOptions) error {
	if err := f.fail("composefs on " + target); err != nil {
		return err
	}
	return kernel{}.MountImage(ctx, image, objects, target, opts)
}

// TestSetupRootFailEachMount makes each mount call of setupRoot fail in
// turn (the staging tmpfs, making it private, the composefs mount, the
// three binds, detaching the physical root, the move to the target) and
// checks that each failure leaves the physical root mounted at its place
// with nothing else mounted and no staging directory: the undo order and
// the put-back after a failed move. A failure of the last call, the
// staging tmpfs's unmount after the switch, leaves the new root in place.
func TestSetupRootFailEachMount(t *testing.T) {
	fx, runDir, _ := hostEnv(t)
	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := Paths{Sysroot: fx.sysroot, Target: fx.sysroot, RunDir: runDir}
	var failed []string
	for k := 1; ; k++ {
		m := &failingMounter{failAt: k}
		err := setupRoot(context.Background(), m, p, fx.arg, PolicyIfSupported, log)
		if m.failed == "" {
			// No call k: every call has failed once; this run succeeded.
			if err != nil {
				t.Fatalf("run without an injected failure: %v", err)
			}
			checkNewRoot(t, fx.sysroot, fx)
			break
		}
		failed = append(failed, m.failed)
		if err == nil {
			// Only the staging tmpfs's unmount after the switch may fail
			// without failing the setup.
			if m.failed != "unmount "+stagingDirOf(t, runDir) {
				t.Fatalf("call %d (%s) failed, setupRoot succeeded", k, m.failed)
			}
			checkNewRoot(t, fx.sysroot, fx)
			break
		}
		if !errors.Is(err, errInjected) {
			t.Errorf("call %d (%s): error %v does not wrap the injected failure", k, m.failed, err)
		}
		t.Logf("call %d (%s) failed: %v", k, m.failed, err)
		assertUntouched(t, fx, runDir)
		if t.Failed() {
			t.Fatalf("after the failure of call %d (%s)", k, m.failed)
		}
	}
	// The calls that failed, in order: tmpfs, private, composefs, 3 binds,
	// detach, move, and the staging unmount.
	if len(failed) != 9 {
		t.Errorf("%d calls failed in turn, want 9: %q", len(failed), failed)
	}
}

// stagingDirOf returns the one staging directory left in runDir.
func stagingDirOf(t *testing.T, runDir string) string {
	t.Helper()
	ents, err := os.ReadDir(runDir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("%s holds %v (%v), want the staging directory", runDir, ents, err)
	}
	return filepath.Join(runDir, ents[0].Name())
}

// tWriter sends log lines to t.Log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
