package boot

import (
	"fmt"
	"slices"
	"strings"

	"github.com/twinroot/twinroot/internal/bootarg"
	"github.com/twinroot/twinroot/verity"
)

// Installed is a kernel and initramfs on the boot partition, as
// InstallKernel returns it. Paths are absolute on the partition, as entries
// name them ("/twinroot/vmlinuz-<sha256 hex>").
type Installed struct {
	Version string // kernel version (usr/lib/modules/<kver>)
	Linux   string
	Initrd  string
}

// Deployment is what an entry is made from.
type Deployment struct {
	ID        string            // deployment id (bootarg.CheckID)
	Image     verity.Digest     // composefs image digest
	OSRelease map[string]string // the image's os-release (NAME, VERSION, VERSION_ID)
	Version   string            // the image's version label (org.opencontainers.image.version)
	Kernel    Installed         // from InstallKernel
	// Root is the physical root as the kernel's root= wants it, e.g.
	// "UUID=0f3c..." or "/dev/vda2".
	Root string
	// ImageKargs are the image's own kernel arguments (ImageKargs).
	ImageKargs []string
	// Kargs are the user's kernel arguments, last on the command line.
	Kargs []string
}

// Ranks of the two entries of a set. The file name carries the rank GRUB
// sorts by (descending), the sort-key the one systemd-boot sorts by
// (ascending); see docs/architecture.md, "boot".
const (
	entryPrefix    = "twinroot"
	fileRankFirst  = "1"
	fileRankSecond = "0"
	sortKeyFirst   = "twinroot-0"
	sortKeySecond  = "twinroot-1"
)

// DefaultTries is the boot counter a new first entry gets.
const DefaultTries = 3

// EntryFile is one planned entry: its file name (with counter) and content.
type EntryFile struct {
	Name       EntryName
	Entry      Entry
	Deployment string // deployment id
	Image      verity.Digest
}

// File returns the entry's file name.
func (f EntryFile) File() string { return f.Name.String() }

// Plan returns the complete entry set for first (the default) and fallback
// (the rollback target, may be nil), in boot order. current maps deployment
// ids to the names their entries have now: a deployment that has an entry
// keeps its boot counter (a blessing is never lost), unless the counter is
// exhausted; a first deployment without one gets tries tries (none when
// tries is 0); a fallback without one gets no counter. Plan is pure.
func Plan(first Deployment, fallback *Deployment, current map[string]EntryName, tries int) ([]EntryFile, error) {
	a, err := planEntry(first, true, current, tries)
	if err != nil {
		return nil, err
	}
	if fallback == nil {
		return []EntryFile{a}, nil
	}
	if fallback.ID == first.ID {
		return nil, fmt.Errorf("%w: first and fallback are both deployment %s", ErrBadDeployment, first.ID)
	}
	b, err := planEntry(*fallback, false, current, tries)
	if err != nil {
		return nil, err
	}
	if a.Name.Base == b.Name.Base {
		return nil, fmt.Errorf("%w: deployments %s and %s give the same entry name", ErrBadDeployment, first.ID, fallback.ID)
	}
	return []EntryFile{a, b}, nil
}

// entryBase is the file name without counter: "twinroot<rank>_<id>", with
// '-' in the id made '_'. The base holds no '-': GRUB splits a file name at
// its last two dashes into name-version-release, and the only dash then is
// the one systemd-boot adds in a "+LEFT-DONE" counter; either way the part
// GRUB compares first starts with "twinroot<rank>", so the rank decides.
func entryBase(rankFirst bool, id string) string {
	r := fileRankSecond
	if rankFirst {
		r = fileRankFirst
	}
	return entryPrefix + r + "_" + strings.ReplaceAll(id, "-", "_")
}

