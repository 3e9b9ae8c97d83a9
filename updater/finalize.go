package updater

import (
	"context"
	"fmt"
)

// Finalize is the staged switch, run at shutdown (twinroot-finalize.service):
// it redoes the /etc merge of the staged deployment from its base's
// current /etc, so changes made after staging are kept, then commits the
// staged boot entry set in one exchange. With nothing staged it does
// nothing. A crash before the exchange leaves the old entries: the update
// is dropped, never the system.
func Finalize(ctx context.Context, o Options) (Result, error) {
	u, err := open(ctx, o, "finalize", false, false)
	if err != nil {
		return Result{}, err
	}
	defer u.Close()
	s, err := u.state(ctx)
	if err != nil {
		return Result{}, err
	}
	res := Result{APIVersion: APIVersion, Kind: "Result", Verb: "finalize", Removed: []string{}, Conflicts: []EtcConflict{}}
	if len(s.staged) == 0 {
		res.Message = "nothing staged"
		return res, nil
	}
	id := s.staged[0].ID
	d, ok := s.deps[id]
	if !ok {
		// A staged set naming a deployment that is gone cannot boot: drop it.
		u.o.Log.Warn("the staged entries name a missing deployment; discarding them", "deployment", id)
		if err := u.boot.DiscardStaged(ctx); err != nil {
			return res, friendly(err)
		}
		return res, fmt.Errorf("%w: staged deployment %s is missing; the staged entries were discarded", ErrNoDeployment, id)
	}
	ok, err = u.stagedThisBoot(id)
	if err != nil {
		return res, err
	}
	if !ok {
		u.o.Log.Warn("the staged update was made during an earlier boot that did not shut down cleanly; discarding it", "deployment", id)
		if err := u.boot.DiscardStaged(ctx); err != nil {
			return res, friendly(err)
		}
		u.clearStaged()
		res.Changed = true
		res.Message = fmt.Sprintf("discarded %s: it was staged during an earlier boot that ended without finalizing (a crash or power cut); run 'updatectl upgrade' again", id)
		return res, nil
	}
	if d.MergedFrom != "" {
		if _, ok := s.deps[d.MergedFrom]; ok {
			u.o.emit("finalize", "merging /etc of "+d.MergedFrom+" into "+id+" again")
			cs, err := u.dep.Remerge(ctx, id, d.MergedFrom)
			if err != nil {
				return res, friendly(err)
			}
			res.Conflicts = conflicts(cs)
		}
	}
	u.o.emit("finalize", "committing the staged boot entries")
	if err := u.boot.CommitStaged(ctx); err != nil {
		return res, friendly(err)
	}
	u.clearStaged()
	res.Changed, res.Deployment, res.RebootNeeded = true, id, true
	res.Message = fmt.Sprintf("%s (%s) is the default now", id, versionOr(d.Origin.Version, d.Origin.Manifest))
	return res, nil
}

// FinalizePending reports whether a staged entry set waits for Finalize
// (the finalize unit's start-time check). It takes no lock.
func FinalizePending(ctx context.Context, o Options) (bool, error) {
	u, err := open(ctx, o, "status", false, true)
	if err != nil {
		return false, err
	}
	defer u.Close()
	_, ok, err := u.boot.Staged(ctx)
	return ok, err
}
