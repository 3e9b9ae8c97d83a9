package deploy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/erofs"
)

// hostileImage writes a composefs image whose /etc holds one file, then
// renames that entry in the image's bytes to name (same length as the
// placeholder): what a crafted image.cfs can hold, since the on-disk
// format does not forbid '/' or ".." in a directory entry.
func hostileImage(t *testing.T, name string) *erofs.Image {
	t.Helper()
	placeholder := strings.Repeat("Q", len(name))
	root := erofs.NewRoot(0o755)
	etc := &erofs.Node{Name: "etc", Inode: erofs.Inode{Mode: erofs.ModeDir | 0o755, Nlink: 2}}
	must(t, root.AddChild(etc))
	content := []byte("pwned\n")
	f := &erofs.Node{Name: placeholder, Inode: erofs.Inode{Mode: erofs.ModeReg | 0o644, Nlink: 1, Size: uint64(len(content)), Content: content}}
	must(t, etc.AddChild(f))
	var buf bytes.Buffer
	must(t, erofs.Write(&buf, root, erofs.WriteOptions{}))
	b := buf.Bytes()
	if bytes.Count(b, []byte(placeholder)) != 1 {
		t.Fatalf("placeholder %q not found once in the image", placeholder)
	}
	b = bytes.Replace(b, []byte(placeholder), []byte(name), 1)
	img, err := erofs.Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// A directory entry of an image that is not a plain name ("..", or
// holding a '/') would make Apply write outside the new /etc as root:
// Merge refuses it, naming the entry, and nothing is written.
func TestMergeRefusesHostileNames(t *testing.T) {
	needRoot(t)
	for _, name := range []string{"../../../../escaped-file", "a/../../../escape", "x/y", "sub/../../x"} {
		t.Run(name, func(t *testing.T) {
			img := hostileImage(t, name)
			scratch := t.TempDir()
			dst := filepath.Join(scratch, "a", "b", "c", "etc")
			must(t, os.MkdirAll(filepath.Dir(dst), 0o755))
			plan, err := Merge(nil, img, "")
			if err == nil {
				err = Apply(t.Context(), plan, dst)
				ents, _ := os.ReadDir(scratch)
				for _, e := range ents {
					if e.Name() != "a" {
						t.Errorf("Apply wrote %s outside the new /etc", filepath.Join(scratch, e.Name()))
					}
				}
				t.Fatalf("Merge accepted entry %q (Apply: %v)", name, err)
			}
			if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), name) {
				t.Errorf("err = %v, want ErrBadImage naming %q", err, name)
			}
		})
	}
}

// An object of the store whose content no longer matches the digest its
// image records (a damaged disk, or a store written behind twinroot's back
// where fs-verity is off) must not become the deployment's /etc: Create
// fails naming the path and leaves nothing behind.
func TestCreateRefusesTamperedObject(t *testing.T) {
	e := newEnv(t)
	img := e.image(nil)
	fsys, err := e.store.OpenImageFS(t.Context(), img)
	must(t, err)
	fi, err := fsys.Lstat("etc/motd")
	must(t, err)
	in := fi.Sys().(*erofs.Inode)
	fsys.Close()
	if in.Payload == "" {
		t.Fatal("etc/motd is not an external object")
	}
	obj := filepath.Join(e.store.ImageDir(img), in.Payload)
	b, err := os.ReadFile(obj)
	must(t, err)
	b[0] ^= 0xff // same size, other content
	must(t, os.WriteFile(obj, b, 0o644))

	_, err = e.m.Create(t.Context(), CreateOptions{Image: img})
	if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), "motd") {
		t.Fatalf("Create from a tampered object: %v, want ErrBadImage naming etc/motd", err)
	}
	if list, _ := e.m.List(t.Context()); len(list) != 0 {
		t.Errorf("deployments left: %v", list)
	}
	if roots, _ := e.store.Roots(t.Context()); len(roots) != 0 {
		t.Errorf("roots left: %v", roots)
	}
}
