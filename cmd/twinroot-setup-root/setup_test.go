package main

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/verity"
)

func TestParseConfig(t *testing.T) {
	req, ifs := PolicyRequire, PolicyIfSupported
	for _, tc := range []struct {
		name, in string
		want     *Policy
		err      bool
	}{
		{"empty", "", nil, false},
		{"comments", "# nothing\n\n   # more\n", nil, false},
		{"require", "verity = require\n", &req, false},
		{"if-supported", "verity=if-supported # no fs-verity on this machine", &ifs, false},
		{"last wins", "verity=require\nverity=if-supported\n", &ifs, false},
		{"bad value", "verity = off\n", nil, true},
		{"unknown key", "verty = require\n", nil, true},
		{"no equals", "verity require\n", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("ParseConfig(%q) error %v, want error %v", tc.in, err, tc.err)
			}
			if tc.err {
				if !errors.Is(err, ErrConfig) {
					t.Errorf("error %v does not wrap ErrConfig", err)
				}
				return
			}
			if (c.Verity == nil) != (tc.want == nil) || c.Verity != nil && *c.Verity != *tc.want {
				t.Errorf("ParseConfig(%q).Verity = %v, want %v", tc.in, c.Verity, tc.want)
			}
		})
	}
}

func TestEffectivePolicy(t *testing.T) {
	req, ifs := PolicyRequire, PolicyIfSupported
	for _, tc := range []struct {
		name    string
		file    *Policy
		cmdline string
		want    Policy
		err     bool
	}{
		{"default", nil, "root=/dev/vda twinroot=a:b", PolicyRequire, false},
		{"cmdline relaxes the default", nil, "twinroot.verity=if-supported", PolicyIfSupported, false},
		{"cmdline require", nil, "twinroot.verity=require", PolicyRequire, false},
		{"file relaxes", &ifs, "quiet", PolicyIfSupported, false},
		{"file require is not relaxed by the cmdline", &req, "twinroot.verity=if-supported", PolicyRequire, false},
		{"cmdline tightens the file", &ifs, "twinroot.verity=require", PolicyRequire, false},
		{"last cmdline value wins", nil, "twinroot.verity=require twinroot.verity=if-supported", PolicyIfSupported, false},
		{"bad cmdline value", nil, "twinroot.verity=off", 0, true},
		{"other keys ignored", nil, "twinroot.verityx=off twinroot=x", PolicyRequire, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := EffectivePolicy(FileConfig{Verity: tc.file}, tc.cmdline)
			if (err != nil) != tc.err {
				t.Fatalf("error %v, want error %v", err, tc.err)
			}
			if !tc.err && got != tc.want {
				t.Errorf("EffectivePolicy = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestLogLines checks the log format the console, /dev/kmsg and the
// benchmark read: the program prefix, t=<ms since start>, and the syslog
// priority on the kmsg sink only, one Write per line.
func TestLogLines(t *testing.T) {
	var con, kmsg writes
	start := time.Now().Add(-1500 * time.Millisecond)
	log := newLogger(start, slog.LevelInfo, sink{w: &con}, sink{w: &kmsg, kmsg: true})
	log.Info("hello", "k", "v")
	log.With("deployment", "a.0").Error("refusing to boot")
	log.Debug("not shown")
	if len(con) != 2 || len(kmsg) != 2 {
		t.Fatalf("%d console and %d kmsg writes, want 2 each: %q %q", len(con), len(kmsg), con, kmsg)
	}
	lineRe := regexp.MustCompile(`^twinroot-setup-root: t=(1[5-9][0-9]{2}|[2-9][0-9]{3})\.[0-9]{3}ms level=(INFO|ERROR) msg=`)
	for i, want := range []struct{ prio, level, rest string }{{"<6>", "INFO", "hello k=v\n"}, {"<3>", "ERROR", `"refusing to boot" deployment=a.0` + "\n"}} {
		c, k := con[i], kmsg[i]
		if !lineRe.MatchString(c) || !strings.Contains(c, "level="+want.level) || !strings.HasSuffix(c, want.rest) {
			t.Errorf("console line %q", c)
		}
		if !strings.HasPrefix(k, want.prio) || k[len(want.prio):] != c {
			t.Errorf("kmsg line %q, want %q + the console line", k, want.prio)
		}
	}
}

// writes records each Write.
type writes []string

func (w *writes) Write(p []byte) (int, error) {
	*w = append(*w, string(bytes.Clone(p)))
	return len(p), nil
}

// TestDeps keeps the initramfs binary small: besides the standard library
// it may import only these packages. errgroup comes with erofs (FromDir);
// splitting erofs to avoid it is not worth a package of its own for
// ~200 lines of x/sync.
func TestDeps(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go not in PATH")
	}
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	allowed := []string{
		"github.com/twinroot/twinroot/cmd/twinroot-setup-root",
		"github.com/twinroot/twinroot/erofs",
		"github.com/twinroot/twinroot/verity",
		"github.com/twinroot/twinroot/internal/bootarg",
		"github.com/twinroot/twinroot/internal/atomicfile",
		"golang.org/x/sys/unix",
		"golang.org/x/sync/errgroup",
	}
	for _, p := range strings.Fields(string(out)) {
		first, _, _ := strings.Cut(p, "/")
		if !strings.Contains(first, ".") {
			continue // standard library
		}
		if !slices.Contains(allowed, p) {
			t.Errorf("twinroot-setup-root imports %s, which is not on its list", p)
		}
	}
}

// hostEnv makes a physical root (a tmpfs, so it is a mount point) with the
// fixture, a run directory and a cleanup that unmounts everything.
func hostEnv(t *testing.T) (fx fixture, runDir, bin string) {
	t.Helper()
	return hostEnvOf(t, imageFiles)
}

// hostEnvOf is hostEnv with an image made of files.
func hostEnvOf(t *testing.T, files map[string][]byte) (fx fixture, runDir, bin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a tmpfs, EROFS and overlayfs")
	}
	bin = setupRootBinary(t)
	base := t.TempDir()
	t.Cleanup(func() { unmountAll(t, base) })
	sysroot := filepath.Join(base, "sysroot")
	runDir = filepath.Join(base, "run")
	for _, d := range []string{sysroot, runDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", sysroot, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	return makeFixtureOf(t, sysroot, files), runDir, bin
}

// assertUntouched checks that a refused run left the physical root mounted
// at its place, nothing else mounted, and no staging directory.
func assertUntouched(t *testing.T, fx fixture, runDir string) {
	t.Helper()
	if ms := mountsUnder(t, fx.sysroot); !slices.Equal(ms, []string{fx.sysroot}) {
		t.Errorf("mounts under %s after a refused run: %v, want only the physical root", fx.sysroot, ms)
	}
	if fstype, _ := mountInfo(t, fx.sysroot); fstype != "tmpfs" {
		t.Errorf("%s is %s after a refused run, want the physical root (tmpfs)", fx.sysroot, fstype)
	}
	if ms := mountsUnder(t, runDir); len(ms) != 0 {
		t.Errorf("mounts left under %s: %v", runDir, ms)
	}
	if ents, err := os.ReadDir(runDir); err != nil || len(ents) != 0 {
		t.Errorf("%s after a refused run: %v, %v; want it empty", runDir, ents, err)
	}
}

// TestSetupRootHost runs the binary on this machine, which has EROFS and
// overlayfs but no fs-verity: the if-supported policy mounts with an
// explicit warning, require (the default) refuses, and every refusal
// leaves the physical root as it was.
func TestSetupRootHost(t *testing.T) {
	t.Run("if-supported", func(t *testing.T) {
		fx, runDir, bin := hostEnv(t)
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", fx.sysroot, "--run-dir", runDir)
		if r.code != 0 {
			t.Fatalf("exit status %d, want 0", r.code)
		}
		if !strings.Contains(r.output, "WITHOUT fs-verity") {
			t.Errorf("no warning that the root is mounted without fs-verity")
		}
		fstype, opts := mountInfo(t, fx.sysroot)
		if fstype != "overlay" || slices.Contains(opts, "verity=require") {
			t.Errorf("%s is %s %v, want an overlay without verity=require", fx.sysroot, fstype, opts)
		}
		checkNewRoot(t, fx.sysroot, fx)
		if ents, err := os.ReadDir(runDir); err != nil || len(ents) != 0 {
			t.Errorf("staging left in %s: %v, %v", runDir, ents, err)
		}
		for _, step := range []string{"verify=", "inspect=", "stage=", "mount=", "bind-etc=", "bind-var=", "bind-sysroot=", "switch=", "total_ms="} {
			if !strings.Contains(r.output, step) {
				t.Errorf("log has no %s", step)
			}
		}
	})
	t.Run("read-only-physical-root", func(t *testing.T) {
		// sysroot.mount mounts ro unless the command line says rw: the
		// root still comes up (deploy made /var), with a warning.
		fx, runDir, bin := hostEnv(t)
		if err := unix.Mount("", fx.sysroot, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			t.Fatal(err)
		}
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", fx.sysroot, "--run-dir", runDir)
		if r.code != 0 {
			t.Fatalf("exit status %d, want 0", r.code)
		}
		if !strings.Contains(r.output, "physical root is mounted read-only") {
			t.Errorf("no warning about the read-only physical root")
		}
		if err := os.WriteFile(filepath.Join(fx.sysroot, "etc/x"), nil, 0o644); err == nil {
			t.Errorf("/etc is writable on a read-only physical root")
		}
	})
	t.Run("sha512-store", func(t *testing.T) {
		// A store with SHA-512 digests (composefs-rs and bootc's choice):
		// 128 hex digits on the command line, the same checks.
		if os.Geteuid() != 0 {
			t.Skip("needs root")
		}
		bin := setupRootBinary(t)
		base := t.TempDir()
		t.Cleanup(func() { unmountAll(t, base) })
		sysroot, runDir := filepath.Join(base, "sysroot"), filepath.Join(base, "run")
		for _, d := range []string{sysroot, runDir} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.Mount("tmpfs", sysroot, "tmpfs", 0, "mode=0755"); err != nil {
			t.Fatal(err)
		}
		fx := makeFixtureAlg(t, sysroot, imageFiles, verity.SHA512)
		if len(fx.arg.Image.Hex()) != 128 {
			t.Fatalf("digest %s is not SHA-512", fx.arg.Image)
		}
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", fx.sysroot, "--run-dir", runDir)
		if r.code != 0 {
			t.Fatalf("exit status %d, want 0", r.code)
		}
		checkNewRoot(t, fx.sysroot, fx)
	})
	t.Run("missing-target", func(t *testing.T) {
		fx, runDir, bin := hostEnv(t)
		target := filepath.Join(filepath.Dir(runDir), "nosuch")
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", fx.sysroot, "--target", target, "--run-dir", runDir)
		if r.code != 1 || !strings.Contains(r.output, "target "+target+" is not a directory") {
			t.Errorf("exit %d; want 1 naming the missing target", r.code)
		}
		assertUntouched(t, fx, runDir)
	})
	t.Run("other-target", func(t *testing.T) {
		fx, runDir, bin := hostEnv(t)
		target := filepath.Join(filepath.Dir(runDir), "newroot")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", fx.sysroot, "--target", target, "--run-dir", runDir)
		if r.code != 0 {
			t.Fatalf("exit status %d, want 0", r.code)
		}
		checkNewRoot(t, target, fx)
		if fstype, _ := mountInfo(t, fx.sysroot); fstype != "tmpfs" {
			t.Errorf("the physical root at %s was replaced (%s) although the target is elsewhere", fx.sysroot, fstype)
		}
	})
	refusals := []struct {
		name    string
		cmdline func(fx fixture) string
		prep    func(t *testing.T, fx fixture)
		want    []string
	}{
		{"require-without-verity", func(fx fixture) string { return fx.cmdline() }, nil,
			[]string{"refusing to boot", "has no fs-verity", "verity policy is require", "NOT mounted"}},
		{"wrong-digest", func(fx fixture) string {
			return "rw twinroot.verity=if-supported twinroot=" + fx.arg.ID + ":" + otherDigest.Hex()
		}, func(t *testing.T, fx fixture) {
			// An image directory under the wrong name holding the real
			// image.cfs: the digest check, not the lookup, must refuse.
			b, err := os.ReadFile(filepath.Join(fx.sysroot, storeDir, imagesDir, fx.arg.Image.Hex(), imageFile))
			if err != nil {
				t.Fatal(err)
			}
			writeTree(t, filepath.Join(fx.sysroot, storeDir, imagesDir, otherDigest.Hex()), map[string][]byte{imageFile: b})
		}, []string{"refusing to boot", "has digest " + fx0Digest, "command line names " + otherDigest.String()}},
		{"unknown-image", func(fx fixture) string {
			return "rw twinroot.verity=if-supported twinroot=" + fx.arg.ID + ":" + otherDigest.Hex()
		}, nil, []string{"image " + otherDigest.Hex(), "no such file"}},
		{"unknown-deployment", func(fx fixture) string {
			return "rw twinroot.verity=if-supported twinroot=nosuch.0:" + fx.arg.Image.Hex()
		}, nil, []string{"deployment nosuch.0", "no such file"}},
		{"no-twinroot-argument", func(fx fixture) string { return "root=/dev/vda rw" }, nil,
			[]string{"no twinroot= kernel argument"}},
		{"bad-policy", func(fx fixture) string { return fx.cmdline("twinroot.verity=maybe") }, nil,
			[]string{"twinroot.verity=", "maybe", "want require or if-supported"}},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			fx, runDir, bin := hostEnv(t)
			if tc.prep != nil {
				tc.prep(t, fx)
			}
			r := runBinary(t, bin, tc.cmdline(fx), "--sysroot", fx.sysroot, "--run-dir", runDir)
			if r.code != 1 {
				t.Errorf("exit status %d, want 1", r.code)
			}
			for _, w := range tc.want {
				w = strings.ReplaceAll(w, fx0Digest, fx.arg.Image.String())
				if !strings.Contains(r.output, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			assertUntouched(t, fx, runDir)
		})
	}
	t.Run("undo-after-partial-assembly", func(t *testing.T) {
		// /var is a file on the physical root: the overlay and the /etc
		// bind are mounted when binding /var fails, and must be undone.
		fx, runDir, bin := hostEnv(t)
		v := filepath.Join(fx.sysroot, "var")
		if err := os.RemoveAll(v); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(v, []byte("not a directory"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", fx.sysroot, "--run-dir", runDir, "--verbose")
		if r.code != 1 || !strings.Contains(r.output, "bind "+v) {
			t.Errorf("exit %d; want 1 with the failed bind of %s", r.code, v)
		}
		for _, undone := range []string{"bind-etc", "mount"} {
			if !strings.Contains(r.output, "step="+undone) {
				t.Errorf("step %s did not run before the failure: the test does not test the undo", undone)
			}
		}
		if strings.Contains(r.output, "undo failed") {
			t.Errorf("an undo step failed")
		}
		assertUntouched(t, fx, runDir)
	})
	t.Run("image-without-sysroot-dir", func(t *testing.T) {
		files := maps.Clone(imageFiles)
		delete(files, "sysroot/.keep")
		fx, runDir, bin := hostEnvOf(t, files)
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", fx.sysroot, "--run-dir", runDir)
		if r.code != 1 || !strings.Contains(r.output, "has no /sysroot directory to mount on") {
			t.Errorf("exit %d; want 1 naming the missing /sysroot", r.code)
		}
		assertUntouched(t, fx, runDir)
	})
	t.Run("not-a-mount-point", func(t *testing.T) {
		fx, runDir, bin := hostEnv(t)
		// A plain directory is not where a physical root is mounted.
		sub := filepath.Join(fx.sysroot, "sub")
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		r := runBinary(t, bin, fx.cmdline("twinroot.verity=if-supported"), "--sysroot", sub, "--run-dir", runDir)
		if r.code != 1 || !strings.Contains(r.output, "is not a mount point") {
			t.Errorf("exit %d; want 1 with 'is not a mount point'", r.code)
		}
	})
}

// fx0Digest stands for the fixture's own digest in expected messages.
const fx0Digest = "<fixture digest>"
