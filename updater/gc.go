package updater

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/twinroot/twinroot/deploy"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// GC keeps the booted, staged, default, rollback and pinned deployments and
// removes the others; then the images no GC root names and nothing has in
// use, the objects left unreferenced, and the kernels on the boot partition
// no entry boots.
func GC(ctx context.Context, o Options) (Result, error) {
	u, err := open(ctx, o, "gc", false, false)
	if err != nil {
		return Result{}, err
	}
	defer u.Close()
	s, err := u.state(ctx)
	if err != nil {
		return Result{}, err
	}
	res := Result{APIVersion: APIVersion, Kind: "Result", Verb: "gc", Removed: []string{}, Conflicts: []EtcConflict{}}
	keep := map[string]bool{}
	for _, id := range []string{s.booted, s.stagedD, s.def, s.rollbk} {
		keep[id] = id != ""
	}
	for _, e := range append(append(s.entries[:0:0], s.entries...), s.staged...) {
		keep[e.ID] = true // every entry that can boot keeps its deployment
	}
	for _, d := range s.order {
		if keep[d.ID] || d.Pinned {
			continue
		}
		u.o.emit("gc", "removing deployment "+d.ID)
		if err := u.dep.Remove(ctx, d.ID); err != nil {
			if errors.Is(err, deploy.ErrInUse) {
				u.o.Log.Warn("deployment in use, kept", "deployment", d.ID)
				continue
			}
			return res, friendly(err)
		}
		res.Removed = append(res.Removed, "deployment "+d.ID)
	}
	if _, err := u.dep.GC(ctx); err != nil {
		return res, friendly(err)
	}
	roots, err := u.store.Roots(ctx)
	if err != nil {
		return res, err
	}
	rooted := map[verity.Digest]bool{}
	for _, d := range roots {
		rooted[d] = true
	}
	imgs, err := u.store.Images(ctx)
	if err != nil {
		return res, err
	}
	for _, im := range imgs {
		if rooted[im.Digest] || u.store.InUse(im.Digest) {
			continue
		}
		u.o.emit("gc", "removing image "+im.Digest.Hex()[:12])
		if err := u.store.Remove(ctx, im.Digest); err != nil {
			if errors.Is(err, objstore.ErrRooted) {
				continue // a deploy raced us
			}
			return res, err
		}
		res.Removed = append(res.Removed, "image "+im.Digest.Hex())
	}
	g, err := u.store.GC(ctx, objstore.GCOptions{})
	if err != nil {
		return res, err
	}
	res.FreedBytes = g.Bytes
	files, err := u.boot.GC(ctx)
	if err != nil {
		return res, friendly(err)
	}
	for _, f := range files {
		res.Removed = append(res.Removed, "boot "+f)
	}
	res.Changed = len(res.Removed) > 0 || g.Objects > 0
	res.Message = fmt.Sprintf("removed %d deployments, %d images, %d boot files; freed %s in %d objects",
		count(res.Removed, "deployment "), count(res.Removed, "image "), count(res.Removed, "boot "), humanBytes(g.Bytes), g.Objects)
	return res, nil
}

func count(l []string, prefix string) int {
	n := 0
	for _, s := range l {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}
