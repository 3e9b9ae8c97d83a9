package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Environment variables the harness reads or sets.
const (
	// EnvGuest is set to "1" in the environment of the guest command.
	EnvGuest = "TWINROOT_VMTEST_GUEST"
	// EnvPrepare overrides the path of test/vm/prepare-kernel.sh.
	EnvPrepare = "TWINROOT_VMTEST_PREPARE"
	// EnvAccel selects the QEMU accelerator: "tcg" (the default) or "kvm".
	EnvAccel = "TWINROOT_VMTEST_ACCEL"
	// EnvConsole set to "1" makes Run copy the guest console to stderr as
	// it arrives (when Config.Log is nil), to watch a slow or hung guest.
	EnvConsole = "TWINROOT_VMTEST_CONSOLE"
)

// Defaults for the zero fields of Config and Disk.
const (
	DefaultTimeout   = 120 * time.Second
	DefaultMemoryMiB = 512
	DefaultCPUs      = 1
	DefaultDiskSize  = 64 << 20
	DefaultDir       = "/tmp"
)

// Errors of RunContext.
var (
	// ErrTimeout means the guest did not power off within Config.Timeout.
	ErrTimeout = errors.New("vmtest: guest timed out")
	// ErrNoExitStatus means the guest stopped without reporting the
	// command's exit status (kernel panic, init crash, QEMU error).
	ErrNoExitStatus = errors.New("vmtest: guest reported no exit status")
	// ErrGuestSetup means the guest's init failed before running the
	// command (e.g. a disk did not mount).
	ErrGuestSetup = errors.New("vmtest: guest setup failed")
	// ErrNotStatic is returned for a File or test binary that needs a
	// dynamic loader, which the guest does not have.
	ErrNotStatic = errors.New("vmtest: binary is dynamically linked (build with CGO_ENABLED=0)")
	// ErrBadConfig is returned for an invalid Config.
	ErrBadConfig = errors.New("vmtest: bad config")
)

// Disk is a virtio block device of the guest. Disk i is /dev/vd<a+i> in the
// guest (DiskDevice).
type Disk struct {
	// Size of a fresh ext4 file system made on the host (DefaultDiskSize if
	// 0). It is mounted at DiskDir(i) before the command runs.
	Size int64
	// Verity makes the fresh file system with -O verity.
	Verity bool
	// From, if set, is a host directory copied into the fresh file system
	// (mkfs.ext4 -d).
	From string
	// Image, if set, is a host file attached as the disk as it is, not
	// formatted; Size, Verity and From are then ignored. It is mounted at
	// DiskDir(i) only if FSType is set.
	Image string
	// FSType is the file system type to mount Image with ("erofs",
	// "ext4"...); empty leaves it unmounted.
	FSType string
	// ReadOnly attaches Image read-only (and mounts it with -o ro).
	ReadOnly bool
}

// File is a host file copied into the guest's initramfs.
type File struct {
	Host  string      // path on the host of a regular file
	Guest string      // absolute path in the guest
	Mode  fs.FileMode // permission bits in the guest; 0 keeps the host file's
}

// Config describes one guest boot.
type Config struct {
	// Command is the argv run in the guest after the disks are mounted;
	// Command[0] is a guest path (a File's Guest path, or a busybox applet
	// such as /bin/sh).
	Command []string
	// Env is added to the command's environment, which otherwise holds only
	// PATH=/bin, HOME=/tmp, TMPDIR=/tmp and TWINROOT_VMTEST_GUEST=1.
	Env []string
	// Files are copied into the initramfs.
	Files []File
	// Disks are attached in order as /dev/vda, /dev/vdb...
	Disks []Disk
	// Dir is the command's working directory (DefaultDir if empty).
	Dir string
	// Timeout bounds the whole boot (DefaultTimeout if 0); QEMU is killed
	// after it.
	Timeout time.Duration
	// MemoryMiB is the guest's memory (DefaultMemoryMiB if 0).
	MemoryMiB int
	// CPUs is the number of virtual CPUs (DefaultCPUs if 0). Under TCG
	// more than one CPU runs on a single host thread (thread=single):
	// multi-threaded TCG lets a CPU run kernel code another CPU has just
	// patched, which oopses the guest now and then ("int3" in a static key).
	CPUs int
	// KernelArgs are appended to the kernel command line.
	KernelArgs []string
	// Log, if set, receives the console output as it arrives.
	Log io.Writer
}

