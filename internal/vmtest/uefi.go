package vmtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Debian's ovmf package: the firmware code (read-only) and the template of
// its variable store, which each machine gets a writable copy of.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// ErrNoFirmware is returned when the OVMF firmware is not installed.
var ErrNoFirmware = errors.New("vmtest: OVMF firmware not installed (apt-get install ovmf)")

// UEFIConfig describes one boot of a UEFI machine: OVMF firmware, its
// variable store, and disks. Unlike Config, nothing is booted directly: the
// firmware boots what the disks hold (e.g. systemd-boot from an ESP image,
// as EFI/BOOT/BOOTX64.EFI), so the test controls the boot loader, its
// entries and the kernel it loads.
type UEFIConfig struct {
	// Vars is the machine's variable store, a writable copy made with
	// NewUEFIVars; keep it across boots to keep EFI variables (boot
	// entries, systemd-boot's LoaderEntry* variables).
	Vars string
	// Code is the firmware (OVMFCode when empty).
	Code string
	// Disks are raw images attached in order as virtio disks.
	Disks []string
	// Timeout bounds the boot (DefaultTimeout when 0); QEMU is killed
	// after it.
	Timeout time.Duration
	// MemoryMiB is the machine's memory (DefaultMemoryMiB when 0).
	MemoryMiB int
	// Log, if set, receives the serial console as it arrives.
	Log io.Writer
}

// UEFIResult is the outcome of a UEFI boot.
type UEFIResult struct {
	// Output is the serial console: firmware, boot loader, kernel and
	// whatever the booted system printed.
	Output string
	// Duration is the time from starting QEMU until it exited.
	Duration time.Duration
}

// NewUEFIVars writes a fresh copy of the OVMF variable store template to dst.
func NewUEFIVars(dst string) error {
	data, err := os.ReadFile(OVMFVars)
	if errors.Is(err, os.ErrNotExist) {
		return ErrNoFirmware
	}
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	return nil
}

// UEFIAvailable returns nil when QEMU and OVMF are installed, else an error
// saying what is missing (tests skip with it).
func UEFIAvailable() error {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return fmt.Errorf("vmtest: qemu-system-x86_64 not installed")
	}
	for _, f := range []string{OVMFCode, OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			return ErrNoFirmware
		}
	}
	return nil
}

// RunUEFI boots the machine once and returns when QEMU exits: the guest
// powered off, or rebooted (QEMU runs with -no-reboot, so a reboot ends the
// run too and the next RunUEFI with the same Vars and Disks is the next
// boot). The error is non-nil only when QEMU could not run or timed out;
// what the guest did is for the caller to read in the output.
func RunUEFI(ctx context.Context, cfg UEFIConfig) (UEFIResult, error) {
	var res UEFIResult
	if cfg.Vars == "" {
		return res, fmt.Errorf("%w: UEFIConfig.Vars is empty (NewUEFIVars)", ErrBadConfig)
	}
	code := orDefaultStr(cfg.Code, OVMFCode)
	if _, err := os.Stat(code); err != nil {
		return res, ErrNoFirmware
	}
	args := accelArgs(1)
	args = append(args,
		"-machine", "q35",
		"-m", strconv.Itoa(orDefault(cfg.MemoryMiB, DefaultMemoryMiB)),
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qemuEscape(code),
		"-drive", "if=pflash,format=raw,unit=1,file="+qemuEscape(cfg.Vars),
	)
	for _, d := range cfg.Disks {
		args = append(args, "-drive", "file="+qemuEscape(d)+",format=raw,if=virtio,cache=unsafe")
	}
	timeout := orDefault(cfg.Timeout, DefaultTimeout)
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	b := boot(runCtx, args, cfg.Log)
	res.Output, res.Duration = b.output, time.Since(start)
	if ctx.Err() != nil {
		return res, fmt.Errorf("vmtest: %w", ctx.Err())
	}
	if runCtx.Err() != nil {
		return res, fmt.Errorf("%w after %v\n%s", ErrTimeout, timeout, b.stderr)
	}
	if b.err != nil {
		return res, fmt.Errorf("vmtest: qemu: %v\n%s", b.err, b.stderr)
	}
	return res, nil
}

func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// WriteInitramfs writes an initramfs for a guest kernel booted by a boot
// loader: the prepared base archive (busybox, the modules and
// /lib/modules/load.list) followed by an archive holding script as /init and
// files. Pair it with Kernel.Image from Prepare.
func WriteInitramfs(ctx context.Context, dst, script string, files []File) error {
	k, err := Prepare(ctx)
	if err != nil {
		return err
	}
	for _, f := range files {
		if !strings.HasPrefix(f.Guest, "/") {
			return fmt.Errorf("%w: guest path %q is not absolute", ErrBadConfig, f.Guest)
		}
	}
	return writeInitramfs(dst, k.Initramfs, script, files)
}
