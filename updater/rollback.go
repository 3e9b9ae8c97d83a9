package updater

import (
	"context"
	"fmt"
)

// Rollback makes the fallback entry the default and the default its
// fallback, so run twice it toggles back. A staged update is discarded
// first, as bootc does: rolling back means "not that".
//
// One case differs: when an update used up its tries, the boot loader
// sorts its entry last and boots the fallback, so the failed deployment is
// the rollback entry. Swapping would make it the default again. Rollback
// then goes one further back, to the newest deployment in neither entry
// (v3 failed and v2 runs: v1 boots next, v2 is its fallback). Without such
// a deployment it swaps as usual.
func Rollback(ctx context.Context, o Options) (Result, error) {
	u, err := open(ctx, o, "rollback", false, false)
	if err != nil {
		return Result{}, err
	}
	defer u.Close()
	s, err := u.state(ctx)
	if err != nil {
		return Result{}, err
	}
	res := Result{APIVersion: APIVersion, Kind: "Result", Verb: "rollback", Removed: []string{}, Conflicts: []EtcConflict{}}
	if s.rollbk == "" {
		return res, fmt.Errorf("%w: no rollback deployment (the boot set has only %d entries); nothing to roll back to", ErrNoDeployment, len(s.entries))
	}
	nextID, prevID := s.rollbk, s.def
	if alt := s.beyondFailed(); alt != "" {
		nextID = alt
	}
	next, ok1 := s.deps[nextID]
	prev, ok2 := s.deps[prevID]
	if !ok1 || !ok2 {
		return res, fmt.Errorf("%w: the boot entries name deployments %s and %s, which are not both in the store; run 'updatectl fsck'", ErrNoDeployment, prevID, nextID)
	}
	if len(s.staged) > 0 {
		u.o.emit("stage", "discarding the staged update "+s.stagedD)
		if err := u.boot.DiscardStaged(ctx); err != nil {
			return res, friendly(err)
		}
		u.clearStaged()
	}
	first, err := u.bootDeployment(ctx, next)
	if err != nil {
		return res, err
	}
	fallback, err := u.bootDeployment(ctx, prev)
	if err != nil {
		return res, err
	}
	u.o.emit("stage", "making "+next.ID+" the default, "+prev.ID+" its fallback")
	if err := u.boot.Apply(ctx, first, &fallback); err != nil {
		return res, friendly(err)
	}
	res.Changed, res.Deployment = true, next.ID
	res.RebootNeeded = next.ID != s.booted
	res.Message = fmt.Sprintf("%s (%s) boots next; %s is the fallback", next.ID, versionOr(next.Origin.Version, next.Origin.Manifest), prev.ID)
	return res, nil
}

// beyondFailed returns the deployment a rollback should boot when the
// rollback entry has used up its tries (the boot loader sorts such an entry
// last): the newest deployment that is in neither entry. It returns "" in
// every other case, and when there is no such deployment.
func (s *state) beyondFailed() string {
	if len(s.entries) < 2 {
		return ""
	}
	if n := s.entries[1].Name; !n.Counted || n.Left > 0 {
		return ""
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		if id := s.order[i].ID; id != s.def && id != s.rollbk {
			return id
		}
	}
	return ""
}
