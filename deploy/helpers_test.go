package deploy

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// env is a scratch sysroot with a store and a Manager.
type env struct {
	t       testing.TB
	sysroot string
	store   *objstore.Store
	m       *Manager
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: /etc merges set owners and device nodes for real")
	}
}

func newEnv(t testing.TB) *env {
	t.Helper()
	needRoot(t)
	sysroot := t.TempDir()
	s, err := objstore.Open(context.Background(), filepath.Join(sysroot, "twinroot"), objstore.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &env{t: t, sysroot: sysroot, store: s, m: New(s, sysroot, nil)}
}

// big is content long enough to be an external object (> 64 bytes).
func big(s string) []byte { return bytes.Repeat([]byte(s+"\n"), 20) }

// baseTree lays out a small root file system with an /etc holding one of
// everything the merge cases touch.
func baseTree(t testing.TB, dir string) {
	t.Helper()
	files := map[string][]byte{
		"usr/lib/os-release":       []byte("NAME=\"Test OS\"\nVERSION_ID=1\n"),
		"usr/bin/tool":             big("tool"),
		"var/lib/state":            []byte("seed"),
		"etc/passwd":               []byte("root:x:0:0::/root:/bin/sh\n"),
		"etc/hosts":                []byte("127.0.0.1 localhost\n"),
		"etc/motd":                 big("welcome"),
		"etc/ssh/sshd_config":      big("PermitRootLogin no"),
		"etc/ssh/ssh_config":       big("Host *"),
		"etc/conf.d/a.conf":        []byte("a=1\n"),
		"etc/dir.d/x":              []byte("x\n"),
		"etc/xattr-file":           []byte("labelled\n"),
		"etc/owned":                []byte("owned\n"),
		"etc/removed-by-new":       big("old"),
		"etc/deep/er/still/file":   []byte("deep\n"),
		"etc/systemd/system/.keep": {},
	}
	writeFiles(t, dir, files)
	must(t, os.Symlink("hosts", filepath.Join(dir, "etc/link")))
	must(t, unix.Lsetxattr(filepath.Join(dir, "etc/xattr-file"), "security.selinux", []byte("system_u:object_r:etc_t:s0"), 0))
	must(t, unix.Lsetxattr(filepath.Join(dir, "etc/xattr-file"), "user.origin", []byte("image"), 0))
	must(t, os.Lchown(filepath.Join(dir, "etc/owned"), 0, 0))
	must(t, os.Chmod(filepath.Join(dir, "etc/ssh/sshd_config"), 0o600))
}

func writeFiles(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(dir, p)
		must(t, os.MkdirAll(filepath.Dir(full), 0o755))
		must(t, os.WriteFile(full, c, 0o644))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// image builds a tree with baseTree plus edit and commits it.
func (e *env) image(edit func(dir string)) verity.Digest {
	e.t.Helper()
	dir := e.t.TempDir()
	baseTree(e.t, dir)
	if edit != nil {
		edit(dir)
	}
	return e.importDir(dir)
}

func (e *env) importDir(dir string) verity.Digest {
	e.t.Helper()
	res, err := e.store.ImportDir(context.Background(), dir, objstore.ImportOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Digest
}

func (e *env) create(opts CreateOptions) Deployment {
	e.t.Helper()
	d, err := e.m.Create(context.Background(), opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// read returns a file's content ("" and false when absent).
func read(t testing.TB, p string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func lstat(t testing.TB, p string) (unix.Stat_t, bool) {
	t.Helper()
	var st unix.Stat_t
	err := unix.Lstat(p, &st)
	if err == unix.ENOENT {
		return st, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return st, true
}

func xattr(t testing.TB, p, name string) string {
	t.Helper()
	v := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, name, v)
	if err == unix.ENODATA {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(v[:n])
}

// checkClean asserts the store and deployments have no leftovers: tmp/
// and removed/ empty, every root names a committed image and belongs to
// an existing deployment, fsck clean.
func (e *env) checkClean(label string) {
	e.t.Helper()
	ctx := context.Background()
	root := e.store.Root()
	for _, d := range []string{"tmp", "removed"} {
		ents, _ := os.ReadDir(filepath.Join(root, d))
		for _, en := range ents {
			e.t.Errorf("%s: leftover %s/%s", label, d, en.Name())
		}
	}
	roots, err := e.store.Roots(ctx)
	must(e.t, err)
	for name, d := range roots {
		id, _ := strings.CutPrefix(name, rootPrefix)
		dep, err := e.m.Get(ctx, id)
		if err != nil || dep.Image != d {
			e.t.Errorf("%s: root %s names %s, deployment: %+v %v", label, name, d, dep, err)
		}
	}
	res, err := e.store.Fsck(ctx, objstore.FsckOptions{})
	must(e.t, err)
	for _, p := range res.Problems {
		e.t.Errorf("%s: fsck: %s", label, p)
	}
}
