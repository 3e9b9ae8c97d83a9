// Command twinroot-setup-root runs in the initramfs, after the physical
// root file system is mounted, and replaces it with the composefs root of
// the deployment named by the twinroot=<deployment id>:<image digest>
// kernel argument: the image's EROFS and an overlayfs with the image's
// directory as data-only layer (verity=require by default), the
// deployment's own /etc, the persistent /var, and the physical root at
// /sysroot inside it. The initramfs's switch-root then starts the system
// from it. See docs/architecture.md, "setup-root", and dist/ for the
// dracut module and the initramfs-tools scripts that run it.
//
// Usage:
//
//	twinroot-setup-root [--sysroot DIR] [--target DIR] [--cmdline FILE]
//	    [--config FILE] [--run-dir DIR] [--kmsg=false] [--verbose]
//
// It is built static and imports only the repository's erofs, verity
// and internal/bootarg packages, the standard library, golang.org/x/sys
// and, through erofs, golang.org/x/sync/errgroup (TestDeps keeps that
// list).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/twinroot/twinroot/internal/bootarg"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

// Defaults of the flags.
const (
	DefaultCmdline = "/proc/cmdline"
	DefaultConfig  = "/etc/twinroot/setup-root.conf"
	DefaultSysroot = "/sysroot"
	DefaultRunDir  = "/run"
	kmsgPath       = "/dev/kmsg"
)

func main() {
	start := time.Now()
	os.Exit(run(context.Background(), start, os.Args[1:], os.Stderr))
}

// run is the command: it parses args, sets up logging and calls
// setupRoot. It returns the exit status: 0 when the new root is in place,
// 1 when it is not (with everything it mounted undone), 2 for bad usage.
func run(ctx context.Context, start time.Time, args []string, stderr io.Writer) int {
	fl := flag.NewFlagSet(prog, flag.ContinueOnError)
	fl.SetOutput(stderr)
	cmdlineFile := fl.String("cmdline", DefaultCmdline, "`file` holding the kernel command line")
	configFile := fl.String("config", DefaultConfig, "configuration `file` (absent: defaults)")
	sysroot := fl.String("sysroot", DefaultSysroot, "`dir` where the physical root is mounted")
	target := fl.String("target", "", "`dir` to put the new root at (default: the sysroot, replacing its mount)")
	runDir := fl.String("run-dir", DefaultRunDir, "`dir` for the private staging mount (a tmpfs)")
	kmsg := fl.Bool("kmsg", true, "also log to "+kmsgPath+" when it exists")
	verbose := fl.Bool("verbose", false, "log debug messages")
	showVersion := fl.Bool("version", false, "print the version and exit")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\n", prog, fl.Args())
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stderr, prog, version)
		return 0
	}
	if *target == "" {
		*target = *sysroot
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	sinks := []sink{{w: stderr}}
	if *kmsg {
		if k, err := os.OpenFile(kmsgPath, os.O_WRONLY, 0); err == nil {
			defer k.Close()
			sinks = append(sinks, sink{w: k, kmsg: true})
		}
	}
	log := newLogger(start, level, sinks...)

	if err := setup(ctx, log, *cmdlineFile, *configFile, Paths{Sysroot: *sysroot, Target: *target, RunDir: *runDir}); err != nil {
		log.Error(err.Error())
		log.Error("the composefs root is NOT mounted; the boot cannot continue into the deployment")
		return 1
	}
	return 0
}

// setup reads the command line and the configuration and runs setupRoot.
func setup(ctx context.Context, log *slog.Logger, cmdlineFile, configFile string, p Paths) error {
	b, err := os.ReadFile(cmdlineFile)
	if err != nil {
		return fmt.Errorf("reading the kernel command line: %w", err)
	}
	cmdline := string(b)
	arg, err := bootarg.Parse(cmdline)
	if err != nil {
		return err
	}
	var fc FileConfig
	switch b, err := os.ReadFile(configFile); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("%w: %w", ErrConfig, err)
	default:
		if fc, err = ParseConfig(b); err != nil {
			return fmt.Errorf("%s: %w", configFile, err)
		}
	}
	policy, err := EffectivePolicy(fc, cmdline)
	if err != nil {
		return err
	}
	log.Info("starting", "version", version, "deployment", arg.ID, "image", arg.Image.Hex(),
		"sysroot", p.Sysroot, "target", p.Target, "policy", policy.String())
	return setupRoot(ctx, kernel{}, p, arg, policy, log)
}
