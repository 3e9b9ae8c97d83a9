//go:build !linux

package vmtest

import "syscall"

// qemuSysProcAttr returns nil: only Linux can tie QEMU's life to ours.
func qemuSysProcAttr() *syscall.SysProcAttr { return nil }
