package vmtest

import (
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guestBinary is where the test binary lives in the guest.
const guestBinary = "/vmtest/test.bin"

// Run boots the guest with cfg and returns the result. It fails t (Fatal)
// when the guest cannot boot or reports no exit status; a non-zero exit
// status is returned, not judged.
func Run(t testing.TB, cfg Config) Result {
	t.Helper()
	if cfg.Log == nil && os.Getenv(EnvConsole) == "1" {
		cfg.Log = os.Stderr
	}
	res, err := RunContext(t.Context(), cfg)
	if err != nil {
		t.Fatalf("%v\n--- guest console:\n%s", err, res.Output)
	}
	t.Logf("vmtest: kernel %s, boot %v, total %v, boots %d, exit status %d",
		res.Kernel, res.BootTime.Round(time.Millisecond), res.Duration.Round(time.Millisecond), res.Boots, res.ExitCode)
	return res
}

// RunTest runs the test called name (a t.Name(), subtests included) of the
// current test binary in the guest and returns the result without judging
// it. cfg.Command is replaced; cfg.Files gets the test binary, which must be
// statically linked (CGO_ENABLED=0). The guest test sees InGuest() true.
func RunTest(t testing.TB, name string, cfg Config) Result {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	if err := checkStatic(exe); err != nil {
		t.Fatal(err)
	}
	cfg.Files = append(append([]File(nil), cfg.Files...), File{Host: exe, Guest: guestBinary, Mode: 0o755})
	cfg.Command = []string{guestBinary, "-test.run", testRunPattern(name), "-test.v", "-test.count=1"}
	return Run(t, cfg)
}

// RunTestInGuest re-runs the calling test in the guest and passes, fails or
// skips t as the guest test did, with the guest output. The test calls it
// when !InGuest() and returns; its body then runs in the guest:
//
//	func TestX(t *testing.T) {
//		if !vmtest.InGuest() {
//			vmtest.RunTestInGuest(t, vmtest.Config{Disks: []vmtest.Disk{{Verity: true}}})
//			return
//		}
//		dir := vmtest.ScratchDir() // ext4 with -O verity, mounted
//		...
//	}
func RunTestInGuest(t *testing.T, cfg Config) {
	t.Helper()
	if InGuest() {
		t.Fatal("vmtest: RunTestInGuest called in the guest")
	}
	res := RunTest(t, t.Name(), cfg)
	switch verdict(res, t.Name()) {
	case guestPassed:
		t.Logf("--- guest console:\n%s", res.Output)
	case guestSkipped:
		t.Skipf("skipped in the guest:\n%s", res.Output)
	default:
		t.Fatalf("guest test %s failed (exit status %d)\n--- guest console:\n%s", t.Name(), res.ExitCode, res.Output)
	}
}

type guestVerdict int

const (
	guestFailed guestVerdict = iota
	guestPassed
	guestSkipped
)

// verdict reads the guest's go test -v output: a pass needs exit status 0
// and the test's own PASS line (a pattern that matched no test also exits 0).
func verdict(res Result, name string) guestVerdict {
	if res.ExitCode != 0 {
		return guestFailed
	}
	switch {
	case strings.Contains(res.Output, "--- PASS: "+name+" ("):
		return guestPassed
	case strings.Contains(res.Output, "--- SKIP: "+name+" ("):
		return guestSkipped
	}
	return guestFailed
}

// BuildBinary builds the Go main package pkg (an import path, or a path
// relative to the test's package directory such as "./testdata/cmd") as a
// static binary for the guest (CGO_ENABLED=0) and returns its path in a
// temporary directory. Pass it to the guest with Config.Files.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), path.Base(pkg))
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vmtest: go build %s: %v\n%s", pkg, err, b)
	}
	if err := checkStatic(out); err != nil {
		t.Fatal(err)
	}
	return out
}
