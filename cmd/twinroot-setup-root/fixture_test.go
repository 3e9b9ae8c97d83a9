package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/deploy"
	"github.com/twinroot/twinroot/internal/bootarg"
	"github.com/twinroot/twinroot/internal/vmtest"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// fixture is a store with one image and one deployment on a physical root.
type fixture struct {
	sysroot string
	arg     bootarg.Arg
	files   map[string][]byte // the image's regular files
	etc     map[string][]byte // the deployment's /etc, as written
}

// Contents of the fixture image and deployment.
var (
	imageFiles = map[string][]byte{
		"usr/bin/hello":      bytes.Repeat([]byte("hello from the image\n"), 300), // an object
		"usr/lib/os-release": []byte("NAME=Twinroot test\nVERSION_ID=1\n"),        // inline
		"usr/share/big":      bytes.Repeat([]byte{0xa5, 0x5a, 0x3c}, 40000),       // an object, several blocks
		"etc/hostname":       []byte("image\n"),
		"etc/image-only":     bytes.Repeat([]byte("i"), 100),
		"var/lib/seed":       []byte("from the image's /var\n"),
		"sysroot/.keep":      nil,
		"usr/lib/modules/.k": nil,
		"run/.keep":          nil,
	}
	deploymentEtc = map[string][]byte{
		"hostname":          []byte("deployed\n"),
		"deployment-marker": []byte("this is the deployment's /etc\n"),
	}
)

