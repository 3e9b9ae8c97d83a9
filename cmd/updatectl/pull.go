package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/twinroot/twinroot/objstore"
	twsync "github.com/twinroot/twinroot/sync"
	"github.com/twinroot/twinroot/trust"
)

// newPullCmd is "pull REF": an OCI image into the store as a composefs image.
func newPullCmd(a *app) *cobra.Command {
	var (
		tlsVerify bool
		platform  string
		asJSON    bool
		authFiles []string
		regConf   string
		sig       sigFlags
	)
	cmd := &cobra.Command{
		Use:   "pull [flags] REF",
		Short: "Pull an OCI image into the store and commit it as a composefs image",
		Long: `Pull fetches an OCI image and commits it to the object store (created when missing)
as images/<digest>/image.cfs plus its object links, exactly as 'store import' does.

REF is a registry reference (registry/repo:tag, registry/repo@sha256:..., optionally
prefixed docker://), an OCI layout directory (oci:DIR[:tag]) or an OCI archive
(oci-archive:FILE[:tag]). Image indexes resolve to this machine's platform unless
--platform says otherwise. registries.conf ($CONTAINERS_REGISTRIES_CONF or
/etc/containers/registries.conf, with its registries.conf.d drop-ins) is read as podman
reads it: mirrors, insecure and blocked registries, wildcard prefixes, short-name aliases
and unqualified-search-registries. Credentials come from --authfile, then the
credential-helpers it names (by default containers-auth.json: $REGISTRY_AUTH_FILE,
/run/containers/0/auth.json, docker's config with credHelpers), then
/etc/containers/auth.json.

Before anything is fetched into the store, the signature policy (containers-policy.json,
--policy) is evaluated for the manifest the reference resolved to, as podman and skopeo do:
signatures come from sigstore attachments or the lookaside stores --registries.d names, and
the pull then fetches exactly the manifest digest that was verified. A refusal names the
policy entry. --enforce-container-sigpolicy also refuses images the policy accepts without
a signature (insecureAcceptAnything).

The last line of standard output is the composefs digest (64 hex). With --json, standard
output carries one JSON event per line instead, the last one of kind "done" holding the
digest; progress goes to standard error otherwise (bars on a terminal, lines if not).`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: a.withStore(true, func(ctx context.Context, s *objstore.Store, args []string) error {
			var pr pullProgress
			switch {
			case asJSON:
				pr = &jsonProgress{enc: json.NewEncoder(a.stdout)}
			case isTerminal(a.stderr):
				pr = newBarProgress(a.stderr)
			default:
				pr = &lineProgress{w: a.stderr}
			}
			opts := []twsync.Option{
				twsync.WithLogger(a.log),
				twsync.WithPlatform(platform),
				twsync.WithTLSVerify(tlsVerify),
				twsync.WithAuthFiles(authFiles...),
				twsync.WithRegistriesConf(regConf),
				twsync.WithProgress(pr.event),
			}
			opts = append(opts, sig.options()...)
			start := time.Now()
			res, err := twsync.Pull(ctx, s, args[0], opts...)
			pr.finish(err == nil)
			if err != nil {
				return err
			}
			if asJSON {
				return nil // the "done" event carries the digest
			}
			fmt.Fprintf(a.stderr, "signature policy: %s\n", res.Trust)
			fmt.Fprintf(a.stderr, "pulled %s (manifest %s): %d layers, %d cached, %s fetched, %d new objects, %d reused, %.1fs\n",
				res.Source, res.Manifest, res.Layers, res.LayersCached, storeHumanBytes(res.BytesFetched),
				res.ObjectsNew, res.ObjectsReused, time.Since(start).Seconds())
			fmt.Fprintln(a.stdout, res.Digest.Hex())
			return nil
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&tlsVerify, "tls-verify", true, "verify TLS and refuse plain HTTP for the registry REF names (false: allow both, for that registry only)")
	f.StringVar(&platform, "platform", "", "OS/ARCH[/VARIANT] to select from an image index (default: this machine)")
	f.BoolVar(&asJSON, "json", false, "print progress and the result as JSON lines on standard output")
	f.StringArrayVar(&authFiles, "authfile", nil, "containers-auth.json file to read credentials from first (repeatable)")
	f.StringVar(&regConf, "registries-conf", "", `registries.conf to use ("-" for none)`)
	sig.register(f)
	return cmd
}

// sigFlags are the signature-policy flags of pull (and of the updater's
// verbs that pull): skopeo's and podman's --policy and --registries.d,
// and bootc's --enforce-container-sigpolicy.
type sigFlags struct {
	policy      string
	registriesD string
	enforce     bool
}

func (s *sigFlags) register(f *pflag.FlagSet) {
	f.StringVar(&s.policy, "policy", "", "containers-policy.json to evaluate (default "+trust.DefaultPolicyPath+")")
	f.StringVar(&s.registriesD, "registries.d", "", "registries.d directory with lookaside and sigstore-attachment settings (default "+trust.DefaultRegistriesDir+")")
	f.BoolVar(&s.enforce, "enforce-container-sigpolicy", false, "refuse images the policy accepts without verifying a signature (insecureAcceptAnything)")
}

func (s *sigFlags) options() []twsync.Option {
	return []twsync.Option{twsync.WithPolicy(s.policy), twsync.WithRegistriesD(s.registriesD), twsync.WithEnforceSignaturePolicy(s.enforce)}
}

// isTerminal reports whether w is a terminal wide enough for bars.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return false
	}
	width, _, err := term.GetSize(int(f.Fd()))
	return err == nil && width >= 60
}

