package erofs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fsverityDigestHex runs the real `fsverity digest` on path.
func fsverityDigestHex(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("fsverity", "digest", "--compact", path).Output()
	if err != nil {
		t.Fatalf("fsverity digest %s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

// TestFromDirFiles checks what FromDir records per file: inline content
// up to 64 bytes, fs-verity digests (compared with fsverity-utils) and
// payload paths above, symlink targets, hardlinks, xattrs and mtimes.
func TestFromDirFiles(t *testing.T) {
	dir := t.TempDir()
	sizes := []int{0, 1, 63, 64, 65, 4096, 100000}
	for _, n := range sizes {
		if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(n)), bytes.Repeat([]byte{byte(n)}, n), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("some/where", filepath.Join(dir, "link")))
	must(os.WriteFile(filepath.Join(dir, "h1"), bytes.Repeat([]byte("h"), 500), 0o644))
	must(os.Mkdir(filepath.Join(dir, "sub"), 0o700))
	must(os.Link(filepath.Join(dir, "h1"), filepath.Join(dir, "sub", "h2")))
	must(os.Link(filepath.Join(dir, "h1"), filepath.Join(dir, "a-first")))
	must(unix.Lsetxattr(filepath.Join(dir, "h1"), "user.b", []byte("2"), 0))
	must(unix.Lsetxattr(filepath.Join(dir, "h1"), "user.a", []byte("1"), 0))
	ts := unix.Timespec{Sec: 1234567890, Nsec: 987654321}
	must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, "link"), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))

	root, err := FromDir(context.Background(), dir, FromDirOptions{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range sizes {
		node := root.Child("f" + strconv.Itoa(n))
		if node == nil || node.Size != uint64(n) {
			t.Fatalf("no node of size %d", n)
		}
		switch {
		case n == 0:
			if node.Content != nil || !node.Digest.IsZero() || node.Payload != "" {
				t.Errorf("empty file: %+v", node.Inode)
			}
		case n <= MaxInlineFromDir:
			if !bytes.Equal(node.Content, bytes.Repeat([]byte{byte(n)}, n)) || !node.Digest.IsZero() {
				t.Errorf("%d bytes: not inlined", n)
			}
		default:
			want := fsverityDigestHex(t, filepath.Join(dir, node.Name))
			if node.Content != nil || node.Digest.Hex() != want || node.Payload != want[:2]+"/"+want[2:] {
				t.Errorf("%d bytes: digest %s payload %q, fsverity says %s", n, node.Digest, node.Payload, want)
			}
		}
		if node.Mode != ModeReg|0o640 {
			t.Errorf("%s: mode %o", node.Name, node.Mode)
		}
	}
	link := root.Child("link")
	if link.Inode.Target != "some/where" || link.Size != 10 || link.Mtime != (Timespec{1234567890, 987654321}) {
		t.Errorf("symlink: %+v", link.Inode)
	}
	// Hardlinks: the first name in sorted depth-first order is primary.
	prim, h1, h2 := root.Child("a-first"), root.Child("h1"), root.Child("sub").Child("h2")
	if prim.Link != nil || h1.Link != prim || h2.Link != prim || prim.Nlink != 3 {
		t.Errorf("hardlinks: primary link %v nlink %d, h1 -> %v, h2 -> %v", prim.Link, prim.Nlink, h1.Link, h2.Link)
	}
	if len(prim.Xattrs) != 2 || prim.Xattrs[0].Name != "user.a" || prim.Xattrs[1].Name != "user.b" {
		t.Errorf("xattrs %+v", prim.Xattrs)
	}
	// The tree writes, and reads back the same.
	var img bytes.Buffer
	if err := Write(&img, root, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	back, err := Open(bytes.NewReader(img.Bytes()), int64(img.Len()))
	if err != nil {
		t.Fatal(err)
	}
	tree, err := back.Tree()
	if err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	normalizeDirs(root)
	normalizeDirs(tree)
	if err := WriteDump(&a, root); err != nil {
		t.Fatal(err)
	}
	if err := WriteDump(&b, tree); err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Errorf("image reads back differently:\n%s\nvs\n%s", b.String(), a.String())
	}
}

// TestFromDirDigestStore checks the store: objects at their digest path
// with the file's content and mode 0644, present objects left alone, no
// temp files, and a second run that adds nothing.
func TestFromDirDigestStore(t *testing.T) {
	dir, store := t.TempDir(), t.TempDir()
	contents := map[string][]byte{
		"a":     bytes.Repeat([]byte("A"), 70),
		"b":     bytes.Repeat([]byte("B"), 9000),
		"dup":   bytes.Repeat([]byte("B"), 9000),
		"small": []byte("tiny"),
	}
	for name, c := range contents {
		if err := os.WriteFile(filepath.Join(dir, name), c, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A present object must not be rewritten.
	aDigest := fsverityDigestHex(t, filepath.Join(dir, "a"))
	pre := filepath.Join(store, aDigest[:2], aDigest[2:])
	if err := os.MkdirAll(filepath.Dir(pre), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pre, []byte("already here"), 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := FromDir(context.Background(), dir, FromDirOptions{DigestStore: store})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(pre); string(got) != "already here" {
		t.Errorf("present object rewritten: %q", got)
	}
	b := root.Child("b")
	obj := filepath.Join(store, b.Payload)
	got, err := os.ReadFile(obj)
	if err != nil || !bytes.Equal(got, contents["b"]) {
		t.Fatalf("object %s: %v", obj, err)
	}
	if st, _ := os.Stat(obj); st.Mode().Perm() != 0o644 {
		t.Errorf("object mode %v", st.Mode())
	}
	var names []string
	filepath.WalkDir(store, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(store, p)
			names = append(names, rel)
		}
		return nil
	})
	if len(names) != 2 {
		t.Errorf("store holds %v, want the two external contents", names)
	}
	if _, err := FromDir(context.Background(), dir, FromDirOptions{DigestStore: store}); err != nil {
		t.Fatal(err)
	}
}

// TestFromDirErrors: a missing source, a file as source, a cancelled
// context.
func TestFromDirErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	for i := 0; i < 50; i++ {
		os.WriteFile(filepath.Join(dir, "big"+strconv.Itoa(i)), bytes.Repeat([]byte("y"), 5000+i), 0o644)
	}
	if _, err := FromDir(context.Background(), filepath.Join(dir, "nope"), FromDirOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: %v", err)
	}
	if _, err := FromDir(context.Background(), file, FromDirOptions{}); err == nil {
		t.Error("a regular file as source was accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := FromDir(ctx, dir, FromDirOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// referenceTool returns the path of a reference composefs tool
// (mkcomposefs, composefs-info: composefs 1.0.8 from Debian, unpacked by
// bench/reference-tools.sh, since Debian 12 has no composefs package), or
// skips when it cannot be had (no network).
func referenceTool(t *testing.T, name string) string {
	t.Helper()
	if d := os.Getenv("TWINROOT_COMPOSEFS_BIN"); d != "" {
		return filepath.Join(d, name)
	}
	out, err := exec.Command("bash", "../bench/reference-tools.sh").Output()
	if err != nil {
		t.Skipf("reference %s unavailable (bench/reference-tools.sh: %v)", name, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return filepath.Join(lines[len(lines)-1], name)
}

// TestFromDirMatchesMkcomposefs: for a hardlink-free tree with every file
// type and edge case, `updatectl image create`'s library path (FromDir +
// Write) gives the same image as `mkcomposefs DIR`, byte for byte, and
// the same digest store.
func TestFromDirMatchesMkcomposefs(t *testing.T) {
	requireRoot(t)
	mk := referenceTool(t, "mkcomposefs")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	makeRichTree(t, src, treeSpec{bigDirEntries: 1000, sparseSize: 8 << 20, noHardlinks: true})
	refStore, ourStore := t.TempDir(), t.TempDir()
	ref := filepath.Join(t.TempDir(), "ref.cfs")
	if out, err := exec.Command(mk, "--digest-store="+refStore, src, ref).CombinedOutput(); err != nil {
		t.Fatalf("mkcomposefs: %v\n%s", err, out)
	}
	our := buildDirImage(t, src, ourStore)
	a, _ := os.ReadFile(ref)
	b, _ := os.ReadFile(our)
	if !bytes.Equal(a, b) {
		t.Errorf("image differs from mkcomposefs's (%d vs %d bytes)", len(b), len(a))
	}
	list := func(dir string) string {
		var names []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(dir, p)
				names = append(names, rel)
			}
			return nil
		})
		return strings.Join(names, "\n")
	}
	if l1, l2 := list(refStore), list(ourStore); l1 != l2 {
		t.Errorf("digest stores differ:\nmkcomposefs %d objects, ours %d", strings.Count(l1, "\n")+1, strings.Count(l2, "\n")+1)
	}
}
