package boot

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func isVfat(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == msdosSuperMagic
}

// deviceOf returns "MAJOR:MINOR" of the file system holding dir.
func deviceOf(dir string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)), nil
}
