package boot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Reserve is the room InstallKernel keeps free beyond the files it copies:
// entry files, the set file, the directory entries and vfat's cluster
// rounding.
const Reserve = 1 << 20

type kernelFile struct {
	src    string // path in the image
	name   string // file name under twinroot/
	size   int64
	sum    string // sha256 hex
	exists bool
}

// InstallKernel copies k's kernel and initramfs from fsys onto the partition,
// each under twinroot/ named by the SHA-256 of its content, unless a file of
// that name and size is already there. Before copying it checks the free
// space: when the files do not fit (with Reserve to spare) it fails with
// ErrNoSpace naming the partition and the bytes needed, and writes nothing.
// Each file is written under a temporary name, fsynced and renamed, and
// twinroot/ is fsynced before InstallKernel returns, so an entry written
// afterwards never names an incomplete file.
func (p *Partition) InstallKernel(ctx context.Context, fsys fs.FS, k Kernel) (Installed, error) {
	if k.Linux == "" || k.Initrd == "" {
		return Installed{}, fmt.Errorf("%w: kernel %q without linux or initrd path", ErrBadDeployment, k.Version)
	}
	unlock, err := p.lock(ctx)
	if err != nil {
		return Installed{}, err
	}
	defer unlock()

	dir := filepath.Join(p.dir, kernelDir)
	files := []*kernelFile{{src: k.Linux}, {src: k.Initrd}}
	for i, f := range files {
		sum, size, err := hashFile(ctx, fsys, f.src)
		if err != nil {
			if i == 0 && errors.Is(err, fs.ErrNotExist) {
				return Installed{}, fmt.Errorf("%w: /%s: %w", ErrNoKernel, f.src, err)
			}
			if errors.Is(err, fs.ErrNotExist) {
				return Installed{}, fmt.Errorf("%w: /%s: %w", ErrNoInitramfs, f.src, err)
			}
			return Installed{}, err
		}
		f.sum, f.size = sum, size
		if i == 0 {
			f.name = "vmlinuz-" + sum
		} else {
			f.name = "initramfs-" + sum + ".img"
		}
		if fi, err := os.Stat(filepath.Join(dir, f.name)); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
			f.exists = true
		}
	}
	var need uint64
	var missing []string
	for _, f := range files {
		if !f.exists {
			need += uint64(f.size)
			missing = append(missing, "/"+f.src)
		}
	}
	inst := Installed{
		Version: k.Version,
		Linux:   "/" + kernelDir + "/" + files[0].name,
		Initrd:  "/" + kernelDir + "/" + files[1].name,
	}
	if need == 0 {
		p.log.Debug("boot: kernel already installed", "kernel", k.Version, "linux", inst.Linux)
		return inst, nil
	}
	free, err := freeBytes(p.dir)
	if err != nil {
		return Installed{}, err
	}
	if free < need+Reserve {
		return Installed{}, fmt.Errorf("%w %s: need %d bytes for %s (plus %d spare), %d available",
			ErrNoSpace, p.dir, need, strings.Join(missing, " and "), Reserve, free)
	}
	if err := mkdirSync(dir); err != nil {
		return Installed{}, err
	}
	for _, f := range files {
		if f.exists {
			continue
		}
		if err := copyVerified(ctx, fsys, f, dir); err != nil {
			return Installed{}, err
		}
	}
	if err := syncDir(dir); err != nil {
		return Installed{}, err
	}
	p.log.Info("boot: installed kernel", "kernel", k.Version, "linux", inst.Linux, "initrd", inst.Initrd, "bytes", need)
	return inst, nil
}

func hashFile(ctx context.Context, fsys fs.FS, name string) (string, int64, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return "", 0, fmt.Errorf("boot: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, ctxReader{ctx, f})
	if err != nil {
		return "", 0, fmt.Errorf("boot: reading /%s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// copyVerified copies f.src to dir/f.name, checking the content is still the
// one hashed before.
func copyVerified(ctx context.Context, fsys fs.FS, f *kernelFile, dir string) error {
	src, err := fsys.Open(f.src)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer src.Close()
	h := sha256.New()
	tmp, n, err := writeTemp(ctx, dir, f.name, src, h)
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.sum || n != f.size {
		os.Remove(tmp)
		return fmt.Errorf("boot: /%s changed while it was copied (sha256 %s, %d bytes; was %s, %d)", f.src, got, n, f.sum, f.size)
	}
	if err := rename(tmp, filepath.Join(dir, f.name)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// GC removes the kernels and initramfs images under twinroot/ that no entry
// of the current or staged set names, and temporary files left by an
// interrupted copy. It returns the removed paths (relative to the
// partition).
func (p *Partition) GC(ctx context.Context) ([]string, error) {
	unlock, err := p.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return p.gcLocked()
}

func (p *Partition) gcLocked() ([]string, error) {
	used := map[string]bool{}
	for _, d := range []string{entriesName, stagedName} {
		s, err := readSet(filepath.Join(p.dir, loaderDir, d))
		if err != nil {
			return nil, err
		}
		for _, e := range s.entries {
			for _, k := range []string{"linux", "initrd"} {
				for _, v := range e.Entry.All(k) {
					used[path.Clean("/"+v)] = true
				}
			}
		}
	}
	dir := filepath.Join(p.dir, kernelDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	var removed []string
	for _, de := range ents {
		rel := "/" + kernelDir + "/" + de.Name()
		if used[rel] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
			return removed, fmt.Errorf("boot: %w", err)
		}
		removed = append(removed, rel)
	}
	if len(removed) > 0 {
		if err := syncDir(dir); err != nil {
			return removed, err
		}
		p.log.Info("boot: removed unused kernel files", "files", removed)
	}
	slices.Sort(removed)
	return removed, nil
}
