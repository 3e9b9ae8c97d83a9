package deploy

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/internal/bootarg"
	"github.com/twinroot/twinroot/objstore"
)

func TestCreateGetList(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	img := e.image(nil)
	d1 := e.create(CreateOptions{Image: img, Origin: Origin{Ref: "docker://r/os:1", Version: "1"}, Kargs: []string{"quiet"}})
	d2 := e.create(CreateOptions{Image: img})
	if want := img.Hex()[:12] + ".0"; d1.ID != want {
		t.Errorf("id %q, want %q", d1.ID, want)
	}
	if d2.ID != img.Hex()[:12]+".1" {
		t.Errorf("second id %q", d2.ID)
	}
	if err := bootarg.CheckID(d1.ID); err != nil {
		t.Error(err)
	}
	if d1.OSRelease["NAME"] != "Test OS" || d1.OSRelease["VERSION_ID"] != "1" {
		t.Errorf("os-release %v", d1.OSRelease)
	}
	got, err := e.m.Get(ctx, d1.ID)
	must(t, err)
	if got.Origin.Ref != "docker://r/os:1" || got.Kargs[0] != "quiet" || got.Image != img || !got.Created.Equal(d1.Created) {
		t.Errorf("Get = %+v", got)
	}
	list, err := e.m.List(ctx)
	must(t, err)
	if len(list) != 2 || list[0].ID != d1.ID || list[1].ID != d2.ID {
		t.Errorf("List = %v", list)
	}
	// etc/ is a copy of the image's /etc with owners, modes and xattrs.
	etc := e.m.EtcDir(d1.ID)
	wantContent(t, filepath.Join(etc, "motd"), string(big("welcome")))
	if st := wantType(t, filepath.Join(etc, "ssh/sshd_config"), unix.S_IFREG); st.Mode&0o777 != 0o600 {
		t.Errorf("sshd_config mode %o", st.Mode&0o777)
	}
	if v := xattr(t, filepath.Join(etc, "xattr-file"), "security.selinux"); v != "system_u:object_r:etc_t:s0" {
		t.Errorf("selinux label %q", v)
	}
	if _, ok := lstat(t, filepath.Join(e.m.dir(d1.ID), fileDepLock)); !ok {
		t.Error("no .lock")
	}
	if _, err := e.m.Get(ctx, "nope.0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a missing deployment: %v", err)
	}
	if _, err := e.m.Get(ctx, "../x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a bad id: %v", err)
	}
	// A damaged record: Get reports it, List leaves it out, Remove works.
	bad := e.create(CreateOptions{Image: img})
	must(t, os.WriteFile(filepath.Join(e.m.dir(bad.ID), fileRecord), []byte("{not json"), 0o644))
	if _, err := e.m.Get(ctx, bad.ID); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Get of a damaged record: %v", err)
	}
	if list, err := e.m.List(ctx); err != nil || len(list) != 2 {
		t.Errorf("List with a damaged record: %d, %v", len(list), err)
	}
	// A record that parses but holds what no Create writes (a kernel
	// argument that would break the boot entry, a bad MergedFrom) is
	// damaged too, named by its path.
	for _, edit := range []func(*Deployment){
		func(d *Deployment) { d.Kargs = []string{"quiet", "x\ninitrd /evil"} },
		func(d *Deployment) { d.MergedFrom = "../elsewhere" },
	} {
		d := bad
		edit(&d)
		must(t, e.m.writeRecord(e.m.dir(bad.ID), d, true))
		if _, err := e.m.Get(ctx, bad.ID); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fileRecord) {
			t.Errorf("Get of a record with %+v: %v, want ErrCorrupt naming the file", d, err)
		}
	}
	// A deployment that lost its .lock is still removable.
	must(t, os.Remove(filepath.Join(e.m.dir(bad.ID), fileDepLock)))
	must(t, e.m.Remove(ctx, bad.ID))
	if _, err := os.Lstat(e.m.dir(bad.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("removed deployment still there: %v", err)
	}
	// SetPinned.
	must(t, e.m.SetPinned(ctx, d1.ID, true))
	if got, _ := e.m.Get(ctx, d1.ID); !got.Pinned {
		t.Error("not pinned")
	}
	must(t, e.m.SetPinned(ctx, d1.ID, false))
	if got, _ := e.m.Get(ctx, d1.ID); got.Pinned {
		t.Error("still pinned")
	}
	// /var was seeded from the image (it did not exist).
	wantContent(t, filepath.Join(e.sysroot, "var/lib/state"), "seed")
	e.checkClean("after create")
}

