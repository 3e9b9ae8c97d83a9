package deploy

import (
	"strings"
	"testing"
)

// FuzzParseOSRelease: any input parses without panicking, and every key
// it returns is a non-empty name without quotes or blanks.
func FuzzParseOSRelease(f *testing.F) {
	f.Add([]byte("NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\n"))
	f.Add([]byte("# comment\nID=fedora\nPRETTY_NAME='Fedora \\\"x\\\"'\n=\nA=\"\\"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for k := range ParseOSRelease(b) {
			if k == "" || strings.ContainsAny(k, " \t\"'=\n") {
				t.Fatalf("bad key %q", k)
			}
		}
	})
}

// FuzzMountsUnder: any mountinfo text is scanned without panicking, and
// unescaping never grows a string.
func FuzzMountsUnder(f *testing.F) {
	f.Add([]byte("40 22 253:1 /twinroot/deployments/abc.0/etc /etc rw - ext4 /dev/vda1 rw\n"), "/deployments/abc.0/etc")
	f.Add([]byte("1 2 3:4 /a\\040b\\ /x\n"), "/a b")
	f.Fuzz(func(t *testing.T, table []byte, suffix string) {
		mountsUnder(table, []string{suffix})
		for _, fld := range strings.Fields(string(table)) {
			if u := unescapeMountinfo(fld); len(u) > len(fld) {
				t.Fatalf("unescape grew %q to %q", fld, u)
			}
		}
	})
}
