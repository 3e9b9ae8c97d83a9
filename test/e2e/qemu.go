package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Firmware files of Debian's ovmf package.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Guest-side addresses: the registry as the guest sees it (QEMU guestfwd).
const (
	guestRegistry = "10.0.2.100:5000"
	fwCfgStep     = "opt/twinroot-e2e/step"
)

// machine is one emulated computer: its disks and its UEFI variable store
// persist across boots, as a real machine's would.
type machine struct {
	dir      string   // work directory: vars, logs, step scripts
	disks    []string // raw disk images, virtio, in order (/dev/vda...)
	vars     string   // this machine's copy of OVMF_VARS
	port     int      // the host registry's port on 127.0.0.1
	accel    string   // "tcg" or "kvm"
	memMiB   int
	boots    int
	timeout  time.Duration // per boot
	consoleW io.Writer     // copy of every console line, if set
}

// newMachine makes a machine with fresh UEFI variables.
func newMachine(dir string, port int, accel string, disks ...string) (*machine, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	m := &machine{dir: dir, disks: disks, vars: filepath.Join(dir, "OVMF_VARS.fd"), port: port,
		accel: accel, memMiB: 1536, timeout: 15 * time.Minute}
	if err := copyFile(ovmfVars, m.vars); err != nil {
		return nil, err
	}
	return m, nil
}

// bootOptions shape one boot.
type bootOptions struct {
	// Script is the step script the driver unit runs (sh); empty boots
	// with no step (the driver then powers off, or the boot never gets
	// that far, as with v3).
	Script string
	// KillAt, if set, is called on every line the driver writes; when it
	// returns true QEMU is killed at once (a power cut).
	KillAt func(line string, sinceStart time.Duration) bool
}

// bootResult is what one boot gave.
type bootResult struct {
	RC        int           // the step script's status; -1 if none was reported
	Output    string        // the driver's ttyS1 output (E2E-* lines included)
	Console   string        // the console log path (ttyS0)
	Up        time.Duration // from QEMU start until the driver started; 0 if never
	Login     time.Duration // from QEMU start until the serial login prompt; 0 if never
	Duration  time.Duration // from QEMU start until QEMU exited
	Killed    bool          // KillAt cut the power
	KilledAt  time.Duration
	Reboots   bool // the guest asked for a reboot or poweroff by itself (QEMU exited on its own)
	QEMUError error
	Marks     map[string]time.Duration // E2E-MARK name → when the host saw it
}

