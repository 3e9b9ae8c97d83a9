package boot

import (
	"cmp"
	"slices"
	"strings"
	"testing"
)

func TestVersionCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1", "2", -1},
		{"10", "9", 1},
		{"6.12.0-1-amd64", "6.12.0-10-amd64", -1},
		{"6.12.10", "6.12.9", 1},
		{"1.0~rc1", "1.0", -1},
		{"1.0", "1.0.1", -1},
		{"abc", "abd", -1},
		{"007", "7", 0},
		{"", "", 0},
		{"1a", "1", 1},
	} {
		if got := versionCompare(c.a, c.b); got != c.want {
			t.Errorf("versionCompare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := versionCompare(c.b, c.a); got != -c.want {
			t.Errorf("versionCompare(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
}

// rpmvercmp compares like rpm's (and GRUB blscfg's) vercmp: runs of
// digits or of letters, other bytes separate; numbers by value, letters by
// byte; a number beats letters; the one with segments left wins.
func rpmvercmp(a, b string) int {
	isAlnum := func(c byte) bool { return isDigit(c) || isAlpha(c) }
	for {
		a = strings.TrimLeftFunc(a, func(r rune) bool { return r > 127 || !isAlnum(byte(r)) })
		b = strings.TrimLeftFunc(b, func(r rune) bool { return r > 127 || !isAlnum(byte(r)) })
		if a == "" || b == "" {
			return cmp.Compare(len(a), len(b))
		}
		f := isAlpha
		if isDigit(a[0]) {
			f = isDigit
		}
		sa, sb := leadingRun(a, f), leadingRun(b, f)
		if sb == "" { // different kinds: a number is newer
			if isDigit(a[0]) {
				return 1
			}
			return -1
		}
		a, b = a[len(sa):], b[len(sb):]
		if isDigit(sa[0]) {
			sa, sb = strings.TrimLeft(sa, "0"), strings.TrimLeft(sb, "0")
			if c := cmp.Compare(len(sa), len(sb)); c != 0 {
				return c
			}
		}
		if c := strings.Compare(sa, sb); c != 0 {
			return c
		}
	}
}

// grubOrder sorts entry file names as GRUB's blscfg does (blscfg.c,
// split_package_string and bls_cmp): without ".conf", the part after the
// last '-' is the release, after the one before it the version, the rest
// the name (with one dash: name and version; none: name only); entries go
// newest first by (name, version, release).
func grubOrder(files []string) []string {
	split := func(f string) (n, v, r string) {
		s := strings.TrimSuffix(f, ".conf")
		i := strings.LastIndexByte(s, '-')
		if i < 0 {
			return s, "", ""
		}
		r, s = s[i+1:], s[:i]
		j := strings.LastIndexByte(s, '-')
		if j < 0 {
			return s, r, ""
		}
		return s[:j], s[j+1:], r
	}
	out := slices.Clone(files)
	slices.SortFunc(out, func(a, b string) int {
		na, va, ra := split(a)
		nb, vb, rb := split(b)
		return -cmp.Or(rpmvercmp(na, nb), rpmvercmp(va, vb), rpmvercmp(ra, rb))
	})
	return out
}

// TestOrderSystemdBootAndGRUB: for every pair of image versions (a rollback
// makes the older one the default), counter state and id order, the planned
// default sorts first for systemd-boot's rules and for GRUB's.
func TestOrderSystemdBootAndGRUB(t *testing.T) {
	p := Deployment{Root: "/dev/vda2", Kernel: Installed{Linux: "/k", Initrd: "/i"}}
	ids := []string{"000000000000.0", "ffffffffffff.9", "aaaaaaaaaaaa.1", "a-b.0"}
	versions := []string{"", "1", "2", "10", "41.20251125.0"}
	for _, ida := range ids {
		for _, idb := range ids {
			if ida == idb {
				continue
			}
			for _, va := range versions {
				for _, vb := range versions {
					for _, cur := range []map[string]EntryName{nil,
						{idb: {Counted: true, Left: 1, Done: 2}},
						{ida: {Counted: true, Left: 2, Done: 1}},
						{ida: {Counted: true, Left: 1, Done: 2}, idb: {Counted: true, Left: 2, Done: 1}}} {
						a, b := p, p
						a.ID, a.Image, a.Version = ida, digestOf(t, 1), va
						b.ID, b.Image, b.Version = idb, digestOf(t, 2), vb
						set, err := Plan(a, &b, cur, 3)
						if err != nil {
							t.Fatal(err)
						}
						var ies []InstalledEntry
						var files []string
						for _, f := range set {
							ies = append(ies, InstalledEntry{File: f.File(), Name: f.Name, Entry: f.Entry})
							files = append(files, f.File())
						}
						slices.Reverse(ies)
						SortEntries(ies)
						if ies[0].File != set[0].File() {
							t.Fatalf("systemd-boot order puts %s first, want %s", ies[0].File, set[0].File())
						}
						if g := grubOrder(files); g[0] != set[0].File() {
							t.Fatalf("GRUB order %q puts the fallback first", g)
						}
					}
				}
			}
		}
	}
}

// TestOrderExhaustedLast: an entry without tries left sorts after the
// fallback in systemd-boot's order.
func TestOrderExhaustedLast(t *testing.T) {
	p := Deployment{Root: "/dev/vda2", Kernel: Installed{Linux: "/k", Initrd: "/i"}}
	a, b := p, p
	a.ID, a.Image = "aaaaaaaaaaaa.0", digestOf(t, 1)
	b.ID, b.Image = "bbbbbbbbbbbb.0", digestOf(t, 2)
	set, err := Plan(a, &b, nil, 3)
	if err != nil {
		t.Fatal(err)
	}
	var ies []InstalledEntry
	for _, f := range set {
		ies = append(ies, InstalledEntry{File: f.File(), Name: f.Name, Entry: f.Entry})
	}
	ies[0].Name.Left, ies[0].Name.Done = 0, 3
	SortEntries(ies)
	if ies[0].Name.Base != "twinroot0_bbbbbbbbbbbb.0" {
		t.Fatalf("order %s, %s", ies[0].Name, ies[1].Name)
	}
}

func TestPlanErrors(t *testing.T) {
	ok := Deployment{ID: "aaaaaaaaaaaa.0", Image: digestOf(t, 1), Root: "/dev/vda2", Kernel: Installed{Linux: "/k", Initrd: "/i"}}
	for name, mod := range map[string]func(d *Deployment){
		"bad id":        func(d *Deployment) { d.ID = "A:B" },
		"no image":      func(d *Deployment) { d.Image = digestOf(t, 1); d.Image = [1]Deployment{}[0].Image },
		"no root":       func(d *Deployment) { d.Root = "" },
		"no kernel":     func(d *Deployment) { d.Kernel.Linux = "" },
		"newline karg":  func(d *Deployment) { d.Kargs = []string{"a\nb"} },
		"empty karg":    func(d *Deployment) { d.Kargs = []string{""} },
		"blank in karg": func(d *Deployment) { d.ImageKargs = []string{"a b"} },
	} {
		d := ok
		mod(&d)
		if _, err := Plan(d, nil, nil, 3); err == nil {
			t.Errorf("%s: Plan accepted %+v", name, d)
		}
	}
	if _, err := Plan(ok, &ok, nil, 3); err == nil {
		t.Error("Plan accepted the same deployment twice")
	}
	q := ok
	q.Kargs = []string{`dyndbg="file x.c +p"`}
	if _, err := Plan(q, nil, nil, 3); err != nil {
		t.Errorf("a quoted argument with blanks: %v", err)
	}
}

// The entry adds rw unless the image's or the user's arguments say rw or
// ro themselves: one rw on the command line, and an ro kept.
func TestPlanRootMode(t *testing.T) {
	base := Deployment{ID: "aaaaaaaaaaaa.0", Image: digestOf(t, 0xaa), Root: "UUID=0f3c",
		Kernel: Installed{Linux: "/twinroot/vmlinuz-x", Initrd: "/twinroot/initramfs-x.img"}}
	arg := "twinroot=aaaaaaaaaaaa.0:" + strings.Repeat("aa", 32)
	tests := []struct {
		image, user []string
		want        string
	}{
		{nil, nil, "root=UUID=0f3c " + arg + " rw"},
		{[]string{"rw", "console=ttyS0"}, nil, "root=UUID=0f3c " + arg + " rw console=ttyS0"},
		{[]string{"console=ttyS0"}, []string{"ro"}, "root=UUID=0f3c " + arg + " console=ttyS0 ro"},
		{[]string{"rw=1"}, []string{"quiet"}, "root=UUID=0f3c " + arg + " rw rw=1 quiet"},
	}
	for _, tt := range tests {
		d := base
		d.ImageKargs, d.Kargs = tt.image, tt.user
		fs, err := Plan(d, nil, nil, 3)
		if err != nil {
			t.Fatal(err)
		}
		if got := fs[0].Entry.Options(); got != tt.want {
			t.Errorf("image %q, user %q: options %q, want %q", tt.image, tt.user, got, tt.want)
		}
	}
}
