package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Kernel is a prepared guest kernel: the image and the base initramfs that
// holds busybox and the modules the guest loads (see test/vm/prepare-kernel.sh).
type Kernel struct {
	Dir       string // cache directory of this kernel version
	Version   string // e.g. "6.12.117+deb13-amd64"
	Image     string // path of vmlinuz
	Initramfs string // path of base.cpio (uncompressed newc)
}

// ErrNoPrepareScript is returned when test/vm/prepare-kernel.sh cannot be found.
var ErrNoPrepareScript = errors.New("vmtest: test/vm/prepare-kernel.sh not found (set " + EnvPrepare + ")")

// prepareScript is the script's path relative to the repository root.
const prepareScript = "test/vm/prepare-kernel.sh"

// findPrepareScript returns $TWINROOT_VMTEST_PREPARE, or the script found in
// the working directory or one of its parents (go test runs in the package
// directory, inside the repository).
func findPrepareScript() (string, error) {
	if p := os.Getenv(EnvPrepare); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("vmtest: %w", err)
	}
	for {
		p := filepath.Join(dir, prepareScript)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNoPrepareScript
		}
		dir = parent
	}
}

// Prepare makes sure a guest kernel is in the cache and returns it. It runs
// test/vm/prepare-kernel.sh, which returns at once when the cache is complete
// and otherwise downloads the kernel package (a one-time cost of seconds).
// The script serialises concurrent callers with flock.
func Prepare(ctx context.Context) (Kernel, error) {
	script, err := findPrepareScript()
	if err != nil {
		return Kernel{}, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return Kernel{}, fmt.Errorf("vmtest: %s: %w\n%s", script, err, stderr.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if dir == "" {
		return Kernel{}, fmt.Errorf("vmtest: %s printed no kernel directory\n%s", script, stderr.Bytes())
	}
	ver, err := os.ReadFile(filepath.Join(dir, "kernel-version"))
	if err != nil {
		return Kernel{}, fmt.Errorf("vmtest: kernel cache %s: %w", dir, err)
	}
	k := Kernel{
		Dir:       dir,
		Version:   strings.TrimSpace(string(ver)),
		Image:     filepath.Join(dir, "vmlinuz"),
		Initramfs: filepath.Join(dir, "base.cpio"),
	}
	for _, p := range []string{k.Image, k.Initramfs} {
		if _, err := os.Stat(p); err != nil {
			return Kernel{}, fmt.Errorf("vmtest: kernel cache %s: %w", dir, err)
		}
	}
	return k, nil
}