// TestDeployedImageKept: store rm and gc never remove an image a
// deployment names, booted (held, etc mounted) or not; once the
// deployment is removed the image can go.
func TestDeployedImageKept(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	img := e.image(nil)
	other := e.image(func(root string) { write(t, filepath.Join(root, "etc/other"), "x") })
	booted := e.create(CreateOptions{Image: img})
	plain := e.create(CreateOptions{Image: other})
	// Booted as setup-root does it: the image mounted (composefs), the
	// deployment's etc bound onto its /etc, the deployment held.
	root := t.TempDir()
	mnt, err := e.store.MountImage(ctx, booted.Image, root, erofs.MountOptions{Verity: erofs.VerityOff})
	if err != nil {
		t.Skipf("mounting the image: %v", err)
	}
	defer mnt.Unmount()
	must(t, unix.Mount(e.m.EtcDir(booted.ID), filepath.Join(root, "etc"), "", unix.MS_BIND, ""))
	etcMounted := true
	defer func() {
		if etcMounted {
			unix.Unmount(filepath.Join(root, "etc"), unix.MNT_DETACH)
		}
	}()
	wantContent(t, filepath.Join(root, "etc/motd"), string(big("welcome")))
	release, err := e.m.Hold(ctx, booted.ID)
	must(t, err)
	for _, d := range []Deployment{booted, plain} {
		err := e.store.Remove(ctx, d.Image)
		var re *objstore.RootedError
		if !errors.Is(err, objstore.ErrRooted) || !errors.As(err, &re) || re.Roots[0] != rootPrefix+d.ID {
			t.Fatalf("store rm of the image of %s: %v", d.ID, err)
		}
	}
	if _, err := e.store.GC(ctx, objstore.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.GC(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range []Deployment{booted, plain} {
		if _, err := e.store.Image(ctx, d.Image); err != nil {
			t.Fatalf("image of %s gone: %v", d.ID, err)
		}
	}
	e.checkClean("after rm and gc")
	// The booted one cannot be removed; the other can, and then its image.
	if err := e.m.Remove(ctx, booted.ID); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove of the held deployment: %v", err)
	}
	if _, err := e.m.Get(ctx, booted.ID); err != nil {
		t.Fatalf("held deployment touched: %v", err)
	}
	must(t, e.m.Remove(ctx, plain.ID))
	if _, err := e.m.Get(ctx, plain.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed deployment still there: %v", err)
	}
	must(t, e.store.Remove(ctx, plain.Image))
	release()
	// Still booted: its etc is mounted, even with nobody holding the lock.
	if err := e.m.Remove(ctx, booted.ID); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove of the mounted deployment: %v", err)
	}
	must(t, unix.Unmount(filepath.Join(root, "etc"), 0))
	etcMounted = false
	must(t, e.m.Remove(ctx, booted.ID))
	// The image is no longer rooted but still mounted: its removal is
	// deferred until the unmount.
	if err := e.store.Remove(ctx, booted.Image); !errors.Is(err, objstore.ErrInUse) {
		t.Fatalf("store rm of the mounted image: %v", err)
	}
	must(t, mnt.Unmount())
	if _, err := e.store.GC(ctx, objstore.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Image(ctx, booted.Image); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("image after unmount and gc: %v", err)
	}
	e.checkClean("after removals")
}