// boot powers the machine on once and waits until QEMU exits: the guest
// powered off or rebooted (-no-reboot makes both end QEMU, so every boot is
// one run and the host sees between them), KillAt cut the power, or the
// per-boot timeout passed.
func (m *machine) boot(ctx context.Context, o bootOptions) (bootResult, error) {
	m.boots++
	n := m.boots
	res := bootResult{RC: -1, Console: filepath.Join(m.dir, fmt.Sprintf("console-%02d.log", n)), Marks: map[string]time.Duration{}}
	script := filepath.Join(m.dir, fmt.Sprintf("step-%02d.sh", n))
	if err := os.WriteFile(script, []byte(stepPrelude+o.Script), 0o644); err != nil {
		return res, err
	}
	drvLog := filepath.Join(m.dir, fmt.Sprintf("driver-%02d.log", n))
	for _, f := range []string{res.Console, drvLog} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			return res, err
		}
	}
	args := []string{"-machine", "q35", "-m", strconv.Itoa(m.memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + m.vars,
		"-chardev", "file,id=con,path=" + res.Console, "-serial", "chardev:con",
		"-chardev", "file,id=drv,path=" + drvLog, "-serial", "chardev:drv",
		"-fw_cfg", "name=" + fwCfgStep + ",file=" + script,
		// The guest reaches the host's registry and nothing else: restrict=on
		// cuts user networking off from the host and the outside, and the one
		// guestfwd runs a relay per connection to 127.0.0.1:<port>.
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,guestfwd=tcp:%s-cmd:%s", guestRegistry, m.relayCmd()),
		"-device", "virtio-net-pci,netdev=n0",
	}
	if m.accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg", "-cpu", "max")
	}
	for _, d := range m.disks {
		// cache=writeback: the guest's flushes reach the host file; what a
		// power cut loses is what the guest had not written or flushed.
		args = append(args, "-drive", "file="+d+",format=raw,if=virtio,cache=writeback")
	}
	bctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	cmd := exec.CommandContext(bctx, "qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { powerCut(cmd); return nil }
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("qemu: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var out, con tail
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	poll := func() {
		out.read(drvLog, func(line string) {
			if res.Up == 0 && strings.HasPrefix(line, "E2E-UP") {
				res.Up = time.Since(start)
			}
			if name, ok := strings.CutPrefix(line, "E2E-MARK "); ok {
				res.Marks[strings.TrimSpace(name)] = time.Since(start)
			}
			if o.KillAt != nil && !res.Killed && o.KillAt(line, time.Since(start)) {
				powerCut(cmd)
				res.Killed, res.KilledAt = true, time.Since(start)
			}
		})
		con.read(res.Console, func(line string) {
			if res.Login == 0 && strings.Contains(line, " login:") {
				res.Login = time.Since(start)
			}
			if m.consoleW != nil {
				fmt.Fprintln(m.consoleW, line)
			}
		})
		if o.KillAt != nil && !res.Killed && o.KillAt("", time.Since(start)) {
			powerCut(cmd)
			res.Killed, res.KilledAt = true, time.Since(start)
		}
	}
	var werr error
loop:
	for {
		select {
		case werr = <-done:
			break loop
		case <-tick.C:
			poll()
		}
	}
	poll()
	out.flush(func(string) {})
	res.Duration = time.Since(start)
	res.Output = out.all.String()
	res.RC = parseRC(res.Output)
	if bctx.Err() != nil && ctx.Err() == nil && !res.Killed {
		return res, fmt.Errorf("boot %d: timed out after %v (console: %s)", n, m.timeout, res.Console)
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if werr != nil && !res.Killed {
		res.QEMUError = fmt.Errorf("qemu: %w: %s", werr, strings.TrimSpace(stderr.String()))
		return res, res.QEMUError
	}
	res.Reboots = !res.Killed
	return res, nil
}

// powerCut kills QEMU and its relays (its process group) at once.
func powerCut(cmd *exec.Cmd) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck // gone already is fine
}

// relayCmd is the guestfwd command: QEMU runs one relay per guest connection
// (this program's relay mode) to the host registry on loopback; a guestfwd
// chardev would carry a single stream. The relays count the bytes the
// registry sends.
func (m *machine) relayCmd() string {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	return fmt.Sprintf("%s relay %d %s", self, m.port, m.countFile())
}

// countFile is where the relays append their byte counts.
func (m *machine) countFile() string { return filepath.Join(m.dir, "relay-bytes") }

// parseRC finds the driver's "E2E-RC n" line; -1 if there is none.
func parseRC(out string) int {
	rc := -1
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "E2E-RC" {
			if v, err := strconv.Atoi(f[1]); err == nil {
				rc = v
			}
		}
	}
	return rc
}

// tail follows a growing file line by line.
type tail struct {
	off  int64
	part []byte
	all  bytes.Buffer
}

func (t *tail) read(path string, line func(string)) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return
	}
	data, _ := io.ReadAll(bufio.NewReader(f))
	t.off += int64(len(data))
	data = bytes.ReplaceAll(data, []byte("\r"), nil)
	t.all.Write(data)
	t.part = append(t.part, data...)
	for {
		i := bytes.IndexByte(t.part, '\n')
		if i < 0 {
			break
		}
		line(string(t.part[:i]))
		t.part = t.part[i+1:]
	}
}

func (t *tail) flush(line func(string)) {
	if len(t.part) > 0 {
		line(string(t.part))
		t.part = nil
	}
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}
