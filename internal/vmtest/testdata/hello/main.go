// Command hello is a static binary the vmtest self-test builds with
// BuildBinary and runs in the guest.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("hello from %s, args %q\n", os.Getenv("TWINROOT_VMTEST_GUEST"), os.Args[1:])
	os.Exit(3)
}
