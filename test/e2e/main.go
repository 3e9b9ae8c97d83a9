// Command e2e drives the end-to-end scenario of issue 12 in QEMU guests:
// OVMF, systemd-boot, Debian trixie's 6.12 kernel, twinroot-setup-root in the
// initramfs, systemd as PID 1 and updatectl inside the guest, against a real
// registry on the host's loopback. test/e2e/run.sh builds the images and
// disks, starts the registry and runs it; it prints a pass/fail table with
// timings.
//
// Usage: e2e -work DIR -port PORT -oci DIR -installer DISK -target DISK [flags]
//
//	e2e relay PORT FILE   (internal: QEMU's guestfwd command)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) == 4 && os.Args[1] == "relay" {
		port, err := strconv.Atoi(os.Args[2])
		if err == nil {
			err = relay(port, os.Args[3])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e relay:", err)
			os.Exit(1)
		}
		return
	}
	var c config
	flag.StringVar(&c.work, "work", "", "work directory (disks, logs)")
	flag.IntVar(&c.port, "port", 0, "the registry's port on 127.0.0.1")
	flag.StringVar(&c.oci, "oci", "", "the OCI layout build-images.sh made")
	flag.StringVar(&c.installer, "installer", "", "the installer disk: v1 on a plain ext4 root")
	flag.StringVar(&c.target, "target", "", "the empty GPT disk v1 is installed onto")
	flag.StringVar(&c.updatectl, "updatectl", "bin/updatectl", "the host's updatectl (to learn which verbs exist)")
	flag.StringVar(&c.accel, "accel", "tcg", "tcg or kvm")
	flag.Int64Var(&c.seed, "seed", 12, "seed of the power-cut points")
	flag.IntVar(&c.cuts, "cuts", 20, "number of power cuts in step 5")
	flag.StringVar(&c.steps, "steps", "all", "steps to run: all, or a list such as H,1,2,6")
	flag.BoolVar(&c.console, "console", false, "copy the guest consoles to stderr")
	flag.Parse()
	if c.work == "" || c.port == 0 || c.oci == "" || c.installer == "" || c.target == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := newRun(c)
	r.scenario(ctx)
	r.printTable(os.Stdout)
	if r.failed() {
		os.Exit(1)
	}
}

// config is the command line.
type config struct {
	work, oci, installer, target, updatectl, accel, steps string
	port, cuts                                            int
	seed                                                  int64
	console                                               bool
}

// want reports whether step s is selected.
func (c config) want(s string) bool {
	if c.steps == "all" {
		return true
	}
	for _, x := range strings.Split(c.steps, ",") {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}

// verbs returns the verbs the host's updatectl has (its --help command list).
func verbs(updatectl string) map[string]bool {
	out, _ := exec.Command(updatectl, "--help").CombinedOutput()
	v := map[string]bool{}
	in := false
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Available Commands:") {
			in = true
			continue
		}
		if in {
			f := strings.Fields(l)
			if len(f) == 0 {
				in = false
				continue
			}
			v[f[0]] = true
		}
	}
	return v
}

// skopeoTag points tag of e2e/os at the image tagged from (both in the host
// registry); only the manifest moves.
func skopeoTag(ctx context.Context, port int, from, tag string) error {
	ref := func(t string) string { return fmt.Sprintf("docker://127.0.0.1:%d/e2e/os:%s", port, t) }
	out, err := exec.CommandContext(ctx, "skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
		ref(from), ref(tag)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("skopeo copy %s → %s: %w: %s", from, tag, err, out)
	}
	return nil
}

// secs formats a duration as seconds with one decimal.
func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }
