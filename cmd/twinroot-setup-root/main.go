// Command twinroot-setup-root runs in the initramfs and mounts the composefs
// root of the deployment named by the twinroot= kernel argument. It is built
// static and imports nothing but the standard library and golang.org/x/sys.
//
// Not yet implemented: the deploy issue brings it. Until then it exits 1.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "twinroot-setup-root: not implemented yet")
	os.Exit(1)
}
