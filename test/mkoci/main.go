// Command mkoci builds an OCI image layout from directories, one layer per
// directory, for the demo and benchmark scripts. It is a test tool: the
// tar writer keeps mode, owner, mtime, symlinks, hardlinks, devices and
// xattrs (as SCHILY.xattr PAX records), which is what the sync package must
// read back. Access and change times are left out, so the same tree always
// gives the same layer digest.
//
// -from TAG starts from an image already in LAYOUT (its layers and labels)
// and appends the DIRs as new layers, so images derived from one another
// share their lower layers blob for blob. -overlay reads each DIR as an
// overlayfs upper directory: 0/0 character devices become OCI whiteouts
// (.wh.NAME), directories marked trusted.overlay.opaque become opaque
// (.wh..wh..opq), and trusted.overlay.* xattrs are dropped. -created sets the
// config's creation time (RFC 3339). A TAG already in LAYOUT is replaced.
//
// Usage: mkoci [-zstd] [-from TAG] [-overlay] [-created TIME] [-label k=v]... LAYOUT TAG DIR...
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

type labels map[string]string

func (l labels) String() string { return fmt.Sprint(map[string]string(l)) }
func (l labels) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("label %q: want key=value", s)
	}
	l[k] = v
	return nil
}

func main() {
	zstd := flag.Bool("zstd", false, "compress layers with zstd (default gzip)")
	from := flag.String("from", "", "start from this tag of LAYOUT instead of an empty image")
	overlay := flag.Bool("overlay", false, "DIRs are overlayfs upper directories: convert their whiteouts")
	created := flag.String("created", "", "config creation time (RFC 3339)")
	lbl := labels{}
	flag.Var(lbl, "label", "config label key=value (repeatable)")
	flag.Parse()
	if flag.NArg() < 3 {
		fmt.Fprintln(os.Stderr, "usage: mkoci [-zstd] [-from TAG] [-overlay] [-created TIME] [-label k=v]... LAYOUT TAG DIR...")
		os.Exit(2)
	}
	o := options{zstd: *zstd, from: *from, overlay: *overlay, labels: lbl}
	if *created != "" {
		t, err := time.Parse(time.RFC3339, *created)
		if err != nil {
			fmt.Fprintln(os.Stderr, "mkoci: -created:", err)
			os.Exit(2)
		}
		o.created = t
	}
	if err := build(flag.Arg(0), flag.Arg(1), flag.Args()[2:], o); err != nil {
		fmt.Fprintln(os.Stderr, "mkoci:", err)
		os.Exit(1)
	}
}

// options are mkoci's flags.
type options struct {
	zstd, overlay bool
	from          string
	created       time.Time
	labels        labels
}

const refName = "org.opencontainers.image.ref.name"

func build(dir, tag string, layers []string, o options) error {
	img := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
	p, err := layout.FromPath(dir)
	if err != nil {
		if o.from != "" {
			return fmt.Errorf("-from %s: %w", o.from, err)
		}
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return err
		}
	}
	if o.from != "" {
		if img, err = tagged(p, o.from); err != nil {
			return err
		}
	}
	for _, l := range layers {
		buf, err := tarDir(l, o.overlay)
		if err != nil {
			return err
		}
		opts := []tarball.LayerOption{tarball.WithMediaType(types.OCILayer)}
		if o.zstd {
			opts = []tarball.LayerOption{tarball.WithMediaType(types.OCILayerZStd), tarball.WithCompression("zstd")}
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(buf)), nil
		}, opts...)
		if err != nil {
			return err
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if cf.Config.Labels == nil {
		cf.Config.Labels = map[string]string{}
	}
	for k, v := range o.labels {
		cf.Config.Labels[k] = v
	}
	if !o.created.IsZero() {
		cf.Created = v1.Time{Time: o.created}
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	return p.ReplaceImage(img, match.Annotation(refName, tag), layout.WithAnnotations(map[string]string{refName: tag}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
}

// tagged returns the image of LAYOUT whose ref.name annotation is tag.
func tagged(p layout.Path, tag string) (v1.Image, error) {
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range m.Manifests {
		if d.Annotations[refName] == tag {
			return p.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("-from %s: no such tag in %s", tag, p)
}

// tarDir writes the tree under root as an uncompressed tar in memory. With
// overlay, root is an overlayfs upper directory and its whiteouts become OCI
// whiteouts.
func tarDir(root string, overlay bool) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[[2]uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			rel = "./" // the root's own metadata, as image builders record it
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return err
		}
		h.Name = rel
		h.Format = tar.FormatPAX
		h.Uname, h.Gname = "", ""
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		st := fi.Sys().(*syscall.Stat_t)
		h.Uid, h.Gid = int(st.Uid), int(st.Gid)
		if overlay && fi.Mode()&fs.ModeCharDevice != 0 && st.Rdev == 0 {
			// An overlayfs whiteout: the lower file is deleted.
			return tw.WriteHeader(&tar.Header{Name: whiteout(rel, filepath.Base(rel)), Typeflag: tar.TypeReg,
				Mode: 0o644, ModTime: h.ModTime, Format: tar.FormatPAX})
		}
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := seen[key]; ok {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				seen[key] = rel
			}
		}
		if err := addXattrs(h, p); err != nil {
			return err
		}
		opaque := false
		if overlay {
			for k, v := range h.PAXRecords {
				if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && strings.HasPrefix(name, "trusted.overlay.") {
					opaque = opaque || (name == "trusted.overlay.opaque" && v == "y")
					delete(h.PAXRecords, k)
				}
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if opaque && fi.IsDir() {
			// An opaque directory hides everything below it in lower layers.
			name := ".wh..wh..opq"
			if rel != "./" {
				name = rel + "/" + name
			}
			if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644,
				ModTime: h.ModTime, Format: tar.FormatPAX}); err != nil {
				return err
			}
		}
		if h.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Close writes the end-of-archive blocks: only then is buf complete.
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// whiteout names the OCI whiteout of rel, whose base name is base.
func whiteout(rel, base string) string {
	if dir := filepath.Dir(rel); dir != "." {
		return dir + "/.wh." + base
	}
	return ".wh." + base
}

func addXattrs(h *tar.Header, p string) error {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return err
	}
	names := make([]byte, sz)
	if sz, err = unix.Llistxattr(p, names); err != nil {
		return err
	}
	for _, name := range strings.Split(strings.TrimRight(string(names[:sz]), "\x00"), "\x00") {
		vs, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return err
		}
		v := make([]byte, vs)
		if vs, err = unix.Lgetxattr(p, name, v); err != nil {
			return err
		}
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+name] = string(v[:vs])
	}
	return nil
}
