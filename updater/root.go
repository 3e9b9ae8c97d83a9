package updater

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// rootSpec is the root= kernel argument naming the sysroot's file system:
// boot.root from the configuration, else UUID=/PARTUUID= of its block
// device (udev's /dev/disk/by-*), else the device path the mount table
// gives.
func (u *Updater) rootSpec() (string, error) {
	if r := u.o.Config.Boot.Root; r != "" {
		return r, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(u.o.Sysroot, &st); err != nil {
		return "", fmt.Errorf("updater: %s: %w", u.o.Sysroot, err)
	}
	for _, kind := range []string{"uuid", "partuuid"} {
		dir := "/dev/disk/by-" + kind
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			var ds unix.Stat_t
			if unix.Stat(filepath.Join(dir, e.Name()), &ds) == nil && ds.Mode&unix.S_IFMT == unix.S_IFBLK && ds.Rdev == st.Dev {
				return strings.ToUpper(kind) + "=" + e.Name(), nil
			}
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil {
		if src := mountSource(mi, unix.Major(st.Dev), unix.Minor(st.Dev)); src != "" {
			return src, nil
		}
	}
	return "", fmt.Errorf("updater: cannot name the file system of %s for root=; set boot.root in %s", u.o.Sysroot, DefaultConfigPath)
}
