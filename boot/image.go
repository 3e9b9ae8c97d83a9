package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"runtime"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// Kernel is a kernel and its initramfs inside an image (fs.FS paths, no
// leading slash).
type Kernel struct {
	Version string // the directory name under usr/lib/modules
	Linux   string // usr/lib/modules/<kver>/vmlinuz
	Initrd  string // usr/lib/modules/<kver>/initramfs.img
}

const modulesDir = "usr/lib/modules"

// FindKernel finds the kernel of an image, bootc's convention:
// /usr/lib/modules/<kver>/vmlinuz with initramfs.img next to it. With several
// kernel versions the highest one (version order) is taken. Errors wrap
// ErrNoKernel or ErrNoInitramfs and name the path looked for.
func FindKernel(fsys fs.FS) (Kernel, error) {
	ents, err := fs.ReadDir(fsys, modulesDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Kernel{}, fmt.Errorf("boot: reading /%s: %w", modulesDir, err)
	}
	var versions []string
	for _, e := range ents {
		p := path.Join(modulesDir, e.Name(), "vmlinuz")
		if fi, err := fs.Stat(fsys, p); err == nil && fi.Mode().IsRegular() {
			versions = append(versions, e.Name())
		}
	}
	if len(versions) == 0 {
		return Kernel{}, fmt.Errorf("%w: no /%s/<kver>/vmlinuz", ErrNoKernel, modulesDir)
	}
	slices.SortFunc(versions, versionCompare)
	kver := versions[len(versions)-1]
	k := Kernel{
		Version: kver,
		Linux:   path.Join(modulesDir, kver, "vmlinuz"),
		Initrd:  path.Join(modulesDir, kver, "initramfs.img"),
	}
	if fi, err := fs.Stat(fsys, k.Initrd); err != nil || !fi.Mode().IsRegular() {
		return Kernel{}, fmt.Errorf("%w: no /%s for kernel %s", ErrNoInitramfs, k.Initrd, kver)
	}
	return k, nil
}

const kargsDir = "usr/lib/bootc/kargs.d"

// kargsFile is bootc's kargs.d format.
type kargsFile struct {
	Kargs              *[]string `toml:"kargs"`
	MatchArchitectures []string  `toml:"match-architectures"`
}

// Arch returns this machine's architecture in the spelling bootc's
// match-architectures uses (Rust's std::env::consts::ARCH).
func Arch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "x86"
	case "ppc64le", "ppc64":
		return "powerpc64"
	case "loong64":
		return "loongarch64"
	}
	return runtime.GOARCH
}

// ImageKargs returns the image's own kernel arguments: the kargs lists of
// /usr/lib/bootc/kargs.d/*.toml in file name order, skipping files whose
// match-architectures does not name arch (see Arch). Errors wrap ErrKargs
// and name the file.
func ImageKargs(fsys fs.FS, arch string) ([]string, error) {
	ents, err := fs.ReadDir(fsys, kargsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("boot: reading /%s: %w", kargsDir, err)
	}
	var out []string
	for _, e := range ents { // ReadDir sorts by name
		if !strings.HasSuffix(e.Name(), ".toml") || e.IsDir() {
			continue
		}
		p := path.Join(kargsDir, e.Name())
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("%w /%s: %w", ErrKargs, p, err)
		}
		kargs, err := ParseKargs(data, arch)
		if err != nil {
			return nil, fmt.Errorf("%w /%s: %w", ErrKargs, p, err)
		}
		out = append(out, kargs...)
	}
	return out, nil
}

// ParseKargs parses one kargs.d file and returns its arguments, or none when
// its match-architectures does not name arch. Unknown keys are errors, as
// in bootc.
func ParseKargs(data []byte, arch string) ([]string, error) {
	var f kargsFile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("unknown key %q", und[0].String())
	}
	if f.Kargs == nil {
		return nil, errors.New("no kargs key")
	}
	for _, k := range *f.Kargs {
		if k == "" || strings.ContainsAny(k, "\n\x00") {
			return nil, fmt.Errorf("bad kernel argument %q", k)
		}
	}
	if f.MatchArchitectures != nil && !slices.Contains(f.MatchArchitectures, arch) {
		return nil, nil
	}
	return *f.Kargs, nil
}

// ReadOSRelease reads the image's /usr/lib/os-release, else /etc/os-release.
// An image with neither gives an empty map.
func ReadOSRelease(fsys fs.FS) (map[string]string, error) {
	for _, p := range []string{"usr/lib/os-release", "etc/os-release"} {
		data, err := fs.ReadFile(fsys, p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("boot: reading /%s: %w", p, err)
		}
		return ParseOSRelease(data), nil
	}
	return map[string]string{}, nil
}

// ParseOSRelease parses os-release(5): KEY=value lines, values optionally in
// single or double quotes with backslash escapes in double quotes. Lines that
// do not parse are skipped, as the format asks.
func ParseOSRelease(data []byte) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\"'") {
			continue
		}
		val, ok := unquote(v)
		if !ok {
			continue
		}
		out[k] = val
	}
	return out
}

func unquote(v string) (string, bool) {
	if v == "" {
		return "", true
	}
	switch v[0] {
	case '\'':
		if len(v) < 2 || v[len(v)-1] != '\'' {
			return "", false
		}
		return v[1 : len(v)-1], true
	case '"':
		if len(v) < 2 || v[len(v)-1] != '"' {
			return "", false
		}
		var b strings.Builder
		in := v[1 : len(v)-1]
		for i := 0; i < len(in); i++ {
			c := in[i]
			if c == '\\' && i+1 < len(in) {
				i++
				c = in[i]
			}
			b.WriteByte(c)
		}
		return b.String(), true
	}
	if strings.ContainsAny(v, " \t\"'`$") {
		return "", false
	}
	return v, true
}
