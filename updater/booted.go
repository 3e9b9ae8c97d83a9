package updater

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/twinroot/twinroot/internal/bootarg"
)

// bootedArg is what the kernel command line says is running: the
// twinroot=<id>:<digest> argument, and whether the mount table agrees (the
// root file system is a mount that names the image digest).
type bootedArg struct {
	Arg     bootarg.Arg
	Found   bool // the command line has a twinroot= argument
	Mounted bool // "/" is mounted from that image (overlay or erofs naming its digest)
}

// parseBooted reads the command line and, when mountinfo is not nil,
// /proc/self/mountinfo. A malformed twinroot= argument is an error; none at
// all means the system was not booted from twinroot (a scratch sysroot, an
// installer).
func parseBooted(cmdline string, mountinfo []byte) (bootedArg, error) {
	a, err := bootarg.Parse(cmdline)
	if errors.Is(err, bootarg.ErrMissing) {
		return bootedArg{}, nil
	}
	if err != nil {
		return bootedArg{}, err
	}
	b := bootedArg{Arg: a, Found: true}
	if mountinfo != nil {
		b.Mounted = rootMountNames(mountinfo, a.Image.Hex())
	}
	return b, nil
}

// rootMountNames reports whether the mount at "/" in a mountinfo table is
// an overlay or erofs mount whose source or options contain hex (the
// image directory images/<hex> as overlay datadir, or image.cfs's path).
// The last mount at "/" is the visible one.
func rootMountNames(mountinfo []byte, hex string) bool {
	found := false
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superopts
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[4] != "/" {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(f)+1 || sep+2 >= len(f) {
			continue
		}
		fstype, rest := f[sep+1], strings.Join(f[sep+2:], " ")
		found = (fstype == "overlay" || fstype == "erofs") && strings.Contains(rest, hex)
	}
	return found
}

// mountSource returns the mount source of the first mount of device
// major:minor in a mountinfo table, when it is a device path ("" else).
func mountSource(mountinfo []byte, major, minor uint32) string {
	want := fmt.Sprintf("%d:%d", major, minor)
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[2] != want {
			continue
		}
		for i := 6; i+2 < len(f); i++ {
			if f[i] == "-" {
				if strings.HasPrefix(f[i+2], "/dev/") {
					return f[i+2]
				}
				return ""
			}
		}
	}
	return ""
}
