package updater

import (
	"strings"
	"testing"
)

func TestParseBooted(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	other := strings.Repeat("cd", 32)
	overlayRoot := "25 1 0:30 / / ro,relatime shared:1 - overlay overlay ro,lowerdir+=/run/twinroot/erofs,datadir+=/sysroot/twinroot/images/" + hex + ",metacopy=on\n"
	ext4Root := "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
	tests := []struct {
		name          string
		cmdline       string
		mountinfo     string
		found, mounts bool
		id            string
		err           bool
	}{
		{"not twinroot", "root=/dev/sda1 quiet", ext4Root, false, false, "", false},
		{"booted, mounted", "quiet twinroot=abababababab.0:" + hex + " rw", ext4Root + overlayRoot, true, true, "abababababab.0", false},
		{"booted, root elsewhere", "twinroot=abababababab.0:" + hex, ext4Root, true, false, "abababababab.0", false},
		{"other image at /", "twinroot=abababababab.0:" + hex, strings.ReplaceAll(overlayRoot, hex, other), true, false, "abababababab.0", false},
		{"last twinroot= wins", "twinroot=x.0:" + other + " twinroot=abababababab.1:" + hex, overlayRoot, true, true, "abababababab.1", false},
		{"malformed", "twinroot=nope", "", false, false, "", true},
		{"erofs root", "twinroot=abababababab.0:" + hex, "30 1 7:0 / / ro - erofs /sysroot/twinroot/images/" + hex + "/image.cfs ro\n", true, true, "abababababab.0", false},
		{"short line ignored", "twinroot=abababababab.0:" + hex, "1 2 3\n", true, false, "abababababab.0", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := parseBooted(tc.cmdline, []byte(tc.mountinfo))
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if b.Found != tc.found || b.Mounted != tc.mounts || b.Arg.ID != tc.id {
				t.Errorf("got %+v, want found %v mounted %v id %q", b, tc.found, tc.mounts, tc.id)
			}
		})
	}
}

func TestMountSource(t *testing.T) {
	mi := "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n23 22 0:5 / /tmp rw - tmpfs tmpfs rw\n"
	if got := mountSource([]byte(mi), 8, 1); got != "/dev/sda1" {
		t.Errorf("8:1 = %q", got)
	}
	if got := mountSource([]byte(mi), 0, 5); got != "" {
		t.Errorf("tmpfs = %q, want none", got)
	}
	if got := mountSource([]byte(mi), 9, 9); got != "" {
		t.Errorf("unknown = %q", got)
	}
}
