package updater

import (
	"context"
	"fmt"

	"github.com/twinroot/twinroot/deploy"
	twsync "github.com/twinroot/twinroot/sync"
	"github.com/twinroot/twinroot/trust"
)

// provenance is what sync recorded with a deployment's image at pull time
// (signature verdict, version, floor); ok is false when the image's
// meta.json cannot be read.
func (u *Updater) provenance(ctx context.Context, d deploy.Deployment) (twsync.Provenance, bool) {
	info, err := u.store.Image(ctx, d.Image)
	if err != nil {
		return twsync.Provenance{}, false
	}
	p, err := twsync.ProvenanceOf(info.Meta)
	if err != nil {
		u.o.Log.Warn("unreadable image provenance", "image", d.Image.Hex(), "err", err)
		return twsync.Provenance{}, false
	}
	return p, true
}

// signatureStatus is the status view of a recorded verdict.
func signatureStatus(p twsync.Provenance) *SignatureStatus {
	if p.Trust == nil {
		return nil
	}
	return &SignatureStatus{
		Verified: p.Trust.Verified, PolicyEntry: p.Trust.Entry(), Requirements: append([]string{}, p.Trust.Requirements...),
		Policy: p.Trust.Policy, ManifestDigest: p.Trust.Digest,
	}
}

// versionOf is a deployment's image version: the origin's label and
// creation time, and the floor label of its image.
func (u *Updater) versionOf(ctx context.Context, d deploy.Deployment) trust.Version {
	v := trust.Version{Label: d.Origin.Version, Created: d.Origin.Created}
	if p, ok := u.provenance(ctx, d); ok {
		v.Floor = p.Version.Floor
		if v.Label == "" {
			v.Label = p.Version.Label
		}
		if v.Created.IsZero() {
			v.Created = p.Version.Created
		}
	}
	return v
}

// checkVersion refuses an upgrade to an image older than base (unless
// allowDowngrade) or below the signed floor of any deployment the system
// may boot (booted, staged, default, rollback) whatever allowDowngrade
// says. It runs from sync.WithAccept: after the signature policy accepted
// the image and before anything is written to the store.
func (u *Updater) checkVersion(ctx context.Context, s *state, base *deploy.Deployment, cand trust.Version, allowDowngrade bool) error {
	var installed []trust.Version
	for _, id := range []string{s.booted, s.stagedD, s.def, s.rollbk} {
		if d, ok := s.deps[id]; ok && id != "" {
			installed = append(installed, u.versionOf(ctx, d))
		}
	}
	if base == nil {
		return nil
	}
	cur := u.versionOf(ctx, *base)
	if err := trust.CheckReplace(cur, cand, trust.EffectiveFloor(installed...), allowDowngrade); err != nil {
		return fmt.Errorf("%w (deployment %s)", err, base.ID)
	}
	return nil
}