// Result is the outcome of a boot.
type Result struct {
	// Output is the serial console: kernel messages, the command's stdout
	// and stderr, and the harness's marker lines.
	Output string
	// ExitCode is the command's exit status in the guest (137 if the guest
	// killed it at its timeout); -1 when the guest reported none.
	ExitCode int
	// Kernel is the guest kernel's version.
	Kernel string
	// BootTime is the time from starting QEMU until the command started
	// (in the last boot); 0 if it never started.
	BootTime time.Duration
	// Duration is the time from starting QEMU until it exited, over all
	// boots.
	Duration time.Duration
	// Boots counts the boots: more than 1 when the guest kernel died
	// before the command started and was booted again.
	Boots int
}

// InGuest reports whether this process runs as a harness command in the guest.
func InGuest() bool { return os.Getenv(EnvGuest) == "1" }

// DiskDevice returns the guest device path of disk i (/dev/vda for 0).
func DiskDevice(i int) string {
	if i < 0 || i >= 26 {
		panic("vmtest: disk index out of range")
	}
	return "/dev/vd" + string(rune('a'+i))
}

// DiskDir returns where the guest mounts the fresh file system of disk i.
func DiskDir(i int) string { return "/mnt/disk" + strconv.Itoa(i) }

// ScratchDir returns the mount point of the first disk's file system in the
// guest: the scratch ext4 of RunTestInGuest(t, Config{Disks: []Disk{{...}}}).
func ScratchDir() string { return DiskDir(0) }

