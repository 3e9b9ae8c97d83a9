package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	twsync "github.com/twinroot/twinroot/sync"
	"github.com/twinroot/twinroot/updater"
)

// cmdlineEnv names a file holding the kernel command line that decides
// what counts as booted: the test hook of status and every verb. Set, the
// mount table is not consulted.
const cmdlineEnv = "TWINROOT_CMDLINE"

// bootIDEnv replaces /proc/sys/kernel/random/boot_id: the test hook for a
// reboot (a crash) between upgrade and finalize.
const bootIDEnv = "TWINROOT_BOOT_ID"

// efivarsEnv names a directory to read EFI variables from instead of
// efivarfs (bless on a scratch boot directory: tests).
const efivarsEnv = "TWINROOT_EFIVARS"

// noRebootEnv=1 makes --apply do everything but the reboot (tests).
const noRebootEnv = "TWINROOT_TEST_NO_REBOOT"

// pullFlags are the registry flags of the verbs that fetch.
type pullFlags struct {
	tlsVerify bool
	authFiles []string
	regConf   string
	platform  string
	retries   int
	sig       sigFlags
	flags     *pflag.FlagSet
}

func (p *pullFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&p.tlsVerify, "tls-verify", true, "verify TLS and refuse plain HTTP for the registry the reference names")
	f.StringArrayVar(&p.authFiles, "authfile", nil, "containers-auth.json file to read credentials from first (repeatable)")
	f.StringVar(&p.regConf, "registries-conf", "", `registries.conf to use ("-" for none)`)
	f.StringVar(&p.platform, "platform", "", "OS/ARCH[/VARIANT] to select from an image index (default: this machine)")
	f.IntVar(&p.retries, "retry-times", 4, "how often a failed registry request is tried again (waits 1 s, doubled each time)")
	p.sig.register(f)
	p.flags = f
}

func (p *pullFlags) options() []twsync.Option {
	opts := []twsync.Option{
		twsync.WithTLSVerify(p.tlsVerify), twsync.WithAuthFiles(p.authFiles...),
		twsync.WithRegistriesConf(p.regConf), twsync.WithPlatform(p.platform),
		twsync.WithRetry(p.retries, time.Second),
		twsync.WithPolicy(p.sig.policy), twsync.WithRegistriesD(p.sig.registriesD),
	}
	if p.flags != nil && p.flags.Changed("enforce-container-sigpolicy") { // else config.toml's [update] enforce-container-sigpolicy
		opts = append(opts, twsync.WithEnforceSignaturePolicy(p.sig.enforce))
	}
	return opts
}

// options builds the updater options from the global flags.
func (a *app) options(asJSON bool, pf *pullFlags) (updater.Options, error) {
	o := updater.Options{
		Sysroot: a.sysroot, Store: a.storeDir, Boot: a.bootDir, Log: a.log,
		Lock: updater.LockOptions{NoWait: a.noWait},
	}
	// A boot directory given for a scratch sysroot is a scratch directory
	// too; on the real system (sysroot / or /sysroot) it must be a mount.
	o.AllowUnmountedBoot = a.bootDir != "" && a.sysroot != "/" && a.sysroot != "/sysroot"
	cfgPath := a.config
	if cfgPath == "" {
		cfgPath = updater.DefaultConfigPath
		if o.AllowUnmountedBoot {
			cfgPath = filepath.Join(a.sysroot, "etc", "twinroot", "config.toml")
		}
	}
	cfg, err := updater.LoadConfig(cfgPath)
	if err != nil {
		return o, err
	}
	o.Config = cfg
	if p := os.Getenv(cmdlineEnv); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return o, fmt.Errorf("$%s: %w", cmdlineEnv, err)
		}
		s := string(b)
		o.Cmdline = &s
	}
	o.BootID = os.Getenv(bootIDEnv)
	o.EFIVars = os.Getenv(efivarsEnv)
	if pf != nil {
		o.Pull = pf.options()
	}
	o.Lock.Waiting = func(h updater.Holder) {
		fmt.Fprintf(a.stderr, "waiting for the sysroot lock, held by %s (--no-wait fails at once instead)\n", h)
	}
	o.Progress = a.progress(asJSON)
	return o, nil
}

// exitFor maps updater errors to exit codes.
func exitFor(err error) error {
	code := exitFailure
	switch {
	case errors.Is(err, updater.ErrLocked):
		code = exitLocked
	case errors.Is(err, updater.ErrNotRoot):
		code = exitNotRoot
	case errors.Is(err, updater.ErrNotInitialised):
		code = exitNoInit
	}
	return &exitError{code: code, err: err}
}

