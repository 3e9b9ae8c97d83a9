package deploy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mergeCase is one /etc merge: what the new image changes relative to the
// base image, what the user changes in the deployment of the base image,
// and what the deployment of the new image merged from it must hold.
type mergeCase struct {
	name      string
	newImage  func(t *testing.T, root string) // edits the new image's tree (root, not etc)
	local     func(t *testing.T, etc string)  // edits the base deployment's etc/
	check     func(t *testing.T, etc string)  // the merged etc/
	sources   map[string]Source               // plan: path → where it comes from
	conflicts []string                        // paths
	err       string                          // ErrEtcMerge naming this path
}

func wantContent(t *testing.T, p, want string) {
	t.Helper()
	got, ok := read(t, p)
	if !ok {
		t.Errorf("%s: missing, want %q", p, want)
	} else if got != want {
		t.Errorf("%s = %q, want %q", p, trunc(got), trunc(want))
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func wantAbsent(t *testing.T, p string) {
	t.Helper()
	if _, ok := lstat(t, p); ok {
		t.Errorf("%s exists, want it absent", p)
	}
}

func wantType(t *testing.T, p string, typ uint32) unix.Stat_t {
	t.Helper()
	st, ok := lstat(t, p)
	if !ok {
		t.Fatalf("%s: missing", p)
	}
	if st.Mode&unix.S_IFMT != typ {
		t.Errorf("%s: type %o, want %o", p, st.Mode&unix.S_IFMT, typ)
	}
	return st
}

func write(t *testing.T, p, content string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(content), 0o644))
}

