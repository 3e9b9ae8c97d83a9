package sync

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
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
	conf, err := parseRegistriesConf(`
unqualified-search-registries = ["docker.io"]
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

[[registry]]
prefix = "*.wild.io"
location = "x.io"
`)
	if err != nil {
		t.Fatal(err)
	}
	str := func(eps []endpoint) string {
		var s []string
		for _, e := range eps {
			s = append(s, fmt.Sprintf("%s insecure=%v mirror=%v", e.repo, e.insecure, e.mirror))
		}
		return strings.Join(s, "; ")
	}
	for _, tc := range []struct {
		repo     string
		byDigest bool
		want     string
	}{
		{"quay.io/os/fedora", false, "mirror.local:5000/quay-os/fedora insecure=true mirror=true; quay.io/os/fedora insecure=false mirror=false"},
		{"quay.io/os/fedora", true, "mirror.local:5000/quay-os/fedora insecure=true mirror=true; digest.local/os/fedora insecure=false mirror=true; quay.io/os/fedora insecure=false mirror=false"},
		{"quay.io/osx/fedora", false, "quay.io/osx/fedora insecure=false mirror=false"},
		{"example.com/team/app", false, "internal.example.com/team/app insecure=true mirror=false"},
		{"blocked.io/x", false, "!"},
		{"strict.io/x", false, "strict.io/x insecure=false mirror=false"},
		{"strict.io/x", true, "m.strict.io/x insecure=false mirror=true; strict.io/x insecure=false mirror=false"},
		{"a.wild.io/x", false, "a.wild.io/x insecure=false mirror=false"},
	} {
		eps, err := conf.endpoints(tc.repo, tc.byDigest)
		got := str(eps)
		if err != nil {
			got = "!"
		}
		if got != tc.want {
			t.Errorf("%s digest=%v:\n got %s\nwant %s", tc.repo, tc.byDigest, got, tc.want)
		}
	}
	if u := strings.Join(conf.unsupported(), ","); u != "unqualified-search-registries,wildcard prefix *.wild.io" {
		t.Errorf("unsupported: %s", u)
	}
	for _, bad := range []string{`[[registry]]`, `[[registry]]` + "\nlocation=\"a\"\n[[registry.mirror]]\ninsecure=true", "x = ["} {
		if _, err := parseRegistriesConf(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestAuthLookup(t *testing.T) {
	m, err := parseAuthFile([]byte(`{"auths":{
		"https://index.docker.io/v1/": {"auth": "ZHU6ZHA="},
		"quay.io": {"auth": "cXU6cXA="},
		"quay.io/org/repo": {"auth": "cnU6cnA="},
		"tok.io": {"identitytoken": "T"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ repo, want string }{
		{"docker.io/library/debian", "du"}, {"index.docker.io/library/debian", "du"}, {"quay.io/org/repo", "ru"},
		{"quay.io/org/other", "qu"}, {"quay.io", "qu"}, {"tok.io/x", "token:T"}, {"ghcr.io/x", "-"},
	} {
		c, ok := lookupAuth(m, tc.repo)
		got := c.Username
		if c.IdentityToken != "" {
			got = "token:" + c.IdentityToken
		}
		if !ok {
			got = "-"
		}
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.repo, got, tc.want)
		}
	}
	if _, err := parseAuthFile([]byte(`{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}`)); err == nil {
		t.Error("auth without colon accepted")
	}
	var _ authn.Keychain = authn.DefaultKeychain
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