func planEntry(d Deployment, isFirst bool, current map[string]EntryName, tries int) (EntryFile, error) {
	arg, err := bootarg.Format(d.ID, d.Image)
	if err != nil {
		return EntryFile{}, fmt.Errorf("%w: %w", ErrBadDeployment, err)
	}
	bad := func(what string) error {
		return fmt.Errorf("%w %s: %s", ErrBadDeployment, d.ID, what)
	}
	if d.Root == "" {
		return EntryFile{}, bad("no root")
	}
	if !strings.HasPrefix(d.Kernel.Linux, "/") || !strings.HasPrefix(d.Kernel.Initrd, "/") {
		return EntryFile{}, bad("kernel not installed on the boot partition")
	}
	opts := []string{"root=" + d.Root, arg}
	// rw unless the image's or the user's arguments say rw or ro
	// themselves (the last of the two wins in the kernel either way; this
	// keeps the command line free of a second "rw").
	if !slices.ContainsFunc(append(slices.Clip(d.ImageKargs), d.Kargs...), func(a string) bool { return a == "rw" || a == "ro" }) {
		opts = append(opts, "rw")
	}
	opts = append(opts, d.ImageKargs...)
	opts = append(opts, d.Kargs...)
	for _, v := range []string{d.Version, d.Kernel.Linux, d.Kernel.Initrd} {
		if strings.ContainsAny(v, "\n\r\x00") {
			return EntryFile{}, bad(fmt.Sprintf("value %q holds a line break or NUL", v))
		}
	}
	for _, v := range opts {
		if v == "" || strings.ContainsAny(v, "\n\r\x00") || strings.ContainsAny(v, " \t") && !strings.Contains(v, `"`) {
			return EntryFile{}, bad(fmt.Sprintf("kernel argument %q is empty, holds a line break or unquoted blanks", v))
		}
	}
	e := Entry{}
	add := func(k, v string) {
		if v != "" {
			e.Fields = append(e.Fields, Field{Key: k, Value: v})
		}
	}
	add("title", Title(d))
	version := d.Version
	if version == "" {
		version = d.OSRelease["VERSION_ID"]
	}
	add("version", oneLine(version))
	if isFirst {
		add("sort-key", sortKeyFirst)
	} else {
		add("sort-key", sortKeySecond)
	}
	add("linux", d.Kernel.Linux)
	add("initrd", d.Kernel.Initrd)
	add("options", strings.Join(opts, " "))

	cur, ok := current[d.ID]
	name := counterFor(EntryName{Base: entryBase(isFirst, d.ID)}, isFirst, cur, ok, tries)
	return EntryFile{Name: name, Entry: e, Deployment: d.ID, Image: d.Image}, nil
}

// Title is an entry's title: the image's NAME and VERSION from os-release
// (PRETTY_NAME when there is no NAME) and its version label when that adds
// something.
func Title(d Deployment) string {
	osr := d.OSRelease
	var parts []string
	if n := osr["NAME"]; n != "" {
		parts = append(parts, n)
		if v := osr["VERSION"]; v != "" {
			parts = append(parts, v)
		}
	} else if p := osr["PRETTY_NAME"]; p != "" {
		parts = append(parts, p)
	} else {
		parts = append(parts, "twinroot")
	}
	if d.Version != "" && d.Version != osr["VERSION"] && d.Version != osr["VERSION_ID"] {
		parts = append(parts, d.Version)
	}
	return oneLine(strings.Join(parts, " "))
}

// oneLine makes s fit on an entry line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)), " ")
}

// counterFor gives name the boot counter the rules ask for: the current
// entry's counter when the deployment has an entry that is not exhausted
// (so a blessing is never lost), else tries tries for a first entry and no
// counter for a fallback.
func counterFor(name EntryName, isFirst bool, cur EntryName, haveCur bool, tries int) EntryName {
	name.Counted, name.Left, name.Done = false, 0, 0
	switch {
	case haveCur && !cur.Exhausted():
		name.Counted, name.Left, name.Done = cur.Counted, cur.Left, cur.Done
	case isFirst && tries > 0:
		name.Counted, name.Left = true, tries
	}
	return name
}
