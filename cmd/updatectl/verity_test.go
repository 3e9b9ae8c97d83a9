package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runCLI runs updatectl in-process and returns exit code, stdout, stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), args, &stdout, &stderr) }()
	select {
	case code := <-done:
		return code, stdout.String(), stderr.String()
	case <-time.After(2 * time.Minute):
		t.Fatalf("updatectl %q did not finish (blocked?)", args)
		return 0, "", ""
	}
}

// writeRandomFiles creates n files of assorted sizes in dir.
func writeRandomFiles(t *testing.T, dir string, n int) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 8))
	var paths []string
	for i := range n {
		size := []int{0, 1, 4095, 4096, 4097, 70000, 600000}[i%7] + rng.IntN(3)
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		p := filepath.Join(dir, fmt.Sprintf("file-%03d", i))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// fsverityDigest runs the real `fsverity digest` on paths.
func fsverityDigest(t *testing.T, alg string, paths ...string) string {
	t.Helper()
	out, err := exec.Command("fsverity", append([]string{"digest", "--hash-alg=" + alg}, paths...)...).Output()
	if err != nil {
		t.Fatalf("fsverity digest: %v", err)
	}
	return string(out)
}

// TestVerityDigestMatchesFsverity compares the whole output with
// `fsverity digest` on the same files, for both algorithms; with many
// files, the parallel output must keep argument order.
func TestVerityDigestMatchesFsverity(t *testing.T) {
	paths := writeRandomFiles(t, t.TempDir(), 300)
	// Reverse the order so argument order differs from creation order.
	for i, j := 0, len(paths)-1; i < j; i, j = i+1, j-1 {
		paths[i], paths[j] = paths[j], paths[i]
	}
	for _, alg := range []string{"sha256", "sha512"} {
		want := fsverityDigest(t, alg, paths...)
		for _, jobs := range []string{"1", "2", "7"} {
			args := append([]string{"verity", "digest", "--hash-alg", alg, "-j", jobs}, paths...)
			code, out, errOut := runCLI(t, args...)
			if code != 0 || errOut != "" {
				t.Fatalf("%s -j %s: exit %d, stderr %q", alg, jobs, code, errOut)
			}
			if out != want {
				t.Errorf("%s -j %s: output differs from fsverity digest:\n%s\nwant:\n%s", alg, jobs, head(out), head(want))
			}
		}
	}
	// The default algorithm is SHA-256.
	code, out, _ := runCLI(t, "verity", "digest", paths[0])
	if want := fsverityDigest(t, "sha256", paths[0]); code != 0 || out != want {
		t.Errorf("default algorithm: exit %d, %q, want %q", code, out, want)
	}
}

func head(s string) string {
	lines := strings.SplitN(s, "\n", 6)
	return strings.Join(lines[:min(5, len(lines))], "\n")
}

// corruptExt2File makes, on a loop-mounted ext2 image, a file that opens
// and stats fine but whose reads fail past its 12th block: its indirect
// block points outside the filesystem, so the kernel returns EIO. It
// returns the path or skips when mounting is impossible (not root).
func corruptExt2File(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("an unreadable file needs a loop mount, which needs root")
	}
	dir := t.TempDir()
	src, mnt, img := filepath.Join(dir, "src"), filepath.Join(dir, "mnt"), filepath.Join(dir, "img")
	for _, d := range []string{src, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "bad"), bytes.Repeat([]byte("x"), 20000), 0o644); err != nil {
		t.Fatal(err)
	}
	sh := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	sh("truncate", "-s", "4M", img)
	sh("mkfs.ext2", "-q", "-F", "-b", "1024", "-d", src, img)
	m := regexp.MustCompile(`\(IND\):(\d+)`).FindStringSubmatch(sh("debugfs", "-R", "stat /bad", img))
	if m == nil {
		t.Fatalf("debugfs shows no indirect block for /bad")
	}
	ind, _ := strconv.ParseInt(m[1], 10, 64)
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xff, 0xff, 0x7f}, ind*1024); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	sh("mount", "-o", "loop,ro", img, mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return filepath.Join(mnt, "bad")
}

// writeOnlySysfsFile returns a sysfs attribute without read support: even
// root gets EACCES opening it for reading.
func writeOnlySysfsFile(t *testing.T) string {
	t.Helper()
	matches, _ := filepath.Glob("/sys/bus/*/drivers_probe")
	for _, p := range matches {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o444 == 0 {
			return p
		}
	}
	t.Skipf("no write-only sysfs attribute (/sys/bus/*/drivers_probe) found")
	return ""
}