// writeTree writes files (paths relative to dir) with their parents.
func writeTree(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, c := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// makeFixture creates <sysroot>/twinroot with the image imported by
// objstore (sealed with fs-verity where the file system has it) and a
// deployment of it made by deploy.Manager (its etc/ the image's /etc, the
// persistent /var seeded from the image's), whose /etc then gets local
// changes as a user would make them: deploymentEtc written, image-only
// deleted.
func makeFixture(t *testing.T, sysroot string) fixture {
	t.Helper()
	return makeFixtureOf(t, sysroot, imageFiles)
}

// makeFixtureOf is makeFixture with an image made of files.
func makeFixtureOf(t *testing.T, sysroot string, files map[string][]byte) fixture {
	t.Helper()
	return makeFixtureAlg(t, sysroot, files, verity.SHA256)
}

// makeFixtureAlg is makeFixtureOf with a store using digest algorithm alg.
func makeFixtureAlg(t *testing.T, sysroot string, files map[string][]byte, alg verity.Algorithm) fixture {
	t.Helper()
	ctx := context.Background()
	src := t.TempDir()
	writeTree(t, src, files)
	s, err := objstore.Open(ctx, filepath.Join(sysroot, storeDir), objstore.Options{Create: true, Algorithm: alg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := s.ImportDir(ctx, src, objstore.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := deploy.New(s, sysroot, nil)
	d, err := m.Create(ctx, deploy.CreateOptions{Image: res.Digest, Origin: deploy.Origin{Ref: "import:" + src}})
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, m.EtcDir(d.ID), deploymentEtc)
	if err := os.Remove(filepath.Join(m.EtcDir(d.ID), "image-only")); err != nil {
		t.Fatal(err)
	}
	return fixture{sysroot: sysroot, arg: bootarg.Arg{ID: d.ID, Image: res.Digest}, files: files, etc: deploymentEtc}
}

// cmdline returns a kernel command line naming the fixture, plus extra.
func (fx fixture) cmdline(extra ...string) string {
	return strings.Join(append([]string{"root=/dev/vda", "rw", fx.arg.String()}, extra...), " ") + "\n"
}

// otherDigest is a digest no image has.
var otherDigest = verity.DigestBytes([]byte("not the image"), verity.SHA256)

// runResult is one run of the binary.
type runResult struct {
	code   int
	output string
}

// runBinary runs the setup-root binary bin with a command line file
// holding cmdline and the given flags.
func runBinary(t *testing.T, bin, cmdline string, flags ...string) runResult {
	t.Helper()
	cf := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(cf, []byte(cmdline), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--cmdline", cf, "--config", filepath.Join(t.TempDir(), "none.conf"), "--kmsg=false"}, flags...)
	cmd := exec.Command(bin, args...)
	out, err := cmd.CombinedOutput()
	res := runResult{output: string(out)}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running %s: %v", bin, err)
		}
		res.code = ee.ExitCode()
	}
	t.Logf("%s %s: exit %d\n%s", bin, strings.Join(args, " "), res.code, out)
	return res
}

// mountsUnder returns the mount points at or below dir, deepest last.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// mountInfo returns the file system type and the superblock options of
// the topmost mount at dir.
func mountInfo(t *testing.T, dir string) (fstype string, opts []string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[4] != dir {
			continue
		}
		if i := slices.Index(f, "-"); i > 0 && i+3 < len(f) {
			fstype, opts, found = f[i+1], strings.Split(f[i+3], ","), true // later lines are on top
		}
	}
	if !found {
		t.Fatalf("%s is not a mount point", dir)
	}
	return fstype, opts
}

// unmountAll detaches every mount at or below dir.
func unmountAll(t *testing.T, dir string) {
	t.Helper()
	ms := mountsUnder(t, dir)
	for i := len(ms) - 1; i >= 0; i-- {
		unix.Unmount(ms[i], unix.MNT_DETACH) // may already be gone with its parent
	}
}

// checkNewRoot checks the assembled root at target: the image's files,
// the deployment's /etc (written through to the deployment directory),
// the persistent /var (through to <physical root>/var) and the physical
// root at /sysroot.
func checkNewRoot(t *testing.T, target string, fx fixture) {
	t.Helper()
	for name, want := range fx.files {
		if strings.HasPrefix(name, "etc/") || strings.HasPrefix(name, "var/") || strings.HasPrefix(name, "sysroot/") {
			continue // mounted over
		}
		got, err := os.ReadFile(filepath.Join(target, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s in the new root: %d bytes, %v; want the image's %d bytes", name, len(got), err, len(want))
		}
	}
	for name, want := range fx.etc {
		if got, err := os.ReadFile(filepath.Join(target, "etc", name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("/etc/%s in the new root: %q, %v; want the deployment's %q", name, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(target, "etc/image-only")); err == nil {
		t.Errorf("/etc/image-only, deleted from the deployment's /etc, is visible: /etc is not the deployment's")
	}
	if got, err := os.ReadFile(filepath.Join(target, "var/lib/seed")); err != nil || !bytes.Equal(got, fx.files["var/lib/seed"]) {
		t.Errorf("/var/lib/seed (seeded from the image's /var): %q, %v", got, err)
	}
	inner := filepath.Join(target, "sysroot")
	depEtc := filepath.Join(inner, storeDir, deploymentsDir, fx.arg.ID, "etc")
	if err := os.WriteFile(filepath.Join(target, "etc/written-at-runtime"), []byte("runtime\n"), 0o644); err != nil {
		t.Errorf("writing /etc in the new root: %v", err)
	} else if got, err := os.ReadFile(filepath.Join(depEtc, "written-at-runtime")); err != nil || string(got) != "runtime\n" {
		t.Errorf("a file written in /etc is not in the deployment's etc/ (%s): %q, %v", depEtc, got, err)
	}
	if err := os.WriteFile(filepath.Join(target, "var/probe"), []byte("var\n"), 0o644); err != nil {
		t.Errorf("writing /var in the new root: %v", err)
	} else if got, err := os.ReadFile(filepath.Join(inner, "var/probe")); err != nil || string(got) != "var\n" {
		t.Errorf("a file written in /var is not in the physical root's var/: %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(inner, storeDir, imagesDir, fx.arg.Image.Hex(), imageFile)); err != nil {
		t.Errorf("the physical root is not reachable at /sysroot in the new root: %v", err)
	}
	if err := os.WriteFile(filepath.Join(target, "usr/new"), nil, 0o644); err == nil {
		t.Errorf("the composefs root is writable")
	}
}

// setupRootBinary builds the command for the host and the guest.
func setupRootBinary(t *testing.T) string {
	t.Helper()
	return vmtest.BuildBinary(t, "github.com/twinroot/twinroot/cmd/twinroot-setup-root")
}
