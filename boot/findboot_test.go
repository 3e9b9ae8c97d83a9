package boot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindBootPartition on a fake root: tmpfs mounts stand in for the
// partitions (the host has no vfat, so the ESP case is only the refusal of
// a mount that is not vfat); XBOOTLDR is recognised by udev's partition type.
func TestFindBootPartition(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs")
	}
	root := t.TempDir()
	for _, d := range []string{"efi", "boot", "boot/efi"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := findBootPartition(root); !errors.Is(err, ErrNoBootPartition) {
		t.Fatalf("nothing mounted: %v", err)
	}
	efi := filepath.Join(root, "efi")
	if err := unixMount("tmpfs", efi, "tmpfs", "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unixUnmount(efi) })
	if _, err := findBootPartition(root); !errors.Is(err, ErrNoBootPartition) || !strings.Contains(err.Error(), efi) {
		t.Fatalf("a tmpfs at /efi is not an ESP: %v", err)
	}
	boot := filepath.Join(root, "boot")
	if err := unixMount("tmpfs", boot, "tmpfs", "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unixUnmount(boot) })
	dev, err := deviceOf(boot)
	if err != nil {
		t.Fatal(err)
	}
	udev := filepath.Join(root, "run/udev/data")
	if err := os.MkdirAll(udev, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(udev, "b"+dev), []byte("E:ID_PART_ENTRY_TYPE=BC13C2FF-59E6-4262-A352-B275FD6F7172\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := findBootPartition(root)
	if err != nil || got != boot {
		t.Fatalf("XBOOTLDR at /boot: %q, %v", got, err)
	}
}
