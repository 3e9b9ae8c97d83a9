package vmtest

import "syscall"

// qemuSysProcAttr makes the kernel kill QEMU when the test process dies (a
// go test -timeout panic, say), so no guest outlives its test.
func qemuSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
