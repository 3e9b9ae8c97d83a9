// Command updatectl is twinroot's command-line tool: it installs, upgrades,
// switches and rolls back A/B deployments of bootc-style OS images, and
// manages the object store, its composefs images and pulls. It is installed
// as "twinroot", and as "updatectl" where systemd's own updatectl does not
// take that name (README.md, "Name clash").
//
// Exit codes:
//
//	0   success (upgrade --check: an update is available)
//	1   the operation failed (or, for a command given several operands, at
//	    least one of them failed; the others were still processed)
//	2   usage error: unknown verb or flag, wrong number of arguments
//	3   a check found problems (store fsck found inconsistencies)
//	4   the sysroot is locked by another run and --no-wait was given
//	5   not permitted: run as root
//	6   the sysroot is not initialised (no store or no deployment)
//	77  upgrade --check: no update available (rpm-ostree's convention)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, documented in the package comment and README.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitCheck   = 3
	exitLocked  = 4
	exitNotRoot = 5
	exitNoInit  = 6
	exitNoUpd   = 77
)

// exitError carries a specific exit code out of a command. A command whose
// error is already printed (e.g. per-operand failures) uses silent.
type exitError struct {
	code   int
	err    error
	silent bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// app holds what every verb shares: global flags and output streams.
type app struct {
	sysroot  string
	storeDir string
	bootDir  string
	config   string
	noWait   bool
	logLevel string
	stdout   io.Writer
	stderr   io.Writer
	log      *slog.Logger
	bars     *barProgress // the running verb's progress bars, if any
}

// store returns the object store root: --store, or SYSROOT/twinroot.
func (a *app) store() string {
	if a.storeDir != "" {
		return a.storeDir
	}
	return filepath.Join(a.sysroot, "twinroot")
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "updatectl",
		Short: "twinroot: image-based A/B operating-system updates",
		Long: `updatectl pulls bootc-style OS images into an fs-verity object store, builds composefs
images and manages A/B deployments: install, status, upgrade, switch, rollback, gc. It is
installed as "twinroot", and as "updatectl" where systemd's own updatectl is absent.

Exit codes: 0 success (upgrade --check: an update is available); 1 failure; 2 usage error;
3 a check found problems (fsck); 4 the sysroot is locked by another run (--no-wait);
5 permission denied (run as root); 6 the sysroot is not initialised; 77 upgrade --check:
no update available.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.sysroot == "" {
				a.sysroot = defaultSysroot()
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
				return &exitError{code: exitUsage, err: fmt.Errorf("--log-level: %w", err)}
			}
			hopts := &slog.HandlerOptions{Level: lvl}
			if os.Getenv("JOURNAL_STREAM") != "" {
				// The journal stamps every line itself: drop time= so
				// lines read as "level=WARN msg=...".
				hopts.ReplaceAttr = func(groups []string, at slog.Attr) slog.Attr {
					if len(groups) == 0 && at.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return at
				}
			}
			a.log = slog.New(slog.NewTextHandler(a.stderr, hopts))
			return nil
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.sysroot, "sysroot", "", "physical root of the system to operate on (default /sysroot on a booted twinroot system, else /)")
	pf.StringVar(&a.storeDir, "store", "", "object store directory (default SYSROOT/twinroot)")
	pf.StringVar(&a.bootDir, "boot", "", "boot partition directory (default: the mounted XBOOTLDR or ESP, found as bootctl does)")
	pf.StringVar(&a.config, "config", "", "configuration file (default SYSROOT/etc/twinroot/config.toml on a scratch sysroot, else /etc/twinroot/config.toml)")
	pf.BoolVar(&a.noWait, "no-wait", false, "fail at once (exit 4) when another run holds the sysroot lock, instead of waiting")
	pf.StringVar(&a.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.AddCommand(
		newVerityCmd(a),
		newImageCmd(a),
		newStoreCmd(a),
		newPullCmd(a),
	)
	addSystemCmds(root, a)
	root.AddCommand(newDocsCmd(root))
	return root
}

// defaultSysroot is /sysroot on a booted twinroot system (the physical
// root is mounted there), else /.
func defaultSysroot() string {
	if fi, err := os.Stat("/sysroot/twinroot"); err == nil && fi.IsDir() {
		return "/sysroot"
	}
	return "/"
}

// usageArgs wraps a cobra argument validator so that its failures exit 2.
func usageArgs(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := v(cmd, args); err != nil {
			return &exitError{code: exitUsage, err: err}
		}
		return nil
	}
}

// run executes updatectl with args and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, log: slog.New(slog.NewTextHandler(stderr, nil))}
	root := newRootCmd(a)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if !ee.silent {
			fmt.Fprintf(stderr, "updatectl: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "updatectl: %v\n", err)
	if isUsageError(err) {
		return exitUsage
	}
	return exitFailure
}

// isUsageError recognises cobra's own usage errors (unknown command).
func isUsageError(err error) bool {
	msg := err.Error()
	return len(msg) > 15 && msg[:15] == "unknown command"
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
