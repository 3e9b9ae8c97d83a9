//go:build linux

package vmtest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestCpioWriter(t *testing.T) {
	var buf bytes.Buffer
	c := newCpioWriter(&buf)
	c.Dir("a", 0o755)
	c.Dir("a/b", 0o700)
	c.File("a/b/f", 0o640, 5, strings.NewReader("hello"))
	c.File("a/empty", 0o644, 0, strings.NewReader(""))
	c.Symlink("a/link", "b/f")
	c.CharDev("a/console", 0o600, 5, 1)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not 4-aligned", buf.Len())
	}
	// cpio(1) must read it back.
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "a/b/f"))
	if err != nil || string(got) != "hello" {
		t.Errorf("a/b/f = %q, %v", got, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "a/b/f")); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("a/b/f mode: %v, %v", st, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "a/link")); err != nil || target != "b/f" {
		t.Errorf("a/link -> %q, %v", target, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "a/console"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(uint64(st.Rdev)) != 5 || unix.Minor(uint64(st.Rdev)) != 1 {
		t.Errorf("a/console: mode %o rdev %d:%d", st.Mode, unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	}
}

func TestCpioWriterRejects(t *testing.T) {
	for _, name := range []string{"", "/abs", "../up", "a/../../b", "a//b", "."} {
		c := newCpioWriter(&bytes.Buffer{})
		c.Dir(name, 0o755)
		if err := c.Close(); !errors.Is(err, errCpioName) {
			t.Errorf("Dir(%q): err = %v, want errCpioName", name, err)
		}
	}
	c := newCpioWriter(&bytes.Buffer{})
	c.File("short", 0o644, 10, strings.NewReader("abc"))
	if err := c.Close(); err == nil {
		t.Error("File with a short reader: no error")
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"", "plain", "a b", "it's", `"$HOME" \n`, "'", "x'y'z", "-test.run=^A$/^B$"} {
		out, err := exec.Command("busybox", "sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if string(out) != s {
			t.Errorf("shellQuote(%q) round trip = %q", s, out)
		}
	}
}

func TestParseConsole(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		code      int
		found     bool
		setup     string
	}{
		{"exit0", "boot\nTWINROOT-VMTEST-START\nok\nTWINROOT-VMTEST-EXIT=0\n", 0, true, ""},
		{"exit137", "TWINROOT-VMTEST-EXIT=137\n[ 3.1] reboot: Power down\n", 137, true, ""},
		{"kernel-noise-before", "[ 1.0] x TWINROOT-VMTEST-EXIT=3\n", 3, true, ""},
		{"none", "Kernel panic - not syncing\n", 0, false, ""},
		{"setup", "TWINROOT-VMTEST-SETUP-FAILED: mount /dev/vda\n", 0, false, "mount /dev/vda"},
		{"empty", "", 0, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, found, setup := parseConsole(tc.out)
			if code != tc.code || found != tc.found || setup != tc.setup {
				t.Errorf("parseConsole = %d, %v, %q; want %d, %v, %q", code, found, setup, tc.code, tc.found, tc.setup)
			}
		})
	}
}

func TestTestRunPattern(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pattern string
	}{
		{"TestA", "^TestA$"},
		{"TestA/sub_1", "^TestA$/^sub_1$"},
		{"TestA/x.y+z", `^TestA$/^x\.y\+z$`},
	} {
		if got := testRunPattern(tc.name); got != tc.pattern {
			t.Errorf("testRunPattern(%q) = %q, want %q", tc.name, got, tc.pattern)
		}
		// Each element must match its own name and not a longer one.
		for i, el := range strings.Split(tc.pattern, "/") {
			part := strings.Split(tc.name, "/")[i]
			re := regexp.MustCompile(el)
			if !re.MatchString(part) || re.MatchString(part+"x") {
				t.Errorf("%q element %q: bad match of %q", tc.name, el, part)
			}
		}
	}
}

