package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// Child processes of the crash test are this test binary, re-executed
// with DEPLOY_CHILD set.
const (
	envChild   = "DEPLOY_CHILD"    // the sysroot to work on
	envCrashAt = "DEPLOY_CRASH_AT" // SIGKILL at this crash point call (1-based)
	envImages  = "DEPLOY_IMAGES"   // "<base hex> <new hex> <merge-from id>"
)

func TestMain(m *testing.M) {
	if sysroot := os.Getenv(envChild); sysroot != "" {
		n, err := crashChild(sysroot)
		if err != nil {
			fmt.Fprintf(os.Stderr, "child: %v\n", err)
			os.Exit(1)
		}
		fmt.Println(n)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashChild runs crashScript, killing itself at crash point
// DEPLOY_CRASH_AT; it returns the number of crash points passed.
func crashChild(sysroot string) (int64, error) {
	ctx := context.Background()
	var calls atomic.Int64
	at, _ := strconv.ParseInt(os.Getenv(envCrashAt), 10, 64)
	s, err := objstore.Open(ctx, filepath.Join(sysroot, "twinroot"), objstore.Options{})
	if err != nil {
		return 0, err
	}
	m := New(s, sysroot, nil)
	m.crash = func(string) {
		if calls.Add(1) == at {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	f := strings.Fields(os.Getenv(envImages))
	if len(f) != 3 {
		return 0, fmt.Errorf("bad %s", envImages)
	}
	baseImg, err1 := verity.ParseDigest(f[0])
	newImg, err2 := verity.ParseDigest(f[1])
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	err = crashScript(ctx, m, baseImg, newImg, f[2])
	return calls.Load(), err
}

// crashScript is the work the crash test interrupts, in a fixed order so
// that crash point N is the same moment in every run: a merged upgrade,
// a plain deployment and its removal, a change to the booted /etc, the
// finalize remerge, gc.
func crashScript(ctx context.Context, m *Manager, baseImg, newImg verity.Digest, from string) error {
	b, err := m.Create(ctx, CreateOptions{Image: newImg, MergeFrom: from, Origin: Origin{Ref: "oci:/x:new"}})
	if err != nil {
		return err
	}
	c, err := m.Create(ctx, CreateOptions{Image: baseImg})
	if err != nil {
		return err
	}
	if err := m.Remove(ctx, c.ID); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.EtcDir(from), "late"), []byte("changed after staging\n"), 0o644); err != nil {
		return err
	}
	// The new image changes hosts too: a conflict only the remerge finds.
	if err := os.WriteFile(filepath.Join(m.EtcDir(from), "hosts"), []byte("late local hosts\n"), 0o644); err != nil {
		return err
	}
	if _, err := m.Remerge(ctx, b.ID, from); err != nil {
		return err
	}
	_, err = m.GC(ctx)
	return err
}

// fingerprint hashes a directory tree: paths, types, modes, owners,
// xattrs, symlink targets and contents.
func fingerprint(t testing.TB, dir string) string {
	t.Helper()
	tr, err := loadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	var paths []string
	for p := range tr.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		e := tr.entries[p]
		fmt.Fprintf(h, "%s %o %d %d %q %v\n", p, e.mode, e.uid, e.gid, e.target, e.xattrs)
		if e.typ() == unix.S_IFREG {
			b, err := os.ReadFile(filepath.Join(dir, p))
			if err != nil {
				t.Fatal(err)
			}
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestCrashCreate kills a child running crashScript at every crash point
// (each path Apply writes, and each step of Create, Remove and Remerge),
// and at random moments, then opens the store as the next boot would and
// checks: every deployment directory is complete (its record parses, its
// .lock is there, its etc/ is exactly the reference run's, or for the
// remerged one the reference before or after the remerge), every root
// names an image that exists, fsck is clean; after deploy and store gc no
// root is left without its deployment and tmp/ and removed/ are empty; and
// a new deployment can be made.
func TestCrashCreate(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	base := t.TempDir()
	if err := unix.Mount("tmpfs", base, "tmpfs", 0, "size=512m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(base, unix.MNT_DETACH) })

	// The template sysroot: two images, a booted deployment with local
	// changes, an /etc large enough for a few hundred crash points.
	tmpl := filepath.Join(base, "template")
	s, err := objstore.Open(ctx, filepath.Join(tmpl, "twinroot"), objstore.Options{Create: true})
	must(t, err)
	e := &env{t: t, sysroot: tmpl, store: s, m: New(s, tmpl, nil)}
	many := func(root string) {
		for i := range 60 {
			write(t, filepath.Join(root, fmt.Sprintf("etc/many.d/%03d.conf", i)), strings.Repeat(strconv.Itoa(i), 1+i%40))
		}
	}
	baseImg := e.image(many)
	newImg := e.image(func(root string) {
		many(root)
		write(t, filepath.Join(root, "etc/hosts"), "new hosts\n")
		write(t, filepath.Join(root, "etc/conf.d/b.conf"), "b\n")
	})
	booted := e.create(CreateOptions{Image: baseImg})
	etc := e.m.EtcDir(booted.ID)
	write(t, filepath.Join(etc, "motd"), "local motd\n")
	must(t, os.Remove(filepath.Join(etc, "ssh/ssh_config")))
	must(t, os.Lchown(filepath.Join(etc, "owned"), 10, 10))
	// An empty /var (a mount point, say): the script's first Create seeds it.
	must(t, os.RemoveAll(filepath.Join(tmpl, "var")))
	must(t, os.Mkdir(filepath.Join(tmpl, "var"), 0o700))
	s.Close()
	images := baseImg.String() + " " + newImg.String() + " " + booted.ID

	run := func(dir string, crashAt int, delay time.Duration) (int, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"="+dir, envImages+"="+images, envCrashAt+"="+strconv.Itoa(crashAt))
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		must(t, cmd.Start())
		if delay > 0 {
			timer := time.AfterFunc(delay, func() { cmd.Process.Kill() })
			defer timer.Stop()
		}
		if err := cmd.Wait(); err != nil {
			return 0, fmt.Errorf("%w: %s", err, errb.String())
		}
		n, _ := strconv.Atoi(strings.TrimSpace(out.String()))
		return n, nil
	}
	clone := func(name string) string {
		dir := filepath.Join(base, name)
		if out, err := exec.Command("cp", "-a", tmpl, dir).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
		return dir
	}

	// A run without a crash: the crash points and the reference /etc of
	// each deployment it makes.
	ref := clone("ref")
	total, err := run(ref, 0, 0)
	must(t, err)
	if total < 250 {
		t.Fatalf("only %d crash points", total)
	}
	// Accepted /etc of each deployment: the reference run's; for the
	// merged one also its state before the remerge (made here the same way,
	// before "late" was written); for the plain one, removed by the
	// script, a copy of the base image's /etc.
	accept := map[string]map[string]bool{}
	// The conflicts the record beside each accepted etc/ must list.
	conflictsOf := map[string]string{}
	recordConflicts := func(sysroot, id string) string {
		b, err := os.ReadFile(filepath.Join(sysroot, "twinroot", dirDeployments, id, fileRecord))
		must(t, err)
		var d Deployment
		must(t, json.Unmarshal(b, &d))
		var ps []string
		for _, c := range d.Conflicts {
			ps = append(ps, c.Path)
		}
		return strings.Join(ps, ",")
	}
	ents, _ := os.ReadDir(filepath.Join(ref, "twinroot", dirDeployments))
	for _, en := range ents {
		fp := fingerprint(t, filepath.Join(ref, "twinroot", dirDeployments, en.Name(), dirEtc))
		accept[en.Name()] = map[string]bool{fp: true}
		conflictsOf[fp] = recordConflicts(ref, en.Name())
	}
	if len(accept) != 2 {
		t.Fatalf("reference run left %d deployments", len(accept))
	}
	varFP := fingerprint(t, filepath.Join(ref, "var"))
	pre := clone("pre")
	{
		s, err := objstore.Open(ctx, filepath.Join(pre, "twinroot"), objstore.Options{})
		must(t, err)
		m := New(s, pre, nil)
		b, err := m.Create(ctx, CreateOptions{Image: newImg, MergeFrom: booted.ID})
		must(t, err)
		fp := fingerprint(t, m.EtcDir(b.ID))
		accept[b.ID][fp] = true
		conflictsOf[fp] = recordConflicts(pre, b.ID)
		if conflictsOf[fp] == recordConflicts(ref, b.ID) {
			t.Fatalf("the remerge finds no other conflicts than the merge (%q): the test cannot tell the records apart", conflictsOf[fp])
		}
		c, err := m.Create(ctx, CreateOptions{Image: baseImg})
		must(t, err)
		accept[c.ID] = map[string]bool{fingerprint(t, m.EtcDir(c.ID)): true}
		s.Close()
	}
	if len(accept) != 3 {
		t.Fatalf("deployment ids differ between runs: %v", accept)
	}
	t.Logf("%d crash points", total)

	rng := rand.New(rand.NewPCG(1, 2))
	check := func(label, dir string) {
		t.Helper()
		s, err := objstore.Open(ctx, filepath.Join(dir, "twinroot"), objstore.Options{})
		if err != nil {
			t.Fatalf("%s: open after crash: %v", label, err)
		}
		defer s.Close()
		m := New(s, dir, nil)
		ce := &env{t: t, sysroot: dir, store: s, m: m}
		list, err := m.List(ctx)
		if err != nil {
			t.Fatalf("%s: list: %v", label, err)
		}
		if ents, _ := os.ReadDir(m.deploymentsDir()); len(ents) != len(list) {
			t.Errorf("%s: %d entries in deployments/, %d complete deployments", label, len(ents), len(list))
		}
		for _, d := range list {
			for _, f := range []string{fileRecord, fileDepLock, dirEtc} {
				if _, err := os.Lstat(filepath.Join(m.dir(d.ID), f)); err != nil {
					t.Errorf("%s: deployment %s incomplete: %v", label, d.ID, err)
				}
			}
			if fp := fingerprint(t, m.EtcDir(d.ID)); d.ID != booted.ID && !accept[d.ID][fp] {
				t.Errorf("%s: deployment %s: etc/ is not the reference's", label, d.ID)
			} else if want, ok := conflictsOf[fp]; ok && d.ID != booted.ID && recordConflicts(dir, d.ID) != want {
				t.Errorf("%s: deployment %s: record lists conflicts %q, its etc/ is the merge with %q", label, d.ID, recordConflicts(dir, d.ID), want)
			}
		}
		// Roots name existing images (fsck), before any gc.
		res, err := s.Fsck(ctx, objstore.FsckOptions{})
		must(t, err)
		for _, p := range res.Problems {
			t.Errorf("%s: fsck: %s", label, p)
		}
		if _, err := m.GC(ctx); err != nil {
			t.Fatalf("%s: deploy gc: %v", label, err)
		}
		if _, err := s.GC(ctx, objstore.GCOptions{}); err != nil {
			t.Fatalf("%s: store gc: %v", label, err)
		}
		ce.checkClean(label)
		// The booted deployment and its image are intact, and the store
		// still deploys.
		if _, err := m.Get(ctx, booted.ID); err != nil {
			t.Errorf("%s: booted deployment: %v", label, err)
		}
		if _, err := m.Create(ctx, CreateOptions{Image: newImg, MergeFrom: booted.ID}); err != nil {
			t.Errorf("%s: create after crash: %v", label, err)
		}
		// That Create seeded or finished seeding /var: it is the image's.
		if fp := fingerprint(t, filepath.Join(dir, "var")); fp != varFP {
			t.Errorf("%s: /var is not the image's after recovery", label)
		}
	}
	step := 1
	if testing.Short() {
		step = 7
	}
	for n := 1; n <= total; n += step {
		dir := clone("c" + strconv.Itoa(n))
		if _, err := run(dir, n, 0); err == nil {
			t.Fatalf("point %d: child was not killed", n)
		}
		check(fmt.Sprintf("point %d", n), dir)
		os.RemoveAll(dir)
		if t.Failed() {
			t.FailNow()
		}
	}
	// Random moments, not only the instrumented ones.
	killed := 0
	kills := 60
	if testing.Short() {
		kills = 10
	}
	for i := range kills {
		dir := clone("r" + strconv.Itoa(i))
		if _, err := run(dir, 0, time.Duration(rng.Int64N(int64(150*time.Millisecond)))); err != nil {
			killed++
		}
		check(fmt.Sprintf("random kill %d", i), dir)
		os.RemoveAll(dir)
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d crash points (every %d tried) and %d random kills (%d before the end) survived", total, step, kills, killed)
}
