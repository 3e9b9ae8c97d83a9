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
	res := Result{APIVersion: APIVersion, Kind: "Result", Verb: "gc", Removed: []string{}, Conflicts: []EtcConflict{}}
	c, err := u.collect(ctx, true)
	res.Removed, res.FreedBytes = c.removed, c.bytes
	if err != nil {
		return res, err
	}
	res.Changed = len(res.Removed) > 0 || c.objects > 0
	res.Message = c.String()
	return res, nil
}

// collected is what collect removed.
type collected struct {
	removed []string // "deployment <id>", "image <hex>", "boot <file>"
	bytes   int64    // freed in the store
	objects int
}

func (c collected) String() string {
	return fmt.Sprintf("removed %d deployments, %d images, %d boot files; freed %s in %d objects",
		count(c.removed, "deployment "), count(c.removed, "image "), count(c.removed, "boot "), humanBytes(c.bytes), c.objects)
}

// collect removes the deployments nothing needs: every one but the booted,
// staged, default, rollback and pinned ones and those any current or staged
// boot entry names. Then images: with all, every image no GC root names
// and nothing has in use (gc); without, only those the removed deployments
// left unrooted (the prune after an upgrade, which leaves an image pulled
// with --download-only or by hand alone). Then the objects left
// unreferenced and the kernels no entry boots. It reads the state itself,
// under the caller's lock.
func (u *Updater) collect(ctx context.Context, all bool) (collected, error) {
	var c collected
	s, err := u.state(ctx)
	if err != nil {
		return c, err
	}
	keep := map[string]bool{}
	for _, id := range []string{s.booted, s.stagedD, s.def, s.rollbk} {
		keep[id] = id != ""
	}
	for _, e := range append(append(s.entries[:0:0], s.entries...), s.staged...) {
		keep[e.ID] = true // every entry that can boot keeps its deployment
	}
	freed := map[verity.Digest]bool{}
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
			return c, friendly(err)
		}
		c.removed = append(c.removed, "deployment "+d.ID)
		freed[d.Image] = true
	}
	if !all && len(c.removed) == 0 {
		// The prune after an upgrade that made nothing unneeded: the
		// sweeps below would find nothing it made (about 1.4 s of
		// reading the store on a TCG guest); gc does them.
		return c, nil
	}
	if _, err := u.dep.GC(ctx); err != nil {
		return c, friendly(err)
	}
	roots, err := u.store.Roots(ctx)
	if err != nil {
		return c, err
	}
	rooted := map[verity.Digest]bool{}
	for _, d := range roots {
		rooted[d] = true
	}
	imgs, err := u.store.Images(ctx)
	if err != nil {
		return c, err
	}
	for _, im := range imgs {
		if rooted[im.Digest] || u.store.InUse(im.Digest) || !(all || freed[im.Digest]) {
			continue
		}
		u.o.emit("gc", "removing image "+im.Digest.Hex()[:12])
		if err := u.store.Remove(ctx, im.Digest); err != nil {
			if errors.Is(err, objstore.ErrRooted) {
				continue // a deploy raced us
			}
			return c, err
		}
		c.removed = append(c.removed, "image "+im.Digest.Hex())
	}
	g, err := u.store.GC(ctx, objstore.GCOptions{})
	if err != nil {
		return c, err
	}
	c.bytes, c.objects = g.Bytes, g.Objects
	files, err := u.boot.GC(ctx)
	if err != nil {
		return c, friendly(err)
	}
	for _, f := range files {
		c.removed = append(c.removed, "boot "+f)
	}
	return c, nil
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
