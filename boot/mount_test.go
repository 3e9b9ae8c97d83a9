package boot

import "golang.org/x/sys/unix"

func unixMount(src, dst, fstype, data string) error { return unix.Mount(src, dst, fstype, 0, data) }
func unixUnmount(dir string) error                  { return unix.Unmount(dir, unix.MNT_DETACH) }