func addSystemCmds(root *cobra.Command, a *app) {
	root.AddCommand(
		newStatusCmd(a), newUpgradeCmd(a), newSwitchCmd(a), newRollbackCmd(a),
		newFinalizeCmd(a), newGCCmd(a), newInstallCmd(a), newBlessCmd(a), newFsckCmd(a),
		newPinCmd(a, true), newPinCmd(a, false),
	)
}

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the booted, staged and rollback deployments",
		Long: `Status shows the deployment that is running (from the kernel command line's
twinroot= argument and the mount table), the one staged for the next boot, the rollback
deployment, and the store's usage. --json prints a Host document (apiVersion
org.twinroot/v1; schema: docs/updatectl.schema.json).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(true, nil)
			if err != nil {
				return exitFor(err)
			}
			o.Progress = nil
			h, err := updater.Status(cmd.Context(), o)
			if err != nil {
				return exitFor(err)
			}
			if asJSON {
				return writeJSONIndent(a.stdout, h)
			}
			printHost(a.stdout, h)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON (a Host document)")
	return cmd
}

func newUpgradeCmd(a *app) *cobra.Command {
	var (
		check, downloadOnly, apply, asJSON, allowDowngrade, auto bool
		kargs                                                    []string
		pf                                                       pullFlags
	)
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Download and stage the newest image of the origin",
		Long: `Upgrade resolves the origin (update.origin in config.toml, else the staged deployment's
image reference, else the booted one's), and when its manifest is neither booted, staged
nor the default, pulls it, deploys it with /etc merged from the booted deployment and
stages a boot entry set with it first and the booted deployment as fallback. The switch
happens at shutdown (twinroot-finalize.service, or 'updatectl finalize'); --apply
finalizes at once and reboots.

--check only asks the registry (manifest and config, no layer): exit 0 when an update is
available, 77 when the system is up to date or when upgrade would refuse what the origin
names (an older version, or one below the signed floor; the reason is printed). --auto is the service's mode: what
update.auto-apply says (none: check, stage, apply), exit 0 when up to date.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(asJSON, &pf)
			if err != nil {
				return exitFor(err)
			}
			ctx := cmd.Context()
			if auto {
				// The service: update.auto-apply decides.
				switch o.Config.Update.AutoApply {
				case updater.PolicyNone:
					check = true
				case updater.PolicyApply:
					apply = true
				}
			}
			if check {
				r, err := updater.Check(ctx, o, updater.CheckOptions{AllowDowngrade: allowDowngrade})
				if err != nil {
					return exitFor(err)
				}
				if asJSON {
					if err := writeJSONLine(a.stdout, r); err != nil {
						return err
					}
				} else {
					fmt.Fprintln(a.stdout, checkLine(r))
				}
				a.notify("STATUS=" + checkLine(r))
				if !r.Available && !auto {
					return &exitError{code: exitNoUpd, err: errors.New("no update available"), silent: true}
				}
				return nil
			}
			res, err := updater.Upgrade(ctx, o, updater.UpgradeOptions{DownloadOnly: downloadOnly, Apply: apply, Kargs: kargs, AllowDowngrade: allowDowngrade})
			return a.finish(ctx, res, err, asJSON, apply)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&check, "check", false, "only check whether an update is available (exit 0: yes, 77: no)")
	f.BoolVar(&auto, "auto", false, "do what update.auto-apply in config.toml says (none: check, stage, apply); the service's mode, exit 0 when up to date")
	f.BoolVar(&downloadOnly, "download-only", false, "pull the image but do not deploy or stage it")
	f.BoolVar(&allowDowngrade, "allow-downgrade", false, "install an image older than the booted one (never below a signed io.twinroot.min-version floor; rollback returns to an installed deployment)")
	f.BoolVar(&apply, "apply", false, "finalize at once and reboot (logind, else systemctl reboot)")
	f.BoolVar(&asJSON, "json", false, "print progress events and the result as JSON lines")
	f.StringArrayVar(&kargs, "karg", nil, "extra kernel argument for the new deployment (repeatable)")
	pf.add(cmd)
	return cmd
}