// RunContext boots the guest kernel with cfg, runs cfg.Command and returns
// its exit status and the console output. The error is non-nil when the
// guest could not be prepared or booted or reported no exit status; the
// Result then holds what output there was. A non-zero exit status of the
// command is not an error.
func RunContext(ctx context.Context, cfg Config) (Result, error) {
	res := Result{ExitCode: -1}
	if err := checkConfig(cfg); err != nil {
		return res, err
	}
	timeout := orDefault(cfg.Timeout, DefaultTimeout)
	k, err := Prepare(ctx)
	if err != nil {
		return res, err
	}
	res.Kernel = k.Version

	tmp, err := os.MkdirTemp("", "vmtest-")
	if err != nil {
		return res, fmt.Errorf("vmtest: %w", err)
	}
	defer os.RemoveAll(tmp)

	var drives []string
	var mounts []mount
	for i, d := range cfg.Disks {
		file, ro := d.Image, d.ReadOnly
		switch {
		case file == "":
			file = filepath.Join(tmp, fmt.Sprintf("disk%d.img", i))
			if err := makeExt4(ctx, file, orDefault(d.Size, DefaultDiskSize), d.Verity, d.From); err != nil {
				return res, err
			}
			mounts = append(mounts, mount{disk: i, fstype: "ext4"})
			ro = false
		case d.FSType != "":
			mounts = append(mounts, mount{disk: i, fstype: d.FSType, readOnly: ro})
		}
		opt := "file=" + strings.ReplaceAll(file, ",", ",,") + ",format=raw,if=virtio,cache=unsafe"
		if ro {
			opt += ",readonly=on"
		}
		drives = append(drives, "-drive", opt)
	}

	// The command gets most of the timeout; the rest is for boot and
	// power-off, so a hung command still yields its output and a status.
	cmdTimeout := max(timeout-20*time.Second, timeout/2)
	env := append([]string{"PATH=/bin", "HOME=/tmp", "TMPDIR=/tmp", EnvGuest + "=1"}, cfg.Env...)
	script := initScript(guestSpec{
		mounts:  mounts,
		env:     env,
		dir:     orDefaultStr(cfg.Dir, DefaultDir),
		command: cfg.Command,
		timeout: cmdTimeout,
	})
	initrd := filepath.Join(tmp, "initrd.cpio")
	if err := writeInitramfs(initrd, k.Initramfs, script, cfg.Files); err != nil {
		return res, err
	}

	cpus := orDefault(cfg.CPUs, DefaultCPUs)
	args := accelArgs(cpus)
	args = append(args,
		"-m", strconv.Itoa(orDefault(cfg.MemoryMiB, DefaultMemoryMiB)),
		"-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", k.Image, "-initrd", initrd,
		"-append", strings.Join(append([]string{"console=ttyS0 quiet panic=-1"}, cfg.KernelArgs...), " "),
	)
	args = append(args, drives...)

	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var earlier strings.Builder
	for attempt := 1; ; attempt++ {
		b := boot(runCtx, args, cfg.Log)
		res.Boots = attempt
		res.Duration = time.Since(start)
		res.Output, res.BootTime = earlier.String()+b.output, b.bootTime
		if runCtx.Err() != nil && ctx.Err() == nil {
			return res, fmt.Errorf("%w after %v\n%s", ErrTimeout, timeout, b.stderr)
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("vmtest: %w", ctx.Err())
		}
		code, found, setup := parseConsole(b.output)
		if setup != "" {
			return res, fmt.Errorf("%w: %s", ErrGuestSetup, setup)
		}
		if found {
			res.ExitCode = code
			return res, nil
		}
		// A guest that died before the command started (an emulation
		// glitch while the kernel boots) is booted again: no test code ran.
		if b.bootTime == 0 && attempt < maxBoots {
			fmt.Fprintf(&earlier, "%s\nvmtest: boot %d died before the command started; booting again\n", b.output, attempt)
			continue
		}
		if b.err != nil {
			return res, fmt.Errorf("%w: qemu: %v\n%s", ErrNoExitStatus, b.err, b.stderr)
		}
		return res, fmt.Errorf("%w\n%s", ErrNoExitStatus, b.stderr)
	}
}

// maxBoots bounds the boots of one RunContext when the guest dies before
// running the command.
const maxBoots = 3

// bootResult is one QEMU run.
type bootResult struct {
	output   string
	bootTime time.Duration // 0 if the start marker never came
	stderr   []byte
	err      error
}

// boot runs QEMU once until it exits or ctx ends (then it is killed).
func boot(ctx context.Context, args []string, log io.Writer) bootResult {
	con := &console{log: log}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout = con
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = qemuSysProcAttr()
	con.start = time.Now()
	err := cmd.Run()
	out, started := con.result()
	return bootResult{output: out, bootTime: started, stderr: stderr.Bytes(), err: err}
}

func checkConfig(cfg Config) error {
	if len(cfg.Command) == 0 {
		return fmt.Errorf("%w: no Command", ErrBadConfig)
	}
	if len(cfg.Disks) > 26 {
		return fmt.Errorf("%w: %d disks (at most 26)", ErrBadConfig, len(cfg.Disks))
	}
	for i, d := range cfg.Disks {
		if d.Image == "" && (d.FSType != "" || d.ReadOnly) {
			return fmt.Errorf("%w: disk %d: FSType and ReadOnly need an Image", ErrBadConfig, i)
		}
		if d.Image != "" && (d.From != "" || d.Verity) {
			return fmt.Errorf("%w: disk %d: From and Verity make a fresh disk, not an Image", ErrBadConfig, i)
		}
		if strings.ContainsAny(d.FSType, " \t\n'\"$\\") {
			return fmt.Errorf("%w: disk %d: bad FSType %q", ErrBadConfig, i, d.FSType)
		}
	}
	for _, a := range cfg.KernelArgs {
		if strings.ContainsAny(a, "\n") {
			return fmt.Errorf("%w: kernel argument %q has a newline", ErrBadConfig, a)
		}
	}
	for _, f := range cfg.Files {
		if !path.IsAbs(f.Guest) || path.Clean(f.Guest) == "/" {
			return fmt.Errorf("%w: guest path %q is not an absolute file path", ErrBadConfig, f.Guest)
		}
	}
	return nil
}