var mergeCases = []mergeCase{
	{
		name: "modified locally, untouched paths take the new image's",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/hosts"), "127.0.0.1 localhost new\n")
		},
		local: func(t *testing.T, etc string) {
			write(t, filepath.Join(etc, "motd"), "my motd\n")
		},
		check: func(t *testing.T, etc string) {
			wantContent(t, filepath.Join(etc, "motd"), "my motd\n")
			wantContent(t, filepath.Join(etc, "hosts"), "127.0.0.1 localhost new\n")
			wantContent(t, filepath.Join(etc, "passwd"), "root:x:0:0::/root:/bin/sh\n")
		},
		sources: map[string]Source{"motd": FromLocal, "hosts": FromNew, "passwd": FromNew, ".": FromNew},
	},
	{
		name: "modified locally in place, same size",
		local: func(t *testing.T, etc string) {
			write(t, filepath.Join(etc, "motd"), string(big("welcomX")))
			write(t, filepath.Join(etc, "hosts"), "127.0.0.2 localhost\n")
		},
		check: func(t *testing.T, etc string) {
			wantContent(t, filepath.Join(etc, "motd"), string(big("welcomX")))
			wantContent(t, filepath.Join(etc, "hosts"), "127.0.0.2 localhost\n")
		},
		sources: map[string]Source{"motd": FromLocal, "hosts": FromLocal, "passwd": FromNew},
	},
	{
		name: "added on both sides",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/conf.d/from-image.conf"), "image\n")
		},
		local: func(t *testing.T, etc string) {
			write(t, filepath.Join(etc, "local.conf"), "mine\n")
			write(t, filepath.Join(etc, "local.d/deeper/x"), "deeper\n")
		},
		check: func(t *testing.T, etc string) {
			wantContent(t, filepath.Join(etc, "local.conf"), "mine\n")
			wantContent(t, filepath.Join(etc, "local.d/deeper/x"), "deeper\n")
			wantContent(t, filepath.Join(etc, "conf.d/from-image.conf"), "image\n")
		},
		sources: map[string]Source{"local.conf": FromLocal, "local.d": FromLocal, "local.d/deeper/x": FromLocal,
			"conf.d/from-image.conf": FromNew},
	},
	{
		name: "deleted locally",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/hosts"), "changed\n")
		},
		local: func(t *testing.T, etc string) {
			must(t, os.Remove(filepath.Join(etc, "ssh/ssh_config")))
			must(t, os.RemoveAll(filepath.Join(etc, "deep")))
		},
		check: func(t *testing.T, etc string) {
			wantAbsent(t, filepath.Join(etc, "ssh/ssh_config"))
			wantAbsent(t, filepath.Join(etc, "deep"))
			wantContent(t, filepath.Join(etc, "ssh/sshd_config"), string(big("PermitRootLogin no")))
		},
	},
	{
		name:     "mode and owner changed",
		newImage: nil,
		local: func(t *testing.T, etc string) {
			must(t, unix.Chmod(filepath.Join(etc, "hosts"), 0o4751))
			must(t, os.Lchown(filepath.Join(etc, "owned"), 1234, 5678))
			must(t, os.Lchown(filepath.Join(etc, "conf.d"), 42, 43))
			must(t, os.Chmod(filepath.Join(etc, "conf.d"), 0o700))
			must(t, os.Lchown(filepath.Join(etc, "link"), 7, 8))
		},
		check: func(t *testing.T, etc string) {
			if st := wantType(t, filepath.Join(etc, "hosts"), unix.S_IFREG); st.Mode&0o7777 != 0o4751 {
				t.Errorf("hosts mode %o", st.Mode&0o7777)
			}
			if st := wantType(t, filepath.Join(etc, "owned"), unix.S_IFREG); st.Uid != 1234 || st.Gid != 5678 {
				t.Errorf("owned: %d:%d", st.Uid, st.Gid)
			}
			if st := wantType(t, filepath.Join(etc, "conf.d"), unix.S_IFDIR); st.Uid != 42 || st.Mode&0o7777 != 0o700 {
				t.Errorf("conf.d: %d %o", st.Uid, st.Mode&0o7777)
			}
			if st := wantType(t, filepath.Join(etc, "link"), unix.S_IFLNK); st.Uid != 7 || st.Gid != 8 {
				t.Errorf("link owner %d:%d", st.Uid, st.Gid)
			}
			wantContent(t, filepath.Join(etc, "conf.d/a.conf"), "a=1\n")
		},
		sources: map[string]Source{"hosts": FromLocal, "owned": FromLocal, "conf.d": FromLocal, "passwd": FromNew},
	},
	{
		name: "xattrs changed, security.selinux included",
		local: func(t *testing.T, etc string) {
			p := filepath.Join(etc, "xattr-file")
			must(t, unix.Lsetxattr(p, "security.selinux", []byte("system_u:object_r:shadow_t:s0"), 0))
			must(t, unix.Lremovexattr(p, "user.origin"))
			must(t, unix.Lsetxattr(filepath.Join(etc, "passwd"), "user.note", []byte("mine"), 0))
		},
		check: func(t *testing.T, etc string) {
			p := filepath.Join(etc, "xattr-file")
			if v := xattr(t, p, "security.selinux"); v != "system_u:object_r:shadow_t:s0" {
				t.Errorf("security.selinux = %q", v)
			}
			if v := xattr(t, p, "user.origin"); v != "" {
				t.Errorf("user.origin = %q, want it removed", v)
			}
			if v := xattr(t, filepath.Join(etc, "passwd"), "user.note"); v != "mine" {
				t.Errorf("passwd user.note = %q", v)
			}
		},
		sources: map[string]Source{"xattr-file": FromLocal, "passwd": FromLocal},
	},
	{
		name: "untouched xattrs come from the new image",
		newImage: func(t *testing.T, root string) {
			must(t, unix.Lsetxattr(filepath.Join(root, "etc/xattr-file"), "security.selinux", []byte("system_u:object_r:new_t:s0"), 0))
		},
		check: func(t *testing.T, etc string) {
			if v := xattr(t, filepath.Join(etc, "xattr-file"), "security.selinux"); v != "system_u:object_r:new_t:s0" {
				t.Errorf("security.selinux = %q", v)
			}
			if v := xattr(t, filepath.Join(etc, "xattr-file"), "user.origin"); v != "image" {
				t.Errorf("user.origin = %q", v)
			}
		},
		sources: map[string]Source{"xattr-file": FromNew},
	},
	{
		name: "symlink replaced by a file",
		local: func(t *testing.T, etc string) {
			must(t, os.Remove(filepath.Join(etc, "link")))
			write(t, filepath.Join(etc, "link"), "now a file\n")
		},
		check: func(t *testing.T, etc string) {
			wantType(t, filepath.Join(etc, "link"), unix.S_IFREG)
			wantContent(t, filepath.Join(etc, "link"), "now a file\n")
		},
		sources: map[string]Source{"link": FromLocal},
	},
	{
		name: "file replaced by a symlink, symlink retargeted",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/passwd"), "root:x:0:0::/root:/bin/bash\n")
		},
		local: func(t *testing.T, etc string) {
			must(t, os.Remove(filepath.Join(etc, "motd")))
			must(t, os.Symlink("/run/motd", filepath.Join(etc, "motd")))
			must(t, os.Remove(filepath.Join(etc, "link")))
			must(t, os.Symlink("passwd", filepath.Join(etc, "link")))
		},
		check: func(t *testing.T, etc string) {
			wantType(t, filepath.Join(etc, "motd"), unix.S_IFLNK)
			if tg, _ := os.Readlink(filepath.Join(etc, "motd")); tg != "/run/motd" {
				t.Errorf("motd -> %q", tg)
			}
			if tg, _ := os.Readlink(filepath.Join(etc, "link")); tg != "passwd" {
				t.Errorf("link -> %q", tg)
			}
			wantContent(t, filepath.Join(etc, "link"), "root:x:0:0::/root:/bin/bash\n")
		},
		sources: map[string]Source{"motd": FromLocal, "link": FromLocal, "passwd": FromNew},
	},
	{
		name: "directory replaced by a file",
		local: func(t *testing.T, etc string) {
			must(t, os.RemoveAll(filepath.Join(etc, "dir.d")))
			write(t, filepath.Join(etc, "dir.d"), "flat\n")
		},
		check: func(t *testing.T, etc string) {
			wantType(t, filepath.Join(etc, "dir.d"), unix.S_IFREG)
			wantContent(t, filepath.Join(etc, "dir.d"), "flat\n")
		},
		sources: map[string]Source{"dir.d": FromLocal},
	},
	{
		name: "file replaced by a directory",
		local: func(t *testing.T, etc string) {
			must(t, os.Remove(filepath.Join(etc, "hosts")))
			write(t, filepath.Join(etc, "hosts/inner"), "inner\n")
		},
		check: func(t *testing.T, etc string) {
			wantType(t, filepath.Join(etc, "hosts"), unix.S_IFDIR)
			wantContent(t, filepath.Join(etc, "hosts/inner"), "inner\n")
		},
		sources: map[string]Source{"hosts": FromLocal, "hosts/inner": FromLocal},
	},
	{
		name: "conflict: changed on both sides keeps the local version",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/motd"), "image motd\n")
			write(t, filepath.Join(root, "etc/ssh/sshd_config"), "image sshd\n")
		},
		local: func(t *testing.T, etc string) {
			write(t, filepath.Join(etc, "motd"), "my motd\n")
			write(t, filepath.Join(etc, "ssh/sshd_config"), "image sshd\n") // the same change
		},
		check: func(t *testing.T, etc string) {
			wantContent(t, filepath.Join(etc, "motd"), "my motd\n")
			wantContent(t, filepath.Join(etc, "ssh/sshd_config"), "image sshd\n")
		},
		sources:   map[string]Source{"motd": FromLocal},
		conflicts: []string{"motd"},
	},
	{
		name: "conflict: modified locally, removed by the new image",
		newImage: func(t *testing.T, root string) {
			must(t, os.Remove(filepath.Join(root, "etc/removed-by-new")))
			must(t, os.RemoveAll(filepath.Join(root, "etc/deep")))
		},
		local: func(t *testing.T, etc string) {
			write(t, filepath.Join(etc, "removed-by-new"), "kept\n")
			write(t, filepath.Join(etc, "deep/er/mine"), "mine\n")
		},
		check: func(t *testing.T, etc string) {
			wantContent(t, filepath.Join(etc, "removed-by-new"), "kept\n")
			wantContent(t, filepath.Join(etc, "deep/er/mine"), "mine\n")
			wantAbsent(t, filepath.Join(etc, "deep/er/still/file")) // untouched: follows the image
		},
		conflicts: []string{"deep", "removed-by-new"},
	},
	{
		// ostree and bootc: deletions alone are no local change to keep,
		// so the new image's removal (or replacement) of the directory wins.
		name: "deleted locally inside a directory the new image removes or replaces",
		newImage: func(t *testing.T, root string) {
			must(t, os.RemoveAll(filepath.Join(root, "etc/deep")))
			must(t, os.RemoveAll(filepath.Join(root, "etc/dir.d")))
			write(t, filepath.Join(root, "etc/dir.d"), "now a file\n")
		},
		local: func(t *testing.T, etc string) {
			must(t, os.Remove(filepath.Join(etc, "deep/er/still/file")))
			must(t, os.Remove(filepath.Join(etc, "dir.d/x")))
		},
		check: func(t *testing.T, etc string) {
			wantAbsent(t, filepath.Join(etc, "deep"))
			wantType(t, filepath.Join(etc, "dir.d"), unix.S_IFREG)
			wantContent(t, filepath.Join(etc, "dir.d"), "now a file\n")
		},
		sources: map[string]Source{"dir.d": FromNew},
	},
	{
		name: "conflict: deleted locally, changed by the new image",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/ssh/ssh_config"), "new ssh config\n")
		},
		local: func(t *testing.T, etc string) {
			must(t, os.Remove(filepath.Join(etc, "ssh/ssh_config")))
		},
		check: func(t *testing.T, etc string) {
			wantAbsent(t, filepath.Join(etc, "ssh/ssh_config"))
		},
		conflicts: []string{"ssh/ssh_config"},
	},
	{
		name: "impossible: a local file where the new image has a directory with new files",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/conf.d/b.conf"), "new\n")
		},
		local: func(t *testing.T, etc string) {
			must(t, os.RemoveAll(filepath.Join(etc, "conf.d")))
			write(t, filepath.Join(etc, "conf.d"), "a file\n")
		},
		err: "conf.d",
	},
	{
		name: "impossible: a local file where the new image adds a directory",
		newImage: func(t *testing.T, root string) {
			write(t, filepath.Join(root, "etc/new.d/one"), "new\n")
		},
		local: func(t *testing.T, etc string) {
			write(t, filepath.Join(etc, "new.d"), "mine\n")
		},
		err: "new.d",
	},
	{
		name: "hardlinks, fifos and device nodes carry over",
		local: func(t *testing.T, etc string) {
			write(t, filepath.Join(etc, "hl1"), "linked\n")
			must(t, os.Link(filepath.Join(etc, "hl1"), filepath.Join(etc, "hl2")))
			must(t, unix.Mkfifo(filepath.Join(etc, "fifo"), 0o640))
			must(t, unix.Mknod(filepath.Join(etc, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		},
		check: func(t *testing.T, etc string) {
			a := wantType(t, filepath.Join(etc, "hl1"), unix.S_IFREG)
			b := wantType(t, filepath.Join(etc, "hl2"), unix.S_IFREG)
			if a.Ino != b.Ino || a.Nlink != 2 {
				t.Errorf("hardlink lost: inodes %d %d, nlink %d", a.Ino, b.Ino, a.Nlink)
			}
			if st := wantType(t, filepath.Join(etc, "fifo"), unix.S_IFIFO); st.Mode&0o777 != 0o640 {
				t.Errorf("fifo mode %o", st.Mode&0o777)
			}
			if st := wantType(t, filepath.Join(etc, "null"), unix.S_IFCHR); st.Rdev != unix.Mkdev(1, 3) {
				t.Errorf("null rdev %x", st.Rdev)
			}
		},
		sources: map[string]Source{"hl1": FromLocal, "hl2": FromLocal, "fifo": FromLocal, "null": FromLocal},
	},
	{
		name: "directory metadata changed on both sides",
		newImage: func(t *testing.T, root string) {
			must(t, os.Chmod(filepath.Join(root, "etc/ssh"), 0o711))
			write(t, filepath.Join(root, "etc/ssh/moduli"), "new\n")
		},
		local: func(t *testing.T, etc string) {
			must(t, os.Chmod(filepath.Join(etc, "ssh"), 0o700))
			write(t, filepath.Join(etc, "ssh/local_key"), "key\n")
		},
		check: func(t *testing.T, etc string) {
			if st := wantType(t, filepath.Join(etc, "ssh"), unix.S_IFDIR); st.Mode&0o777 != 0o700 {
				t.Errorf("ssh mode %o", st.Mode&0o777)
			}
			wantContent(t, filepath.Join(etc, "ssh/moduli"), "new\n")
			wantContent(t, filepath.Join(etc, "ssh/local_key"), "key\n")
		},
		sources:   map[string]Source{"ssh": FromLocal, "ssh/moduli": FromNew, "ssh/local_key": FromLocal, "ssh/ssh_config": FromNew},
		conflicts: []string{"ssh"},
	},
}

func TestMergeCases(t *testing.T) {
	for _, tc := range mergeCases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t)
			baseImg := e.image(nil)
			newImg := e.image(func(root string) {
				if tc.newImage != nil {
					tc.newImage(t, root)
				}
			})
			a := e.create(CreateOptions{Image: baseImg, Origin: Origin{Ref: "oci:/base:1"}})
			if tc.local != nil {
				tc.local(t, e.m.EtcDir(a.ID))
			}

			// The plan, on its own.
			baseFS, err := e.store.OpenImageFS(ctx, baseImg)
			must(t, err)
			defer baseFS.Close()
			newFS, err := e.store.OpenImageFS(ctx, newImg)
			must(t, err)
			defer newFS.Close()
			plan, err := Merge(baseFS, newFS, e.m.EtcDir(a.ID))
			if tc.err != "" {
				if !errors.Is(err, ErrEtcMerge) || !strings.Contains(err.Error(), "/etc/"+tc.err+":") {
					t.Fatalf("Merge: %v, want ErrEtcMerge naming /etc/%s", err, tc.err)
				}
			} else {
				must(t, err)
				checkPlan(t, plan, tc)
			}

			// The deployment.
			before, _ := e.m.List(ctx)
			d, err := e.m.Create(ctx, CreateOptions{Image: newImg, MergeFrom: a.ID})
			if tc.err != "" {
				if !errors.Is(err, ErrEtcMerge) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Create: %v, want ErrEtcMerge naming %s", err, tc.err)
				}
				after, _ := e.m.List(ctx)
				if len(after) != len(before) {
					t.Errorf("a failed merge left a deployment: %v", after)
				}
				e.checkClean("after the failed merge")
				return
			}
			must(t, err)
			var got []string
			for _, c := range d.Conflicts {
				got = append(got, c.Path)
			}
			if !slices.Equal(got, tc.conflicts) {
				t.Errorf("conflicts %v, want %v", d.Conflicts, tc.conflicts)
			}
			if d.MergedFrom != a.ID {
				t.Errorf("MergedFrom %q", d.MergedFrom)
			}
			if tc.check != nil {
				tc.check(t, e.m.EtcDir(d.ID))
			}
			// The record on disk says the same.
			again, err := e.m.Get(ctx, d.ID)
			must(t, err)
			if len(again.Conflicts) != len(d.Conflicts) || again.Image != newImg {
				t.Errorf("record: %+v", again)
			}
			e.checkClean("after the merge")
		})
	}
}