func TestVerdict(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  Result
		want guestVerdict
	}{
		{"pass", Result{Output: "--- PASS: TestX (0.01s)\nPASS\n"}, guestPassed},
		{"skip", Result{Output: "--- SKIP: TestX (0.00s)\n"}, guestSkipped},
		{"fail", Result{ExitCode: 1, Output: "--- FAIL: TestX (0.01s)\n"}, guestFailed},
		{"no-test-ran", Result{Output: "testing: warning: no tests to run\nPASS\n"}, guestFailed},
		{"other-test", Result{Output: "--- PASS: TestXY (0.01s)\n"}, guestFailed},
		{"exit-after-pass", Result{ExitCode: 2, Output: "--- PASS: TestX (0.01s)\n"}, guestFailed},
	} {
		if got := verdict(tc.res, "TestX"); got != tc.want {
			t.Errorf("%s: verdict = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCheckStatic(t *testing.T) {
	if err := checkStatic("/bin/busybox"); err != nil {
		t.Errorf("busybox-static: %v", err)
	}
	if err := checkStatic("/bin/ls"); !errors.Is(err, ErrNotStatic) {
		t.Errorf("/bin/ls: err = %v, want ErrNotStatic", err)
	}
}

// TestBootShell boots the guest with a shell command: exit status
// propagation, modules, a mounted verity-capable scratch disk and a file
// passed into the initramfs.
func TestBootShell(t *testing.T) {
	if InGuest() {
		t.Skip("host-side test")
	}
	tmp := t.TempDir()
	host := filepath.Join(tmp, "payload")
	if err := os.WriteFile(host, []byte("payload-contents\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(tmp, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "d", "hello"), []byte("from-tree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(tmp, "tree.erofs")
	if out, err := exec.Command("mkfs.erofs", "--quiet", img, tree).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs: %v\n%s", err, out)
	}
	hello := BuildBinary(t, "./testdata/hello")
	res := Run(t, Config{
		Command: []string{"/bin/sh", "-c", `
			/opt/hello a 'b c'; echo "hello-status=$?"
			cat /proc/filesystems
			grep ' /mnt/disk' /proc/mounts
			cat /data/sub/payload
			cat /mnt/disk1/d/hello
			echo "erofs:$(cat /mnt/disk2/d/hello)"
			echo "env=$VMTEST_X"
			echo "cmdline=$(cat /proc/cmdline)"
			exit 7`},
		Env:        []string{"VMTEST_X=it's set"},
		Files:      []File{{Host: host, Guest: "/data/sub/payload"}, {Host: hello, Guest: "/opt/hello"}},
		Disks:      []Disk{{Size: 32 << 20, Verity: true}, {From: tree}, {Image: img, FSType: "erofs", ReadOnly: true}},
		KernelArgs: []string{"vmtest.selftest=1"},
	})
	if res.ExitCode != 7 {
		t.Errorf("exit status = %d, want 7\n%s", res.ExitCode, res.Output)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^\s*erofs$`),
		regexp.MustCompile(`(?m)^nodev\s+overlay$`),
		regexp.MustCompile(`(?m)^\s*ext4$`),
		regexp.MustCompile(`(?m)^/dev/vda /mnt/disk0 ext4 rw`),
		regexp.MustCompile(`(?m)^/dev/vdb /mnt/disk1 ext4 rw`),
		regexp.MustCompile(`(?m)^/dev/vdc /mnt/disk2 erofs ro`),
		regexp.MustCompile(`(?m)^payload-contents$`),
		regexp.MustCompile(`(?m)^hello from 1, args \["a" "b c"\]$`),
		regexp.MustCompile(`(?m)^hello-status=3$`),
		regexp.MustCompile(`(?m)^from-tree$`),
		regexp.MustCompile(`(?m)^erofs:from-tree$`),
		regexp.MustCompile(`(?m)^cmdline=.* vmtest\.selftest=1$`),
		regexp.MustCompile(`(?m)^env=it's set$`),
	} {
		if !want.MatchString(res.Output) {
			t.Errorf("guest output lacks %v\n%s", want, res.Output)
		}
	}
	if res.BootTime <= 0 || res.BootTime > res.Duration {
		t.Errorf("BootTime %v not within Duration %v", res.BootTime, res.Duration)
	}
	t.Logf("boot time %v, total %v", res.BootTime, res.Duration)
}

// TestGuestTest runs its own body in the guest.
func TestGuestTest(t *testing.T) {
	if !InGuest() {
		RunTestInGuest(t, Config{Disks: []Disk{{Verity: true}}, Env: []string{"VMTEST_SELFTEST=yes"}, CPUs: 2})
		return
	}
	if n := runtime.NumCPU(); n != 2 {
		t.Errorf("guest has %d CPUs, want 2", n)
	}
	if os.Getenv("VMTEST_SELFTEST") != "yes" {
		t.Errorf("Config.Env not passed: VMTEST_SELFTEST=%q", os.Getenv("VMTEST_SELFTEST"))
	}
	fss, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		t.Fatal(err)
	}
	for _, fs := range []string{"erofs", "overlay", "ext4"} {
		if !regexp.MustCompile(`(?m)\s` + fs + `$`).Match(fss) {
			t.Errorf("/proc/filesystems lacks %s:\n%s", fs, fss)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(ScratchDir(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.EXT4_SUPER_MAGIC {
		t.Errorf("%s: fs type %#x, want ext4", ScratchDir(), st.Type)
	}
	p := filepath.Join(ScratchDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGuestFailure checks that a failing guest test gives a non-zero exit
// status and its failure output reaches the host.
func TestGuestFailure(t *testing.T) {
	if InGuest() {
		if os.Getenv("VMTEST_SELFTEST_FAIL") == "1" {
			t.Fatal("deliberate guest failure")
		}
		return
	}
	res := RunTest(t, t.Name(), Config{Env: []string{"VMTEST_SELFTEST_FAIL=1"}})
	if res.ExitCode == 0 {
		t.Errorf("failing guest test: exit status 0\n%s", res.Output)
	}
	if !strings.Contains(res.Output, "deliberate guest failure") || !strings.Contains(res.Output, "--- FAIL: TestGuestFailure") {
		t.Errorf("guest failure output missing\n%s", res.Output)
	}
	if verdict(res, t.Name()) != guestFailed {
		t.Error("verdict of a failing guest test is not failed")
	}
}

// TestTimeout checks that a guest that does not finish is stopped: either
// QEMU is killed at the whole-boot timeout or the guest kills the command.
func TestTimeout(t *testing.T) {
	if InGuest() {
		t.Skip("host-side test")
	}
	start := time.Now()
	res, err := RunContext(t.Context(), Config{Command: []string{"/bin/sleep", "1000"}, Timeout: 3 * time.Second})
	if elapsed := time.Since(start); elapsed > time.Minute {
		t.Errorf("RunContext took %v with a 3s timeout", elapsed)
	}
	if !errors.Is(err, ErrTimeout) && res.ExitCode != 137 {
		t.Errorf("err = %v, exit status %d; want ErrTimeout or 137\n%s", err, res.ExitCode, res.Output)
	}
}

func TestBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Command: []string{"/bin/true"}, Files: []File{{Host: "/bin/busybox", Guest: "rel/path"}}},
		{Command: []string{"/bin/true"}, Disks: make([]Disk, 27)},
		{Command: []string{"/bin/true"}, Disks: []Disk{{FSType: "ext4"}}},
		{Command: []string{"/bin/true"}, Disks: []Disk{{Image: "/x", Verity: true}}},
	} {
		if _, err := RunContext(t.Context(), cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("RunContext(%+v): err = %v, want ErrBadConfig", cfg, err)
		}
	}
}

// TestBootFailure checks that a guest whose kernel never starts the command
// yields ErrNoExitStatus after the bounded re-boots, not a hang or a pass.
func TestBootFailure(t *testing.T) {
	if InGuest() {
		t.Skip("host-side test")
	}
	res, err := RunContext(t.Context(), Config{
		Command:    []string{"/bin/true"},
		KernelArgs: []string{"rdinit=/no-such-init"},
	})
	if !errors.Is(err, ErrNoExitStatus) {
		t.Fatalf("err = %v, want ErrNoExitStatus\n%s", err, res.Output)
	}
	if res.Boots != maxBoots || res.ExitCode != -1 || res.BootTime != 0 {
		t.Errorf("Boots %d, ExitCode %d, BootTime %v; want %d, -1, 0", res.Boots, res.ExitCode, res.BootTime, maxBoots)
	}
	if !strings.Contains(res.Output, "Kernel panic") {
		t.Errorf("output lacks the kernel panic\n%s", res.Output)
	}
}

func TestRunUEFIBadConfig(t *testing.T) {
	if _, err := RunUEFI(t.Context(), UEFIConfig{}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("RunUEFI without Vars: %v, want ErrBadConfig", err)
	}
	if err := WriteInitramfs(t.Context(), filepath.Join(t.TempDir(), "i"), "#!/bin/sh\n", []File{{Host: "/bin/sh", Guest: "rel"}}); err == nil {
		t.Fatal("WriteInitramfs accepted a relative guest path")
	}
}