// accelArgs returns the accelerator options: TCG with the "max" CPU model
// unless $TWINROOT_VMTEST_ACCEL is "kvm" (KVM is not probed: on some hosts
// it hangs the guest instead of failing). TCG runs several CPUs on one
// thread (see Config.CPUs).
func accelArgs(cpus int) []string {
	if os.Getenv(EnvAccel) == "kvm" {
		return []string{"-accel", "kvm", "-cpu", "host"}
	}
	if cpus > 1 {
		return []string{"-accel", "tcg,thread=single", "-cpu", "max"}
	}
	return []string{"-accel", "tcg", "-cpu", "max"}
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

func orDefaultStr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// makeExt4 creates a sparse file of size bytes holding a fresh ext4.
// When from is set, the file system is populated from that host directory.
func makeExt4(ctx context.Context, file string, size int64, verity bool, from string) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	args := []string{"-q", "-F", "-b", "4096", "-E", "nodiscard"}
	if verity {
		args = append(args, "-O", "verity")
	}
	if from != "" {
		args = append(args, "-d", from)
	}
	args = append(args, file)
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("vmtest: mkfs.ext4 %s: %w\n%s", file, err, out)
	}
	return nil
}

// writeInitramfs writes the base archive followed by a second archive with
// /init, /dev/console and files. The kernel unpacks concatenated archives
// in order.
func writeInitramfs(dst, base, script string, files []File) (err error) {
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("vmtest: %w", cerr)
		}
	}()
	bw := bufio.NewWriterSize(out, 1<<20)
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	_, err = io.Copy(bw, in)
	in.Close()
	if err != nil {
		return fmt.Errorf("vmtest: copy %s: %w", base, err)
	}
	// newc archives are padded to 4 bytes; the base one is as cpio(1)
	// wrote it (512-byte blocks), so the next header starts aligned.

	c := newCpioWriter(bw)
	dirs := map[string]bool{"dev": true}
	c.Dir("dev", 0o755)
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("init", 0o755, int64(len(script)), strings.NewReader(script))
	for _, f := range files {
		name := strings.TrimPrefix(path.Clean(f.Guest), "/")
		var parents []string
		for d := path.Dir(name); d != "." && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
			dirs[d] = true
		}
		slices.Reverse(parents)
		for _, d := range parents {
			c.Dir(d, 0o755)
		}
		if err := addFile(c, name, f); err != nil {
			return err
		}
	}
	if err := c.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	return nil
}

func addFile(c *cpioWriter, name string, f File) error {
	in, err := os.Open(f.Host)
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrBadConfig, f.Host)
	}
	if err := checkStatic(f.Host); err != nil {
		return err
	}
	mode := f.Mode.Perm()
	if mode == 0 {
		mode = st.Mode().Perm()
	}
	c.File(name, mode, st.Size(), in)
	return nil
}

// checkStatic returns ErrNotStatic for an ELF executable with an interpreter.
// Non-ELF files (scripts, data) pass.
func checkStatic(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: %s", ErrNotStatic, file)
		}
	}
	return nil
}

// console collects QEMU's serial output, dropping carriage returns, and
// notes when the start marker arrived.
type console struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	log     io.Writer
	start   time.Time
	started time.Duration
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	clean := bytes.ReplaceAll(p, []byte("\r"), nil)
	from := max(c.buf.Len()-len(markerStart), 0)
	c.buf.Write(clean)
	if c.started == 0 && bytes.Contains(c.buf.Bytes()[from:], []byte(markerStart)) {
		c.started = time.Since(c.start)
	}
	if c.log != nil {
		c.log.Write(clean) //nolint:errcheck // best-effort copy
	}
	return len(p), nil
}

func (c *console) result() (string, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String(), c.started
}
