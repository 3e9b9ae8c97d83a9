package updater

import (
	"context"
	"fmt"

	twsync "github.com/twinroot/twinroot/sync"
	"github.com/twinroot/twinroot/trust"
)

// LabelVersion is the OCI label holding an image's version.
const LabelVersion = "org.opencontainers.image.version"

// CheckOptions are the options of Check.
type CheckOptions struct {
	// AllowDowngrade answers as upgrade --allow-downgrade would.
	AllowDowngrade bool
}

// Check asks the registry (or layout) what the origin names now: the
// manifest, and its config when the manifest is new; never a layer. Available is true when that
// manifest is neither booted, staged nor the default, and upgrade would
// take it: an older version (unless co.AllowDowngrade) or one below the
// installed floor is reported in Refused instead, with Available false, so
// that "is there an update?" never says yes to what upgrade then refuses.
// The signature policy is not evaluated (that needs the signatures, which
// the pull fetches); upgrade refuses before storing anything.
func Check(ctx context.Context, o Options, co CheckOptions) (CheckResult, error) {
	u, err := open(ctx, o, "check", false, true)
	if err != nil {
		return CheckResult{}, err
	}
	defer u.Close()
	s, err := u.state(ctx)
	if err != nil {
		return CheckResult{}, err
	}
	ref, base := s.origin(u.o.Config)
	if ref == "" {
		return CheckResult{}, fmt.Errorf("%w: no deployment and no origin in the configuration; 'updatectl switch REF' or 'install REF' sets one", ErrNoOrigin)
	}
	u.o.emit("resolve", "checking "+ref)
	r, err := twsync.Resolve(ctx, ref, append(u.pullOptions(), twsync.WithKnownManifest(s.hasManifest))...)
	if err != nil {
		return CheckResult{}, friendly(err)
	}
	res := CheckResult{APIVersion: APIVersion, Kind: "CheckResult", Image: ImageReference{Image: ref}, Latest: resolvedStatus(r)}
	if r.Known {
		// The config was not fetched: the version is the one recorded
		// when the deployment with this manifest was made.
		for _, d := range s.deps {
			if d.Origin.Manifest == r.Manifest {
				res.Latest.Version = d.Origin.Version
				if !d.Origin.Created.IsZero() {
					t := d.Origin.Created.UTC()
					res.Latest.Timestamp = &t
				}
				break
			}
		}
	}
	if base != nil {
		res.Current = base.Origin.Manifest
	}
	if d, ok := s.deps[s.stagedD]; ok {
		res.Staged = d.Origin.Manifest
	}
	res.Available = !s.hasManifest(r.Manifest)
	if res.Available {
		cand := trust.VersionOf(r.Labels, r.Created)
		if err := u.checkVersion(ctx, s, base, cand, co.AllowDowngrade); err != nil {
			res.Available, res.Refused = false, err.Error()
		}
	}
	return res, nil
}

// hasManifest reports whether the booted, staged or default deployment is
// already the image of manifest m.
func (s *state) hasManifest(m string) bool {
	for _, id := range []string{s.booted, s.stagedD, s.def} {
		if d, ok := s.deps[id]; ok && id != "" && d.Origin.Manifest == m {
			return true
		}
	}
	return false
}

func resolvedStatus(r twsync.Resolved) ImageStatus {
	st := ImageStatus{Image: ImageReference{Image: r.Source}, ManifestDigest: r.Manifest, Version: r.Labels[LabelVersion]}
	if !r.Created.IsZero() {
		t := r.Created.UTC()
		st.Timestamp = &t
	}
	return st
}

// pullOptions are the sync options of every pull and check.
func (u *Updater) pullOptions() []twsync.Option {
	// The configuration's enforce-container-sigpolicy first, so that a
	// flag in Pull overrides it.
	opts := append([]twsync.Option{twsync.WithLogger(u.o.Log), twsync.WithEnforceSignaturePolicy(u.o.Config.Update.EnforceContainerSigpolicy)}, u.o.Pull...)
	if u.o.Progress != nil {
		p := u.o.Progress
		opts = append(opts, twsync.WithProgress(func(e twsync.Event) {
			p(Event{Kind: "Event", Phase: "pull", Message: pullMessage(e), Pull: &e})
		}))
	}
	return opts
}

func pullMessage(e twsync.Event) string {
	switch e.Kind {
	case "resolved":
		return fmt.Sprintf("resolved %s: manifest %s, %d layers", e.Ref, e.Manifest, e.Layers)
	case "layer-start":
		return fmt.Sprintf("layer %d: fetching %d bytes", e.Layer+1, e.Size)
	case "layer-done":
		if e.Cached {
			return fmt.Sprintf("layer %d: already unpacked", e.Layer+1)
		}
		return fmt.Sprintf("layer %d: done, %d new objects, %d reused", e.Layer+1, e.New, e.Reused)
	case "committing":
		return "committing the composefs image"
	case "done":
		return "pulled image " + e.Digest
	}
	return e.Kind
}
