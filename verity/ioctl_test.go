package verity

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func mkfifo(path string) error { return unix.Mkfifo(path, 0o600) }

// TestIoctlsOnThisKernel runs Enable, Measure, IsEnabled and Supported on a
// real file in the test's temp directory. Where the kernel or filesystem
// lacks fs-verity (this project's CI kernel) they must report
// ErrNotSupported; where it has it, the kernel's measurement must equal
// DigestFile. (verity/vm_test.go covers a verity-capable kernel.)
func TestIoctlsOnThisKernel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("hello fs-verity\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if on, err := IsEnabled(f); err != nil || on {
		t.Fatalf("IsEnabled before Enable = %v, %v", on, err)
	}
	supported, err := Supported(f)
	if err != nil {
		t.Fatal(err)
	}
	if !supported {
		t.Logf("fs-verity is not supported here; checking the error mapping")
		if err := Enable(f, SHA256); !errors.Is(err, ErrNotSupported) || !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOTTY) {
			t.Errorf("Enable = %v, want ErrNotSupported", err)
		} else if want := path + ": "; err.Error()[:len(want)] != want {
			t.Errorf("Enable error %q does not start with the path", err)
		}
		if _, err := Measure(f); !errors.Is(err, ErrNotSupported) {
			t.Errorf("Measure = %v, want ErrNotSupported", err)
		}
		return
	}
	if _, err := Measure(f); !errors.Is(err, ErrNotEnabled) {
		t.Errorf("Measure before Enable = %v, want ErrNotEnabled", err)
	}
	if err := Enable(f, SHA256); errors.Is(err, ErrNotSupported) {
		t.Skipf("kernel has fs-verity but this filesystem cannot enable it: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	got, err := Measure(f)
	if err != nil {
		t.Fatal(err)
	}
	want, err := DigestFile(context.Background(), path, SHA256)
	if err != nil || got != want {
		t.Errorf("Measure = %v, DigestFile = %v, %v", got, want, err)
	}
	if on, err := IsEnabled(f); err != nil || !on {
		t.Errorf("IsEnabled after Enable = %v, %v", on, err)
	}
	if err := Enable(f, SHA256); !errors.Is(err, ErrAlreadyEnabled) {
		t.Errorf("second Enable = %v, want ErrAlreadyEnabled", err)
	}
}

// TestEnableUnknownAlgorithm checks the argument check before any ioctl.
func TestEnableUnknownAlgorithm(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Enable(f, Algorithm(7)); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("Enable(alg 7) = %v", err)
	}
}
