package boot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf16"
)

// LoaderGUID is the vendor GUID of systemd-boot's EFI variables.
const LoaderGUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// BootCountVar is the efivarfs file name of LoaderBootCountPath, which
// systemd-boot sets to the (renamed) entry file it booted when that entry
// has a boot counter.
const BootCountVar = "LoaderBootCountPath-" + LoaderGUID

// ParseEFIString decodes an efivarfs file holding a string variable: a
// 4-byte attribute header, then UTF-16LE, NUL-terminated or not.
func ParseEFIString(data []byte) (string, error) {
	if len(data) < 4 || (len(data)-4)%2 != 0 {
		return "", fmt.Errorf("%w: EFI variable of %d bytes", ErrSyntax, len(data))
	}
	u := make([]uint16, 0, (len(data)-4)/2)
	for i := 4; i+1 < len(data); i += 2 {
		c := binary.LittleEndian.Uint16(data[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u)), nil
}

// BootedEntryFile returns the file name, in loader/entries, of the entry
// systemd-boot booted with a boot counter, from LoaderBootCountPath in
// efivarsDir. ErrNotBooted when the variable is absent (no counting this
// boot) or names something else than a type #1 entry.
func BootedEntryFile(efivarsDir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(efivarsDir, BootCountVar))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: no %s in %s", ErrNotBooted, BootCountVar, efivarsDir)
	}
	if err != nil {
		return "", fmt.Errorf("boot: %w", err)
	}
	s, err := ParseEFIString(data)
	if err != nil {
		return "", fmt.Errorf("boot: %s: %w", BootCountVar, err)
	}
	p := strings.ReplaceAll(s, "\\", "/")
	name, ok := strings.CutPrefix(p, "/loader/entries/")
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("%w: %s is %q, not a loader/entries file", ErrNotBooted, BootCountVar, s)
	}
	return name, nil
}

// Bless marks the booted entry good, as systemd-bless-boot does: the entry
// named by LoaderBootCountPath is renamed without its counter and
// loader/entries is fsynced. An entry already blessed is success. A staged
// set picks the blessing up when it is committed (CommitStaged rebuilds its
// names from the current ones).
func (p *Partition) Bless(ctx context.Context) error {
	file, err := BootedEntryFile(p.efivars())
	if err != nil {
		return err
	}
	n, err := ParseEntryName(file)
	if err != nil {
		return err
	}
	unlock, err := p.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	dir := filepath.Join(p.dir, loaderDir, entriesName)
	good := EntryName{Base: n.Base}
	if _, err := os.Stat(filepath.Join(dir, good.String())); err == nil {
		p.log.Info("boot: booted entry already blessed", "entry", good.String())
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
		return fmt.Errorf("%w: %s names %s, which is not in %s", ErrNotBooted, BootCountVar, file, dir)
	}
	if err := rename(filepath.Join(dir, file), filepath.Join(dir, good.String())); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	p.log.Info("boot: blessed the booted entry", "from", file, "to", good.String())
	return nil
}

func (p *Partition) efivars() string {
	if p.opts.EFIVarsDir != "" {
		return p.opts.EFIVarsDir
	}
	return DefaultEFIVarsDir
}

// HasSystemdBlessBoot reports whether an image ships systemd-bless-boot
// (then its systemd-bless-boot.service blesses good boots and Bless is not
// needed).
func HasSystemdBlessBoot(fsys fs.FS) bool {
	for _, p := range []string{"usr/lib/systemd/systemd-bless-boot", "lib/systemd/systemd-bless-boot"} {
		if fi, err := fs.Stat(fsys, p); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return false
}