// TestRemoveInUse: a held lock or a mounted etc/ refuses removal; a hold
// taken after the removal finds the deployment gone; GC finishes a removal
// deferred by a mount.
func TestRemoveInUse(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	img := e.image(nil)
	d := e.create(CreateOptions{Image: img})

	// Held shared (the booted system).
	release, err := e.m.Hold(ctx, d.ID)
	must(t, err)
	if err := e.m.Remove(ctx, d.ID); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove while held: %v", err)
	}
	if _, err := e.m.Remerge(ctx, d.ID, d.ID); err == nil {
		t.Fatal("Remerge from itself accepted")
	}
	release()

	// A mount table that cannot be read: nothing says etc/ is free.
	e.m.mountinfo = filepath.Join(t.TempDir(), "no-mountinfo")
	if err := e.m.Remove(ctx, d.ID); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove without a mount table: %v", err)
	}
	e.m.mountinfo = ""

	// etc/ bind-mounted, by a process that has since exited: only the
	// mount table tells.
	mnt := t.TempDir()
	if err := unix.Mount(e.m.EtcDir(d.ID), mnt, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}()
	if err := e.m.Remove(ctx, d.ID); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "mounted") {
		t.Fatalf("Remove while etc is mounted: %v", err)
	}
	// A removal that became deferred (its etc mounted after the check):
	// GC leaves it while mounted, finishes it after.
	removed := filepath.Join(e.store.Root(), dirRemoved, rootPrefix+d.ID+".test")
	must(t, os.Rename(e.m.dir(d.ID), removed))
	res, err := e.m.GC(ctx)
	must(t, err)
	if len(res.InUse) != 1 || len(res.Removed) != 0 {
		t.Fatalf("GC while mounted: %+v", res)
	}
	if _, err := e.store.Roots(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Remove(ctx, img); !errors.Is(err, objstore.ErrRooted) {
		t.Fatalf("image of a pending removal: %v", err)
	}
	must(t, unix.Unmount(mnt, 0))
	mounted = false
	res, err = e.m.GC(ctx)
	must(t, err)
	if len(res.Removed) != 1 || res.Removed[0] != d.ID {
		t.Fatalf("GC after unmount: %+v", res)
	}
	must(t, e.store.Remove(ctx, img))
	e.checkClean("after gc")

	// Hold of a deployment that is gone.
	if _, err := e.m.Hold(ctx, d.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Hold of a removed deployment: %v", err)
	}
}

func TestMountsUnder(t *testing.T) {
	table := []byte(`22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 253:1 /twinroot/deployments/abc.0/etc /etc rw,relatime shared:1 - ext4 /dev/vda1 rw
41 22 253:2 /twinroot/deployments/abc.1/etc /mnt rw - ext4 /dev/vdb rw
42 22 253:1 /x/deployments/sp\040ace.0/etc/ssh /mnt/ssh rw - ext4 /dev/vda1 rw
`)
	for _, c := range []struct {
		suffix string
		want   bool
	}{
		{"/deployments/abc.0/etc", true},
		{"/deployments/abc.1/etc", true}, // on another filesystem: still counts
		{"/deployments/abc.01/etc", false},
		{"/deployments/sp ace.0/etc", true}, // below it, escaped
		{"/deployments/ab/etc", false},
		{"/deployments/abc.2/etc", false},
	} {
		if got := mountsUnder(table, []string{c.suffix}); got != c.want {
			t.Errorf("%s: %v, want %v", c.suffix, got, c.want)
		}
	}
	// A line too long to scan hides the lines after it: that table says
	// nothing is free.
	long := append([]byte("50 22 0:1 / /long rw - overlay overlay rw,lowerdir="+strings.Repeat("x", 2<<20)+"\n"), table...)
	if !mountsUnder(long, []string{"/deployments/abc.2/etc"}) {
		t.Error("a mount table that could not be read to its end counted as free")
	}
}