// pullProgress renders sync events.
type pullProgress interface {
	event(twsync.Event)
	finish(ok bool)
}

// jsonProgress writes every event as one JSON line.
type jsonProgress struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (p *jsonProgress) event(e twsync.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.enc.Encode(e)
}

func (p *jsonProgress) finish(bool) {}

// lineProgress writes plain lines: layer starts and ends, and progress
// every few seconds.
type lineProgress struct {
	w    io.Writer
	last time.Time
}

func (p *lineProgress) event(e twsync.Event) {
	switch e.Kind {
	case "resolved":
		fmt.Fprintf(p.w, "resolved %s: manifest %s, %d layers\n", e.Ref, e.Manifest, e.Layers)
	case "layer-start":
		retry := ""
		if e.Attempt > 1 {
			retry = fmt.Sprintf(" (attempt %d)", e.Attempt)
		}
		fmt.Fprintf(p.w, "layer %d %s: fetching %s%s\n", e.Layer+1, short(e.Digest), storeHumanBytes(e.Size), retry)
	case "layer-progress":
		if time.Since(p.last) >= 5*time.Second {
			p.last = time.Now()
			fmt.Fprintf(p.w, "layer %d %s: %s of %s, %d files\n", e.Layer+1, short(e.Digest), storeHumanBytes(e.Bytes), storeHumanBytes(e.Size), e.Files)
		}
	case "layer-done":
		if e.Cached {
			fmt.Fprintf(p.w, "layer %d %s: already unpacked (%d entries)\n", e.Layer+1, short(e.Digest), e.Files)
		} else {
			fmt.Fprintf(p.w, "layer %d %s: done, %d entries, %d new objects, %d reused\n", e.Layer+1, short(e.Digest), e.Files, e.New, e.Reused)
		}
	case "committing":
		fmt.Fprintln(p.w, "committing")
	}
}

func (p *lineProgress) finish(bool) {}

func short(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// barProgress draws one bar per layer on a terminal.
type barProgress struct {
	p    *mpb.Progress
	bars map[int]*mpb.Bar
}

func newBarProgress(w io.Writer) *barProgress {
	return &barProgress{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond)), bars: map[int]*mpb.Bar{}}
}

func (b *barProgress) bar(e twsync.Event) *mpb.Bar {
	bar, ok := b.bars[e.Layer]
	if !ok {
		bar = b.p.AddBar(e.Size,
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("layer %d %s ", e.Layer+1, short(e.Digest)))),
			mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.Percentage()))
		b.bars[e.Layer] = bar
	}
	return bar
}

func (b *barProgress) event(e twsync.Event) {
	switch e.Kind {
	case "layer-start":
		b.bar(e).SetCurrent(0)
	case "layer-progress":
		b.bar(e).SetCurrent(e.Bytes)
	case "layer-done":
		bar := b.bar(e)
		if e.Cached {
			bar.SetTotal(e.Size, true) // nothing fetched; shown complete
			return
		}
		bar.SetCurrent(e.Size)
		bar.SetTotal(e.Size, true)
	}
}

func (b *barProgress) finish(ok bool) {
	for _, bar := range b.bars {
		if !bar.Completed() {
			bar.Abort(false)
		}
	}
	b.p.Wait()
}
