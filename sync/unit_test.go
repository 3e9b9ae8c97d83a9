package sync

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// treeString lists a tree: one line per path with type and a content tag;
// hardlinks show their primary.
func treeString(root *erofs.Node) string {
	var lines []string
	_ = root.Walk(func(n *erofs.Node) error {
		if n == root {
			return nil
		}
		switch {
		case n.Link != nil:
			lines = append(lines, n.Path()+" => "+n.Link.Path())
		case n.IsDir():
			lines = append(lines, n.Path()+"/")
		default:
			lines = append(lines, fmt.Sprintf("%s %q n%d", n.Path(), n.Content, n.Nlink))
		}
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func add(p, content string) entry {
	return entry{Op: opAdd, Path: p, Mode: erofs.ModeReg | 0o644, Size: uint64(len(content)), Content: []byte(content)}
}
func mkdir(p string) entry        { return entry{Op: opAdd, Path: p, Mode: erofs.ModeDir | 0o755} }
func link(p, target string) entry { return entry{Op: opAdd, Path: p, Link: target} }
func wh(p string) entry           { return entry{Op: opWhiteout, Path: p} }
func opq(p string) entry          { return entry{Op: opOpaque, Path: p} }

func TestTreeApply(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]entry
		want   string
		err    error
	}{
		{"implicit parents", [][]entry{{add("a/b/c", "x")}}, "/a/\n/a/b/\n/a/b/c \"x\" n1", nil},
		{"dir over dir keeps children", [][]entry{{mkdir("d"), add("d/f", "1")}, {mkdir("d")}}, "/d/\n/d/f \"1\" n1", nil},
		{"file replaces dir", [][]entry{{mkdir("d"), add("d/f", "1")}, {add("d", "2")}}, "/d \"2\" n1", nil},
		{"hardlink nlink", [][]entry{{add("a", "x"), link("b", "a"), link("c", "b")}}, "/a \"x\" n3\n/b => /a\n/c => /a", nil},
		{"primary removed: link promoted", [][]entry{{add("a", "x"), link("b", "a"), link("c", "a")}, {wh("a")}}, "/b \"x\" n2\n/c => /b", nil},
		{"primary replaced keeps old content in links", [][]entry{{add("a", "old"), link("b", "a")}, {add("a", "new")}}, "/a \"new\" n1\n/b \"old\" n1", nil},
		{"dir of primary removed", [][]entry{{add("d/a", "x"), link("b", "d/a")}, {wh("d")}}, "/b \"x\" n1", nil},
		{"link removed", [][]entry{{add("a", "x"), link("b", "a")}, {wh("b")}}, "/a \"x\" n1", nil},
		{"opaque keeps same-layer entries", [][]entry{{add("d/old", "1")}, {add("d/new", "2"), opq("d"), add("d/later", "3")}}, "/d/\n/d/later \"3\" n1\n/d/new \"2\" n1", nil},
		{"opaque of missing dir", [][]entry{{opq("x/y")}}, "/x/\n/x/y/", nil},
		{"whiteout of missing is fine", [][]entry{{wh("nothing/here")}}, "", nil},
		{"whiteout of root", [][]entry{{wh("")}}, "", ErrUnsafeLayer},
		{"link to dir", [][]entry{{mkdir("d"), link("l", "d")}}, "", ErrUnsafeLayer},
		{"link replacing its own parent", [][]entry{{add("d/f", "x")}, {link("d", "d/f")}}, "", ErrUnsafeLayer},
		{"path through file", [][]entry{{add("f", "x"), add("f/g", "y")}}, "", ErrUnsafeLayer},
		{"relink same", [][]entry{{add("a", "x"), link("b", "a"), link("b", "a")}}, "/a \"x\" n2\n/b => /a", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(0)
			var err error
			for _, l := range tc.layers {
				tr.startLayer()
				for i := range l {
					if err = tr.apply(&l[i]); err != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := treeString(tr.finish()); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestTreeMaxFiles(t *testing.T) {
	tr := newTree(3)
	var err error
	for i := range 5 {
		if err = tr.apply(&entry{Op: opAdd, Path: fmt.Sprint("f", i), Mode: erofs.ModeReg}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("got %v", err)
	}
}

func TestCleanPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a/b", "a/b"}, {"./a/b/", "a/b"}, {"a//b", "a/b"}, {".", ""}, {"./", ""}, {"a/./b", "a/b"},
		{"new\nline", "new\nline"}, {"../a", "!"}, {"a/../b", "!"}, {"/a", "!"}, {"a\x00b", "!"}, {strings.Repeat("x", 256), "!"},
	} {
		got, err := cleanPath(tc.in)
		if err != nil {
			got = "!"
		}
		if got != tc.want {
			t.Errorf("cleanPath(%q) = %q (%v), want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestACLFromText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// version 2; (tag, perm, id) little-endian
		{"user::rw-,group::r--,other::---", "02000000" + "01000600ffffffff" + "04000400ffffffff" + "20000000ffffffff"},
		{"user::rwx,user:1000:r--,group::r-x,mask::r-x,other::r--", "02000000" + "01000700ffffffff" + "02000400e8030000" + "04000500ffffffff" + "10000500ffffffff" + "20000400ffffffff"},
		// star's form with names and numeric ids, out of order
		{"other::r--\nmask::rw-\ngroup:wheel:rw-:10\ngroup::r--\nuser:alice:rw-:1001\nuser::rw-", "02000000" + "01000600ffffffff" + "02000600e9030000" + "04000400ffffffff" + "080006000a000000" + "10000600ffffffff" + "20000400ffffffff"},
		{"user:alice:rw-", "!"}, {"user::rwz", "!"}, {"bogus::rwx", "!"}, {"", "!"}, {"user::rw-,user::r--", "!"}, {"mask:1:rwx", "!"},
	} {
		b, err := aclFromText(tc.in)
		got := hex.EncodeToString(b)
		if err != nil {
			got = "!"
		}
		if got != tc.want {
			t.Errorf("aclFromText(%q) = %s (%v), want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestRegistriesConf(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "registries.conf")
	os.WriteFile(conf, []byte(`
unqualified-search-registries = ["quay.io", "registry.fedoraproject.org"]
short-name-mode = "permissive"
[[registry]]
location = "quay.io/os"
[[registry.mirror]]
location = "mirror.local:5000/quay-os"
insecure = true
[[registry.mirror]]
location = "digest.local/os"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "example.com/team"
location = "internal.example.com/team"
insecure = true

[[registry]]
location = "blocked.io"
blocked = true

[[registry]]
location = "strict.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.strict.io"
`), 0o644)
	dropins := filepath.Join(dir, "registries.conf.d")
	os.Mkdir(dropins, 0o755)
	os.WriteFile(filepath.Join(dropins, "50-wild.conf"), []byte(`
[[registry]]
prefix = "*.wild.io"
location = "x.io/wild"
[aliases]
"fedora-bootc" = "quay.io/fedora/fedora-bootc"
`), 0o644)
	o := defaultOptions()
	o.regConf, o.regConfDir = conf, dropins
	sys := o.systemContext()
	str := func(cs []candidate) string {
		var s []string
		for _, c := range cs {
			var eps []string
			for _, e := range c.endpoints {
				eps = append(eps, fmt.Sprintf("%s insecure=%v mirror=%v", e.repo, e.insecure, e.mirror))
			}
			s = append(s, c.ref.String()+" -> "+strings.Join(eps, "; "))
		}
		return strings.Join(s, " | ")
	}
	const dg = "@sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct{ ref, want string }{
		{"quay.io/os/fedora:1", "quay.io/os/fedora:1 -> mirror.local:5000/quay-os/fedora insecure=true mirror=true; quay.io/os/fedora insecure=false mirror=false"},
		{"quay.io/os/fedora" + dg, "quay.io/os/fedora" + dg + " -> mirror.local:5000/quay-os/fedora insecure=true mirror=true; digest.local/os/fedora insecure=false mirror=true; quay.io/os/fedora insecure=false mirror=false"},
		{"quay.io/osx/fedora", "quay.io/osx/fedora:latest -> quay.io/osx/fedora insecure=false mirror=false"},
		{"example.com/team/app:2", "example.com/team/app:2 -> internal.example.com/team/app insecure=true mirror=false"},
		{"blocked.io/x:1", "!blocked"},
		{"strict.io/x:1", "strict.io/x:1 -> strict.io/x insecure=false mirror=false"},
		{"strict.io/x" + dg, "strict.io/x" + dg + " -> m.strict.io/x insecure=false mirror=true; strict.io/x insecure=false mirror=false"},
		{"a.wild.io/x:1", "a.wild.io/x:1 -> x.io/wild/x insecure=false mirror=false"},                                    // wildcard prefix, from the drop-in
		{"fedora-bootc:42", "quay.io/fedora/fedora-bootc:42 -> quay.io/fedora/fedora-bootc insecure=false mirror=false"}, // alias
		{"os/app:1", "quay.io/os/app:1 -> mirror.local:5000/quay-os/app insecure=true mirror=true; quay.io/os/app insecure=false mirror=false | " +
			"registry.fedoraproject.org/os/app:1 -> registry.fedoraproject.org/os/app insecure=false mirror=false"}, // search registries
		{"localhost:5000/a:1", "localhost:5000/a:1 -> localhost:5000/a insecure=false mirror=false"},
	} {
		cs, err := candidates(sys, tc.ref)
		got := str(cs)
		if err != nil {
			got = "!" + err.Error()
			if strings.HasPrefix(tc.want, "!") && strings.Contains(err.Error(), tc.want[1:]) {
				continue
			}
		}
		if got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.ref, got, tc.want)
		}
	}

	// Enforcing mode cannot pick among several search registries; no
	// search registries at all is an error too.
	enf := filepath.Join(dir, "enforcing.conf")
	os.WriteFile(enf, []byte(`unqualified-search-registries = ["a.io", "b.io"]
short-name-mode = "enforcing"`), 0o644)
	o.regConf, o.regConfDir = enf, noConfigDir
	if _, err := candidates(o.systemContext(), "app:1"); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("enforcing: %v", err)
	}
	o.regConf = "-"
	if _, err := candidates(o.systemContext(), "app:1"); !errors.Is(err, ErrBadReference) {
		t.Errorf("no search registries: %v", err)
	}
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("x = ["), 0o644)
	o.regConf = bad
	if _, err := candidates(o.systemContext(), "quay.io/a:1"); err == nil {
		t.Error("a malformed registries.conf was accepted")
	}
}

func TestCredentials(t *testing.T) {
	dir := t.TempDir()
	auth := filepath.Join(dir, "auth.json")
	os.WriteFile(auth, []byte(`{"auths":{
		"docker.io": {"auth": "ZHU6ZHA="},
		"quay.io": {"auth": "cXU6cXA="},
		"quay.io/org/repo": {"auth": "cnU6cnA="},
		"tok.io": {"auth": "PHRva2VuPjo=", "identitytoken": "T"}}}`), 0o600)
	empty := filepath.Join(dir, "empty.json")
	os.WriteFile(empty, []byte(`{"auths":{}}`), 0o600)
	o := defaultOptions()
	o.regConf = "-"
	sys := o.systemContext()
	sys.AuthFilePath = empty // keep the host's files out
	for _, tc := range []struct{ repo, want string }{
		{"docker.io/library/debian", "du"}, {"quay.io/org/repo", "ru"},
		{"quay.io/org/other", "qu"}, {"tok.io/x", "token:T"}, {"ghcr.io/x", "-"},
	} {
		a, err := credentials(sys, []string{auth}, tc.repo)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := a.Authorization()
		got := c.Username
		if c.IdentityToken != "" {
			got = "token:" + c.IdentityToken
		}
		if a == authn.Anonymous {
			got = "-"
		}
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.repo, got, tc.want)
		}
	}
	if _, err := credentials(sys, []string{filepath.Join(dir, "missing.json")}, "quay.io/x"); err == nil {
		t.Error("a missing --authfile was accepted")
	}
}

func TestChoosePlatform(t *testing.T) {
	idx := &v1.IndexManifest{Manifests: []v1.Descriptor{
		{Digest: v1.Hash{Algorithm: "sha256", Hex: "aa"}, Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
		{Digest: v1.Hash{Algorithm: "sha256", Hex: "bb"}, Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}},
		{Digest: v1.Hash{Algorithm: "sha256", Hex: "cc"}, Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}},
		{Digest: v1.Hash{Algorithm: "sha256", Hex: "dd"}},
	}}
	for _, tc := range []struct{ plat, want string }{
		{"linux/amd64", "aa"}, {"linux/arm64", "bb"}, {"linux/arm64/v8", "bb"}, {"linux/arm/v7", "cc"}, {"linux/arm", "cc"},
		{"linux/arm/v6", "!"}, {"windows/amd64", "!"}, {"linux", "!"},
	} {
		got := "!"
		if p, err := parsePlatform(tc.plat); err == nil {
			if d, err := choosePlatform(idx, p); err == nil {
				got = d.Digest.Hex
			}
		}
		if got != tc.want {
			t.Errorf("%s: %s, want %s", tc.plat, got, tc.want)
		}
	}
}

func TestRecordRoundTrip(t *testing.T) {
	d := verity.DigestBytes([]byte("content"), verity.SHA256)
	diff := sha256Of([]byte("layer"))
	rec := &layerRecord{Version: recordVersion, DiffID: diff, Algorithm: "sha256", Entries: []entry{
		add("etc/a", "x"), {Op: opAdd, Path: "usr/big", Mode: erofs.ModeReg | 0o755, Size: 1000, Digest: d,
			Xattrs: []erofs.Xattr{{Name: "user.a", Value: []byte{0, 1, 2}}}}, wh("opt/x"), opq("var"), link("etc/b", "etc/a"),
	}}
	b, err := encodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeRecord(bytes.NewReader(b), diff, verity.SHA256, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", rec) {
		t.Errorf("round trip:\n%+v\n%+v", got, rec)
	}
	if _, err := decodeRecord(bytes.NewReader(b), sha256Of([]byte("other")), verity.SHA256, DefaultLimits()); !errors.Is(err, ErrBadRecord) {
		t.Errorf("other diff id: %v", err)
	}
	if _, err := decodeRecord(bytes.NewReader(b), diff, verity.SHA512, DefaultLimits()); !errors.Is(err, ErrBadRecord) {
		t.Errorf("other algorithm: %v", err)
	}
	rec.Entries[0].Path = "../evil"
	b, _ = encodeRecord(rec)
	if _, err := decodeRecord(bytes.NewReader(b), diff, verity.SHA256, DefaultLimits()); !errors.Is(err, ErrBadRecord) {
		t.Errorf("evil path: %v", err)
	}
}