// TestImageWithoutEtc: a clear error naming the image, nothing left.
func TestImageWithoutEtc(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{"usr/bin/x": big("x")})
	img := e.importDir(dir)
	_, err := e.m.Create(ctx, CreateOptions{Image: img})
	if !errors.Is(err, ErrNoEtc) || !strings.Contains(err.Error(), img.String()) {
		t.Fatalf("Create of an image without /etc: %v", err)
	}
	if list, _ := e.m.List(ctx); len(list) != 0 {
		t.Errorf("deployments left: %v", list)
	}
	if roots, _ := e.store.Roots(ctx); len(roots) != 0 {
		t.Errorf("roots left: %v", roots)
	}
	if _, err := os.Stat(filepath.Join(e.sysroot, "var")); err == nil {
		t.Error("/var seeded by a failed deployment")
	}
	e.checkClean("after the failure")
	// Kernel arguments that would break the entry, a missing image and a
	// missing MergeFrom are errors too.
	for _, k := range []string{"", "a\nb", "x\x00", "two words", "tab\there"} {
		if _, err := e.m.Create(ctx, CreateOptions{Image: img, Kargs: []string{"quiet", k}}); !errors.Is(err, ErrBadKarg) {
			t.Errorf("karg %q: %v", k, err)
		}
	}
	if _, err := e.m.Create(ctx, CreateOptions{Image: img, MergeFrom: "nope.0"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("MergeFrom a missing deployment: %v", err)
	}
}

func TestRemerge(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	oldImg := e.image(nil)
	newImg := e.image(func(root string) { write(t, filepath.Join(root, "etc/motd"), "new motd\n") })
	booted := e.create(CreateOptions{Image: oldImg})
	write(t, filepath.Join(e.m.EtcDir(booted.ID), "early"), "before staging\n")
	staged := e.create(CreateOptions{Image: newImg, MergeFrom: booted.ID})
	// The user goes on changing the booted /etc after staging.
	write(t, filepath.Join(e.m.EtcDir(booted.ID), "late"), "after staging\n")
	write(t, filepath.Join(e.m.EtcDir(booted.ID), "motd"), "my motd\n")
	lockBefore, _ := lstat(t, filepath.Join(e.m.dir(staged.ID), fileDepLock))
	conflicts, err := e.m.Remerge(ctx, staged.ID, booted.ID)
	must(t, err)
	// The .lock is the same file, so a Hold waiting during the remerge
	// finds it at its place; and a Hold now keeps Remove away.
	if lockAfter, _ := lstat(t, filepath.Join(e.m.dir(staged.ID), fileDepLock)); lockAfter.Ino != lockBefore.Ino {
		t.Errorf(".lock replaced by the remerge: inode %d, was %d", lockAfter.Ino, lockBefore.Ino)
	}
	release, err := e.m.Hold(ctx, staged.ID)
	must(t, err)
	if err := e.m.Remove(ctx, staged.ID); !errors.Is(err, ErrInUse) {
		t.Errorf("Remove of a held deployment after remerge: %v", err)
	}
	release()
	etc := e.m.EtcDir(staged.ID)
	wantContent(t, filepath.Join(etc, "early"), "before staging\n")
	wantContent(t, filepath.Join(etc, "late"), "after staging\n")
	wantContent(t, filepath.Join(etc, "motd"), "my motd\n")
	if len(conflicts) != 1 || conflicts[0].Path != "motd" {
		t.Errorf("conflicts %v", conflicts)
	}
	got, err := e.m.Get(ctx, staged.ID)
	must(t, err)
	if len(got.Conflicts) != 1 || got.MergedFrom != booted.ID {
		t.Errorf("record after remerge: %+v", got)
	}
	e.checkClean("after remerge")
}

