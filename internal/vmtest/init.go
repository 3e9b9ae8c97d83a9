package vmtest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Markers the guest init prints on the console.
const (
	markerStart = "TWINROOT-VMTEST-START"
	markerExit  = "TWINROOT-VMTEST-EXIT="
	markerSetup = "TWINROOT-VMTEST-SETUP-FAILED:"
)

// guestSpec is what the generated /init does, in guest terms.
type guestSpec struct {
	mounts  []mount
	env     []string
	dir     string
	command []string
	timeout time.Duration // for the command; it is killed after that
}

// mount is a disk the guest mounts at DiskDir(disk).
type mount struct {
	disk     int
	fstype   string
	readOnly bool
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// initScript returns the guest's /init, a busybox sh script.
func initScript(g guestSpec) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
export PATH=/bin
fail() { echo "` + markerSetup + ` $*"; sync; poweroff -f; exit 1; }
mount -t proc proc /proc || fail mount /proc
mount -t sysfs sysfs /sys || fail mount /sys
mount -t devtmpfs devtmpfs /dev || fail mount /dev
while read -r m; do
	insmod "/lib/modules/$m" || echo "vmtest: insmod $m failed"
done </lib/modules/load.list
`)
	for _, m := range g.mounts {
		dev, dir := DiskDevice(m.disk), DiskDir(m.disk)
		opts := "rw"
		if m.readOnly {
			opts = "ro"
		}
		fmt.Fprintf(&b, "mkdir -p %s && mount -t %s -o %s %s %s || fail mount %s\n",
			shellQuote(dir), shellQuote(m.fstype), opts, shellQuote(dev), shellQuote(dir), shellQuote(dev))
	}
	fmt.Fprintf(&b, "cd %s || fail cd %s\n", shellQuote(g.dir), shellQuote(g.dir))
	fmt.Fprintf(&b, "echo %s\n", markerStart)
	secs := int(g.timeout / time.Second)
	if secs < 1 {
		secs = 1
	}
	fmt.Fprintf(&b, "timeout -s KILL %d env -i", secs)
	for _, e := range g.env {
		b.WriteString(" " + shellQuote(e))
	}
	for _, a := range g.command {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString(" </dev/null\nrc=$?\nsync\n")
	fmt.Fprintf(&b, "echo \"%s$rc\"\n", markerExit)
	b.WriteString("poweroff -f\n")
	return b.String()
}

var (
	exitRe  = regexp.MustCompile(regexp.QuoteMeta(markerExit) + `(\d+)`)
	setupRe = regexp.MustCompile(regexp.QuoteMeta(markerSetup) + ` ?(.*)`)
)

// parseConsole finds the command's exit status in the console output.
// found is false when the guest never printed it; setupErr is the message
// when the guest's init failed before running the command.
func parseConsole(out string) (code int, found bool, setupErr string) {
	if m := setupRe.FindStringSubmatch(out); m != nil {
		return 0, false, strings.TrimSpace(m[1])
	}
	m := exitRe.FindStringSubmatch(out)
	if m == nil {
		return 0, false, ""
	}
	code, err := strconv.Atoi(m[1])
	if err != nil {
		return 0, false, ""
	}
	return code, true, ""
}

// testRunPattern returns the -test.run pattern that selects exactly the test
// (or subtest) with the given t.Name().
func testRunPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}
