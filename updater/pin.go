package updater

import (
	"context"
	"errors"
	"fmt"

	"github.com/twinroot/twinroot/deploy"
)

// Pin marks deployment id kept by gc whatever its role (pinned = false
// releases it), as "ostree admin pin" does.
func Pin(ctx context.Context, o Options, id string, pinned bool) (Result, error) {
	verb := "pin"
	if !pinned {
		verb = "unpin"
	}
	u, err := open(ctx, o, verb, false, false)
	if err != nil {
		return Result{}, err
	}
	defer u.Close()
	res := Result{APIVersion: APIVersion, Kind: "Result", Verb: verb, Removed: []string{}, Conflicts: []EtcConflict{}}
	d, err := u.dep.Get(ctx, id)
	if errors.Is(err, deploy.ErrNotFound) {
		return res, fmt.Errorf("%w: %s; 'updatectl status' lists the deployments", ErrNoDeployment, id)
	}
	if err != nil {
		return res, friendly(err)
	}
	if d.Pinned == pinned {
		res.Message = fmt.Sprintf("%s is already %sned", id, verb)
		return res, nil
	}
	if err := u.dep.SetPinned(ctx, id, pinned); err != nil {
		return res, friendly(err)
	}
	res.Changed, res.Deployment = true, id
	res.Message = fmt.Sprintf("%sned %s", verb, id)
	return res, nil
}