func checkPlan(t *testing.T, plan Plan, tc mergeCase) {
	t.Helper()
	src := map[string]Source{}
	for i, a := range plan.Actions {
		if _, dup := src[a.Path]; dup {
			t.Errorf("plan: %s twice", a.Path)
		}
		src[a.Path] = a.From
		if i > 0 && a.Path != "." {
			if dir := filepath.Dir(a.Path); dir != "." {
				if _, ok := src[dir]; !ok {
					t.Errorf("plan: %s before its directory", a.Path)
				}
			}
		}
	}
	for p, want := range tc.sources {
		if got, ok := src[p]; !ok || got != want {
			t.Errorf("plan: %s from %v, want %v", p, got, want)
		}
	}
	var got []string
	for _, c := range plan.Conflicts {
		got = append(got, c.Path)
	}
	if !slices.Equal(got, tc.conflicts) {
		t.Errorf("plan conflicts %v, want %v", plan.Conflicts, tc.conflicts)
	}
}

// TestMergeBaseWithoutEtc: a base image without /etc counts as an empty
// one: everything local is a local addition, the rest comes from the new
// image, and a path both have differently is a conflict.
func TestMergeBaseWithoutEtc(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{"usr/bin/x": big("x")})
	noEtc := e.importDir(dir)
	newImg := e.image(nil)
	local := t.TempDir()
	write(t, filepath.Join(local, "mine"), "mine\n")
	write(t, filepath.Join(local, "hosts"), "my hosts\n")
	baseFS, err := e.store.OpenImageFS(ctx, noEtc)
	must(t, err)
	defer baseFS.Close()
	newFS, err := e.store.OpenImageFS(ctx, newImg)
	must(t, err)
	defer newFS.Close()
	plan, err := Merge(baseFS, newFS, local)
	must(t, err)
	checkPlan(t, plan, mergeCase{
		sources:   map[string]Source{"mine": FromLocal, "hosts": FromLocal, "passwd": FromNew, "ssh/sshd_config": FromNew},
		conflicts: []string{"hosts"},
	})
	out := filepath.Join(t.TempDir(), "etc")
	must(t, Apply(ctx, plan, out))
	wantContent(t, filepath.Join(out, "hosts"), "my hosts\n")
	wantContent(t, filepath.Join(out, "passwd"), "root:x:0:0::/root:/bin/sh\n")
	// The new image without /etc is ErrNoEtc.
	if _, err := Merge(newFS, baseFS, local); !errors.Is(err, ErrNoEtc) {
		t.Errorf("Merge into an image without /etc: %v", err)
	}
}

// TestApplyLiveLocal: a local file rewritten between Merge and Apply (a
// live /etc) is copied as it is now; a vanished one is an error naming it.
func TestApplyLiveLocal(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	baseImg := e.image(nil)
	a := e.create(CreateOptions{Image: baseImg})
	etc := e.m.EtcDir(a.ID)
	write(t, filepath.Join(etc, "motd"), "mine\n")
	write(t, filepath.Join(etc, "gone"), "soon gone\n")
	fsys, err := e.store.OpenImageFS(ctx, baseImg)
	must(t, err)
	defer fsys.Close()
	plan, err := Merge(fsys, fsys, etc)
	must(t, err)
	write(t, filepath.Join(etc, "motd"), "rewritten, and longer\n")
	out := filepath.Join(t.TempDir(), "etc")
	must(t, os.Remove(filepath.Join(etc, "gone")))
	err = Apply(ctx, plan, out)
	if err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("Apply with a vanished local file: %v", err)
	}
	write(t, filepath.Join(etc, "gone"), "back\n")
	out2 := filepath.Join(t.TempDir(), "etc")
	must(t, Apply(ctx, plan, out2))
	wantContent(t, filepath.Join(out2, "motd"), "rewritten, and longer\n")
}