func newSwitchCmd(a *app) *cobra.Command {
	var (
		apply, asJSON bool
		kargs         []string
		pf            pullFlags
	)
	cmd := &cobra.Command{
		Use:   "switch REF",
		Short: "Stage a deployment of another image and follow it from now on",
		Long: `Switch is upgrade with a new origin: REF is a registry reference
(host/repo:tag, docker://...), an OCI layout directory (oci:DIR[:tag]) or an OCI archive
(oci-archive:FILE[:tag]) for machines without a registry. Later upgrades follow REF.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(asJSON, &pf)
			if err != nil {
				return exitFor(err)
			}
			res, err := updater.Switch(cmd.Context(), o, args[0], updater.UpgradeOptions{Apply: apply, Kargs: kargs})
			return a.finish(cmd.Context(), res, err, asJSON, apply)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&apply, "apply", false, "finalize at once and reboot (logind, else systemctl reboot)")
	f.BoolVar(&asJSON, "json", false, "print progress events and the result as JSON lines")
	f.StringArrayVar(&kargs, "karg", nil, "extra kernel argument for the new deployment (repeatable)")
	pf.add(cmd)
	return cmd
}

func newRollbackCmd(a *app) *cobra.Command {
	var apply, asJSON bool
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Boot the rollback deployment next (run twice: back again)",
		Long: `Rollback makes the fallback entry the default and the default the fallback, so
running it twice toggles back. A staged update is discarded.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(asJSON, nil)
			if err != nil {
				return exitFor(err)
			}
			res, err := updater.Rollback(cmd.Context(), o)
			return a.finish(cmd.Context(), res, err, asJSON, apply)
		},
	}
	cmd.Flags().BoolVar(&apply, "apply", false, "reboot right away")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON lines")
	return cmd
}

func newFinalizeCmd(a *app) *cobra.Command {
	var asJSON, ifStaged bool
	cmd := &cobra.Command{
		Use:   "finalize",
		Short: "Make a staged update the default (run at shutdown by twinroot-finalize.service)",
		Long: `Finalize merges /etc of the booted deployment into the staged one again (keeping
changes made since the upgrade) and swaps the staged boot entries in. Nothing staged:
nothing to do (exit 0).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(asJSON, nil)
			if err != nil {
				return exitFor(err)
			}
			if ifStaged {
				ok, err := updater.FinalizePending(cmd.Context(), o)
				if err != nil || !ok {
					return exitFor(err) // nil error: exit 0, nothing to do
				}
			}
			res, err := updater.Finalize(cmd.Context(), o)
			return a.finish(cmd.Context(), res, err, asJSON, false)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON lines")
	cmd.Flags().BoolVar(&ifStaged, "if-staged", false, "do nothing, quietly, when nothing is staged")
	return cmd
}

func newGCCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove deployments, images, objects and kernels no longer needed",
		Long: `GC keeps the booted, staged, default, rollback and pinned deployments and
removes the others, then the images nothing references, unreferenced objects, and kernel
files on the boot partition no entry uses.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(asJSON, nil)
			if err != nil {
				return exitFor(err)
			}
			res, err := updater.GC(cmd.Context(), o)
			return a.finish(cmd.Context(), res, err, asJSON, false)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print progress events and the result as JSON lines")
	return cmd
}

func newInstallCmd(a *app) *cobra.Command {
	var (
		asJSON bool
		efiDir string
		kargs  []string
		pf     pullFlags
	)
	cmd := &cobra.Command{
		Use:   "install REF",
		Short: "Install a fresh sysroot and boot partition from an image",
		Long: `Install initialises the store under --sysroot, pulls REF, deploys it, copies its
kernel and initramfs to the boot partition (--boot), installs systemd-boot from --efi-dir
and writes the boot entry. REF as for switch.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(asJSON, &pf)
			if err != nil {
				return exitFor(err)
			}
			res, err := updater.Install(cmd.Context(), o, args[0], updater.InstallOptions{EFIDir: efiDir, Kargs: kargs})
			return a.finish(cmd.Context(), res, err, asJSON, false)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print progress events and the result as JSON lines")
	f.StringVar(&efiDir, "efi-dir", "/usr/lib/systemd/boot/efi", "directory holding systemd-bootx64.efi")
	f.StringArrayVar(&kargs, "karg", nil, "extra kernel argument (repeatable)")
	pf.add(cmd)
	return cmd
}

func newBlessCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "bless",
		Short: "Mark the booted entry good (where systemd-bless-boot is not available)",
		Long: `Bless removes the boot counter from the entry that booted (the boot loader's
LoaderBootCountPath EFI variable names it), as systemd-bless-boot does; it is what
twinroot-bless-boot.service runs after boot-complete.target where systemd's own
systemd-bless-boot.service is missing.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(false, nil)
			if err != nil {
				return exitFor(err)
			}
			if err := updater.Bless(cmd.Context(), o); err != nil {
				return exitFor(err)
			}
			return nil
		},
	}
}

