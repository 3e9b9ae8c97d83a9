package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The packaging under dist/ that runs the binary in an initramfs.
const (
	distDir      = "../../dist"
	dracutModule = distDir + "/dracut/50twinroot"
	unitFile     = dracutModule + "/twinroot-setup-root.service"
	installPath  = "/usr/lib/twinroot/twinroot-setup-root"
)

// TestDistSystemdUnit checks the dracut module's unit with systemd-analyze
// verify in a scratch root holding the binary at its installed path and a
// stand-in for sysroot.mount (which only an initrd's generators create),
// and checks the ordering that makes it work.
func TestDistSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ConditionKernelCommandLine=twinroot\n", "After=sysroot.mount\n", "Requires=sysroot.mount\n",
		"Before=initrd-root-fs.target\n", "DefaultDependencies=no\n", "OnFailure=emergency.target\n",
		"Type=oneshot\n", "ExecStart=" + installPath + " ",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("%s lacks %q", unitFile, strings.TrimSpace(want))
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	root := t.TempDir()
	bin := setupRootBinary(t)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, root, map[string][]byte{
		strings.TrimPrefix(installPath, "/"):             b,
		"etc/systemd/system/twinroot-setup-root.service": unit,
		"etc/systemd/system/sysroot.mount":               []byte("[Mount]\nWhat=/dev/vda\nWhere=/sysroot\n"),
	})
	if err := os.Chmod(filepath.Join(root, installPath), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--root="+root, "/etc/systemd/system/twinroot-setup-root.service").CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDistDracutModule runs the module's install() with dracut's helper
// functions replaced by ones that record their calls, and checks that the
// binary, the unit and its wants link land where a systemd initrd finds
// them.
func TestDistDracutModule(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	script := `set -e
inst_binary() { echo "inst_binary $*"; }
inst_simple() { echo "inst_simple $*"; }
ln_r() { echo "ln_r $*"; }
instmods() { echo "instmods $*"; }
require_binaries() { echo "require_binaries $*"; }
source "$1"
moddir=/mod systemdsystemunitdir=/usr/lib/systemd/system initdir=$2
check; echo "check=$?"
depends
installkernel
install
`
	initdir := t.TempDir()
	out, err := exec.Command("bash", "-c", script, "bash", filepath.Join(dracutModule, "module-setup.sh"), initdir).CombinedOutput()
	if err != nil {
		t.Fatalf("module-setup.sh: %v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{
		"require_binaries " + installPath + "\n", "check=0\n", "systemd\n", "instmods erofs overlay loop\n",
		"inst_binary " + installPath + "\n",
		"inst_simple /mod/twinroot-setup-root.service /usr/lib/systemd/system/twinroot-setup-root.service\n",
		"ln_r /usr/lib/systemd/system/twinroot-setup-root.service /usr/lib/systemd/system/initrd-root-fs.target.wants/twinroot-setup-root.service\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("module-setup.sh output lacks %q:\n%s", strings.TrimSpace(want), got)
		}
	}
	if fi, err := os.Stat(filepath.Join(initdir, "usr/lib/systemd/system/initrd-root-fs.target.wants")); err != nil || !fi.IsDir() {
		t.Errorf("install() made no initrd-root-fs.target.wants in the initramfs: %v", err)
	}
}

// TestDistShellSyntax checks that the shell scripts under dist/ parse
// (the initramfs-tools scripts need Debian's initramfs machinery to run).
func TestDistShellSyntax(t *testing.T) {
	for _, s := range []struct{ shell, file string }{
		{"sh", distDir + "/initramfs-tools/hooks/twinroot"},
		{"sh", distDir + "/initramfs-tools/scripts/local-bottom/twinroot"},
		{"bash", dracutModule + "/module-setup.sh"},
	} {
		if out, err := exec.Command(s.shell, "-n", s.file).CombinedOutput(); err != nil {
			t.Errorf("%s -n %s: %v\n%s", s.shell, s.file, err, out)
		}
		b, err := os.ReadFile(s.file)
		if err != nil {
			t.Fatal(err)
		}
		if s.shell == "sh" && !strings.Contains(string(b), installPath) {
			t.Errorf("%s does not use %s", s.file, installPath)
		}
	}
}

// TestDistInstall runs dist/install-initramfs.sh into a DESTDIR and checks
// the paths the unit, the scripts and the generators rely on.
func TestDistInstall(t *testing.T) {
	bin := setupRootBinary(t)
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// The script installs bin/twinroot-setup-root of a built checkout:
	// give it a copy of the repository's dist/ with the fresh binary.
	work := t.TempDir()
	if err := os.CopyFS(filepath.Join(work, "dist"), os.DirFS(filepath.Join(repo, "dist"))); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, work, map[string][]byte{"bin/twinroot-setup-root": b})
	if err := os.Chmod(filepath.Join(work, "bin/twinroot-setup-root"), 0o755); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(work, "dist/install-initramfs.sh"))
	cmd.Env = append(os.Environ(), "DESTDIR="+dest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install-initramfs.sh: %v\n%s", err, out)
	}
	for p, mode := range map[string]os.FileMode{
		installPath: 0o755,
		"/usr/lib/dracut/modules.d/50twinroot/module-setup.sh":             0o755,
		"/usr/lib/dracut/modules.d/50twinroot/twinroot-setup-root.service": 0o644,
		"/usr/share/initramfs-tools/hooks/twinroot":                        0o755,
		"/usr/share/initramfs-tools/scripts/local-bottom/twinroot":         0o755,
	} {
		fi, err := os.Stat(filepath.Join(dest, p))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %v", p, fi, err, mode)
		}
	}
}