// TestVerityDigestBadInput checks that each bad operand gives exactly one
// error line naming it, that the others are still digested, and that the
// exit code is 1.
func TestVerityDigestBadInput(t *testing.T) {
	dir := t.TempDir()
	good := writeRandomFiles(t, dir, 2)
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		path   func(t *testing.T) string
		reason string
	}{
		{"missing", func(*testing.T) string { return filepath.Join(dir, "missing") }, "no such file or directory"},
		{"directory", func(*testing.T) string { return dir }, "not a regular file (directory)"},
		{"fifo", func(*testing.T) string { return fifo }, "not a regular file (FIFO)"},
		{"read-EIO", corruptExt2File, "read at offset 12288: input/output error"},
		{"open-EACCES", writeOnlySysfsFile, "permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := tt.path(t)
			code, out, errOut := runCLI(t, "verity", "digest", good[0], bad, good[1])
			if code != exitFailure {
				t.Errorf("exit %d, want %d", code, exitFailure)
			}
			if want := "updatectl: verity digest: " + bad + ": " + tt.reason + "\n"; errOut != want {
				t.Errorf("stderr %q, want %q", errOut, want)
			}
			if want := fsverityDigest(t, "sha256", good...); out != want {
				t.Errorf("stdout %q, want the good files' digests %q", out, want)
			}
		})
	}
}

// TestVerityUsage checks exit code 2 for usage errors and --help for
// every verb.
func TestVerityUsage(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"verity", "digest"},
		{"verity", "digest", "--hash-alg", "md5", f},
		{"verity", "digest", "-j", "0", f},
		{"verity", "enable", "--hash-alg", "sha1", f},
		{"verity", "enable"},
		{"verity", "measure"},
		{"verity", "bogus"},
		{"verity", "digest", "--bogus", f},
	} {
		if code, out, errOut := runCLI(t, args...); code != exitUsage || out != "" || !strings.HasPrefix(errOut, "updatectl: ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and an error", args, code, out, errOut, exitUsage)
		}
	}
	for _, verb := range []string{"digest", "enable", "measure"} {
		code, out, errOut := runCLI(t, "verity", verb, "--help")
		if code != 0 || errOut != "" || !strings.Contains(out, "updatectl verity "+verb) {
			t.Errorf("verity %s --help: exit %d, stderr %q, stdout %q", verb, code, errOut, out)
		}
	}
}

// TestVerityEnableMeasure runs enable and measure on a real file. On a
// kernel or filesystem without fs-verity both must fail with one clear
// line per file and exit 1; with fs-verity, measure must print what digest
// printed.
func TestVerityEnableMeasure(t *testing.T) {
	dir := t.TempDir()
	paths := writeRandomFiles(t, dir, 2)
	code, _, errOut := runCLI(t, "verity", "enable", paths[0], dir, paths[1])
	if code == 0 {
		// fs-verity works here: measure must agree with digest.
		_, want, _ := runCLI(t, "verity", "digest", paths[0], paths[1])
		if code, got, errOut := runCLI(t, "verity", "measure", paths[0], paths[1]); code != 0 || got != want {
			t.Errorf("measure: exit %d, %q, stderr %q; want %q", code, got, errOut, want)
		}
		return
	}
	if code != exitFailure {
		t.Fatalf("enable: exit %d, want 1", code)
	}
	// EOPNOTSUPP (kernel without fs-verity, or ext4 without the feature)
	// or ENOTTY (a filesystem without the ioctl, e.g. tmpfs).
	notSupported := ": fs-verity not supported by the kernel or filesystem " +
		"\\((operation not supported|inappropriate ioctl for device)\\)"
	want := regexp.MustCompile("^" +
		"updatectl: verity enable: " + regexp.QuoteMeta(paths[0]) + notSupported + "\n" +
		"updatectl: verity enable: " + regexp.QuoteMeta(dir) + ": not a regular file \\(directory\\)\n" +
		"updatectl: verity enable: " + regexp.QuoteMeta(paths[1]) + notSupported + "\n$")
	if !want.MatchString(errOut) {
		t.Errorf("enable stderr:\n%s\nwant:\n%s", errOut, want)
	}
	code, out, errOut := runCLI(t, "verity", "measure", paths[0])
	want = regexp.MustCompile("^updatectl: verity measure: " + regexp.QuoteMeta(paths[0]) + notSupported + "\n$")
	if code != exitFailure || out != "" || !want.MatchString(errOut) {
		t.Errorf("measure: exit %d, stdout %q, stderr %q; want 1 and %s", code, out, errOut, want)
	}
}