func newPinCmd(a *app, pin bool) *cobra.Command {
	var asJSON bool
	use, short := "pin ID", "Keep a deployment through gc whatever its role"
	if !pin {
		use, short = "unpin ID", "Let gc remove a pinned deployment again when it has no role"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := a.options(asJSON, nil)
			if err != nil {
				return exitFor(err)
			}
			res, err := updater.Pin(cmd.Context(), o, args[0], pin)
			return a.finish(cmd.Context(), res, err, asJSON, false)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func newFsckCmd(a *app) *cobra.Command {
	cmd := newStoreFsckCmd(a)
	cmd.Short = "Check the object store (same as 'store fsck')"
	return cmd
}

// finish prints a state-changing verb's result and reboots for --apply.
func (a *app) finish(ctx context.Context, res updater.Result, err error, asJSON, apply bool) error {
	a.endProgress()
	if err != nil {
		return exitFor(err)
	}
	a.notify("STATUS=" + res.Message)
	if asJSON {
		if err := writeJSONLine(a.stdout, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(a.stdout, res.Message)
		for _, c := range res.Conflicts {
			fmt.Fprintf(a.stdout, "  /etc conflict: %s: %s\n", c.Path, c.Reason)
		}
		for _, r := range res.Removed {
			fmt.Fprintf(a.stdout, "  removed %s\n", r)
		}
	}
	if apply && res.Changed && res.RebootNeeded {
		if res.Verb == "upgrade" || res.Verb == "switch" {
			// Rebooting now: finalize now, so the switch does not depend on
			// twinroot-finalize.service being enabled (at shutdown it then
			// finds nothing staged).
			o, err := a.options(asJSON, nil)
			if err != nil {
				return exitFor(err)
			}
			fr, err := updater.Finalize(ctx, o)
			if err != nil {
				return exitFor(fmt.Errorf("finalizing before the reboot: %w (nothing was switched; the system boots as before)", err))
			}
			fmt.Fprintln(a.stderr, fr.Message)
		}
		if os.Getenv(noRebootEnv) == "1" {
			fmt.Fprintln(a.stderr, "rebooting: skipped ($"+noRebootEnv+"=1)")
			return nil
		}
		fmt.Fprintln(a.stderr, "rebooting")
		if err := updater.Reboot(ctx); err != nil {
			return err
		}
	}
	return nil
}

func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func writeJSONIndent(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func checkLine(r updater.CheckResult) string {
	if r.Refused != "" {
		return fmt.Sprintf("no update: %s %s would be refused: %s", r.Image.Image, describe(r.Latest), r.Refused)
	}
	if r.Available {
		return fmt.Sprintf("update available: %s %s", r.Image.Image, describe(r.Latest))
	}
	return fmt.Sprintf("no update: %s %s is booted or staged", r.Image.Image, describe(r.Latest))
}

// notify sends an sd_notify message when systemd runs us (NOTIFY_SOCKET).
func (a *app) notify(msg string) {
	if os.Getenv("NOTIFY_SOCKET") != "" {
		if _, err := daemon.SdNotify(false, msg); err != nil {
			a.log.Debug("sd_notify", "err", err)
		}
	}
}

// describe is an image in a few words: version and manifest.
func describe(st updater.ImageStatus) string {
	var parts []string
	if st.Version != "" {
		parts = append(parts, "version "+st.Version)
	}
	if st.ManifestDigest != "" {
		parts = append(parts, st.ManifestDigest)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// printHost prints status like bootc status: one block per role, fields
// aligned.
func printHost(w io.Writer, h updater.Host) {
	s := h.Status
	type block struct {
		mark, title string
		e           *updater.BootEntry
	}
	blocks := []block{{" ", "Staged", s.Staged}, {"●", "Booted", s.Booted}, {" ", "Default", s.Default}, {" ", "Rollback", s.Rollback}}
	for i := range s.Other {
		blocks = append(blocks, block{" ", "Other", &s.Other[i]})
	}
	printed := 0
	seen := map[string]bool{}
	for _, b := range blocks {
		if b.e == nil || seen[b.e.ID] {
			continue // one block per deployment; its other roles are in its title
		}
		seen[b.e.ID] = true
		if printed > 0 {
			fmt.Fprintln(w)
		}
		printed++
		printEntry(w, b.mark, b.title, b.e, h)
	}
	if printed == 0 {
		fmt.Fprintln(w, "No deployments.")
	}
	fmt.Fprintf(w, "\nStore: %s, %d objects, %s (%s shared with container storage, %s garbage), %d images, fs-verity %s\n",
		s.Store.Path, s.Store.Objects, storeHumanBytes(s.Store.Bytes), storeHumanBytes(s.Store.SharedBytes),
		storeHumanBytes(s.Store.GarbageBytes), s.Store.Images, yesNo(s.Store.Verity))
}

func printEntry(w io.Writer, mark, title string, e *updater.BootEntry, h updater.Host) {
	roles := []string{}
	s := h.Status
	for _, r := range []struct {
		name string
		e    *updater.BootEntry
	}{{"default", s.Default}, {"rollback", s.Rollback}, {"booted", s.Booted}, {"staged", s.Staged}} {
		if r.e != nil && r.e.ID == e.ID && r.name != strings.ToLower(title) {
			roles = append(roles, r.name)
		}
	}
	if e.Pinned {
		roles = append(roles, "pinned")
	}
	prefix := fmt.Sprintf("%s %s image", mark, title)
	head := prefix + ": " + e.Image.Image.Image
	if len(roles) > 0 {
		head += " (also " + strings.Join(roles, ", ") + ")"
	}
	fmt.Fprintln(w, head)
	width := max(utf8.RuneCountInString(prefix), len("  Rollback image"))
	row := func(k, v string) { fmt.Fprintf(w, "%*s: %s\n", width, k, v) }
	row("Deployment", e.ID)
	row("Digest", e.Image.ManifestDigest)
	ver := e.Image.Version
	if ver == "" {
		ver = "-"
	}
	if e.Image.Timestamp != nil {
		ver += " (" + e.Image.Timestamp.Format(time.RFC3339) + ")"
	}
	row("Version", ver)
	if sg := e.Image.Signature; sg != nil {
		state := "not verified"
		if sg.Verified {
			state = "verified"
		}
		row("Signature", fmt.Sprintf("%s by %s (%s)", state, strings.Join(sg.Requirements, "+"), sg.PolicyEntry))
	}
	if e.Image.MinVersion != "" {
		row("Min version", e.Image.MinVersion)
	}
	if e.Image.OS != "" {
		row("OS", e.Image.OS)
	}
	if e.Boot != nil {
		state := "blessed"
		if !e.Boot.Blessed {
			state = "not blessed"
		}
		if e.Boot.TriesLeft != nil {
			state = fmt.Sprintf("%d tries left, %d done", *e.Boot.TriesLeft, *e.Boot.TriesDone)
		}
		row("Boot", e.Boot.Entry+", "+state)
	}
	for _, c := range e.Conflicts {
		row("/etc conflict", c.Path+": "+c.Reason)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// progress renders updater events: JSON lines with --json, mpb bars for
// pulls on a terminal, plain lines otherwise.
func (a *app) progress(asJSON bool) func(updater.Event) {
	switch {
	case asJSON:
		var mu sync.Mutex
		enc := json.NewEncoder(a.stdout)
		return func(e updater.Event) {
			mu.Lock()
			defer mu.Unlock()
			_ = enc.Encode(e)
		}
	case isTerminal(a.stderr):
		// Bars for the pull only; phase lines before and after it.
		return func(e updater.Event) {
			if e.Pull != nil {
				if a.bars == nil {
					a.bars = newBarProgress(a.stderr)
				}
				a.bars.event(*e.Pull)
				if e.Pull.Kind == "done" {
					a.endProgress()
				}
				return
			}
			a.endProgress()
			fmt.Fprintln(a.stderr, e.Message)
		}
	default:
		lp := &lineProgress{w: a.stderr}
		return func(e updater.Event) {
			if e.Pull == nil || e.Pull.Kind != "layer-progress" {
				a.notify("STATUS=" + e.Message)
			}
			if e.Pull != nil {
				lp.event(*e.Pull)
				return
			}
			fmt.Fprintln(a.stderr, e.Message)
		}
	}
}

// endProgress stops bars before the result is printed.
func (a *app) endProgress() {
	if a.bars != nil {
		a.bars.finish(true)
		a.bars = nil
	}
}