func TestSeedVar(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	img := e.image(nil)
	fsys, err := e.store.OpenImageFS(ctx, img)
	must(t, err)
	defer fsys.Close()
	v := filepath.Join(e.sysroot, "var")
	// An empty /var (a mount point, say) is seeded in place.
	must(t, os.Mkdir(v, 0o755))
	must(t, e.m.SeedVar(ctx, fsys))
	wantContent(t, filepath.Join(v, "lib/state"), "seed")
	wantAbsent(t, filepath.Join(v, varSeedDone))
	// A /var with content is never touched.
	write(t, filepath.Join(v, "lib/state"), "mine")
	must(t, e.m.SeedVar(ctx, fsys))
	wantContent(t, filepath.Join(v, "lib/state"), "mine")
	// An interrupted seeding: a torn copy is redone, a complete one moved.
	must(t, os.RemoveAll(v))
	must(t, os.Mkdir(v, 0o755))
	write(t, filepath.Join(v, varSeedTmp, "junk"), "torn")
	must(t, e.m.SeedVar(ctx, fsys))
	wantContent(t, filepath.Join(v, "lib/state"), "seed")
	wantAbsent(t, filepath.Join(v, "junk"))
	wantAbsent(t, filepath.Join(v, varSeedTmp))
	must(t, os.RemoveAll(v))
	must(t, os.Mkdir(v, 0o755))
	write(t, filepath.Join(v, varSeedDone, "lib/state"), "seed")
	write(t, filepath.Join(v, varSeedDone, "cache/x"), "x")
	must(t, os.Rename(filepath.Join(v, varSeedDone, "cache"), filepath.Join(v, "cache"))) // moved before the crash
	must(t, e.m.SeedVar(ctx, fsys))
	wantContent(t, filepath.Join(v, "lib/state"), "seed")
	wantContent(t, filepath.Join(v, "cache/x"), "x")
	wantAbsent(t, filepath.Join(v, varSeedDone))
}

func TestParseOSRelease(t *testing.T) {
	got := ParseOSRelease([]byte("# c\nNAME=\"Debian GNU/Linux\"\nVERSION_ID='13'\nID=debian\nPRETTY_NAME=\"a \\\"q\\\"\"\nbad line\n=x\n"))
	want := map[string]string{"NAME": "Debian GNU/Linux", "VERSION_ID": "13", "ID": "debian", "PRETTY_NAME": `a "q"`}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	// A line longer than bufio.Scanner's default token hides nothing after it.
	got = ParseOSRelease([]byte("LONG=" + strings.Repeat("x", 100<<10) + "\nNAME=after\n"))
	if got["NAME"] != "after" || len(got["LONG"]) != 100<<10 {
		t.Errorf("after a long line: NAME=%q, len(LONG)=%d", got["NAME"], len(got["LONG"]))
	}
}

// TestConcurrentCreate: Creates and Removes at the same time (the lock
// file serialises them, also between goroutines) give distinct, complete
// deployments.
func TestConcurrentCreate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	img := e.image(nil)
	first := e.create(CreateOptions{Image: img})
	errs := make(chan error, 8)
	ids := make(chan string, 8)
	for range 6 {
		go func() {
			d, err := e.m.Create(ctx, CreateOptions{Image: img, MergeFrom: first.ID})
			ids <- d.ID
			errs <- err
		}()
	}
	seen := map[string]bool{}
	for range 6 {
		must(t, <-errs)
		id := <-ids
		if seen[id] {
			t.Fatalf("id %s twice", id)
		}
		seen[id] = true
	}
	list, err := e.m.List(ctx)
	must(t, err)
	if len(list) != 7 {
		t.Fatalf("%d deployments", len(list))
	}
	for _, d := range list[1:] {
		go func() { errs <- e.m.Remove(ctx, d.ID) }()
	}
	for range 6 {
		must(t, <-errs)
	}
	e.checkClean("after concurrent creates and removes")
}

// TestRecordJSON: deployment.json uses the field names of the contract
// the updater reads.
func TestRecordJSON(t *testing.T) {
	e := newEnv(t)
	img := e.image(nil)
	d := e.create(CreateOptions{Image: img, Origin: Origin{Ref: "oci:/x:1", Manifest: "sha256:ab"}, Kargs: []string{"quiet"}})
	b, err := os.ReadFile(filepath.Join(e.m.dir(d.ID), fileRecord))
	must(t, err)
	for _, k := range []string{`"id"`, `"image": "sha256:`, `"origin"`, `"ref": "oci:/x:1"`, `"manifest"`, `"osRelease"`, `"kargs"`, `"created"`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("deployment.json lacks %s:\n%s", k, b)
		}
	}
	for _, k := range []string{`"mergedFrom"`, `"conflicts"`, `"pinned"`, `"config"`} {
		if strings.Contains(string(b), k) {
			t.Errorf("deployment.json has an empty %s", k)
		}
	}
}
