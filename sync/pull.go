package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	"go.podman.io/image/v5/types"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/trust"
	"github.com/twinroot/twinroot/verity"
)

var _ ObjectAdder = (*objstore.Staging)(nil)

// Result describes a committed pull.
type Result struct {
	Digest        verity.Digest // composefs digest of the committed image
	Source        string        // reference, for provenance
	Manifest      string        // manifest digest
	Config        string        // config digest
	Layers        int
	LayersCached  int   // layers replayed from records, not fetched
	BytesFetched  int64 // compressed layer bytes downloaded (including retries)
	ObjectsNew    int
	ObjectsReused int
	// Trust is how the signature policy judged the image (checked before
	// anything was fetched into the store).
	Trust trust.Verdict
	// Version is the image's version label, creation time and signed
	// floor, for anti-downgrade checks.
	Version trust.Version
	// TopManifest is the digest the reference resolved to (an index, or
	// Manifest itself) and the one signatures sign.
	TopManifest string
}

// Index returns the index digest when the image was chosen from an index
// ("" otherwise).
func (r Result) Index() string {
	if r.TopManifest == r.Manifest {
		return ""
	}
	return r.TopManifest
}

// Provenance is what sync records in objstore.ImageMeta.Extra for each
// pulled image.
type Provenance struct {
	// Trust is the signature policy's verdict at pull time.
	Trust *trust.Verdict `json:"trust,omitempty"`
	// Version is the image's version, creation time and signed floor.
	Version trust.Version `json:"version,omitzero"`
	// Index is the digest of the index the image manifest was chosen from.
	Index string `json:"index,omitempty"`
}

// ProvenanceOf decodes what Pull recorded in an image's meta.json; an
// image committed by something else (store import) has none, and gets the
// version from its labels with Trust nil.
func ProvenanceOf(meta objstore.ImageMeta) (Provenance, error) {
	var p Provenance
	if len(meta.Extra) > 0 {
		if err := json.Unmarshal(meta.Extra, &p); err != nil {
			return p, fmt.Errorf("%w: image meta extra: %w", ErrBadRecord, err)
		}
	}
	if p.Version == (trust.Version{}) {
		p.Version = trust.VersionOf(meta.Labels, time.Time{})
	}
	return p, nil
}

// checkpointer is the optional part of a staging that makes the objects of
// a completed layer durable and visible in objects/ before the commit, so
// that a pull interrupted later finds them again through the layer record.
type checkpointer interface {
	Checkpoint(ctx context.Context) error
}

// Pull fetches the image ref into the store and commits it, returning the
// composefs digest. ref is a registry reference ("host/repo:tag",
// "host/repo@sha256:...", optionally prefixed "docker://"), "oci:DIR[:tag]"
// or "oci-archive:FILE[:tag]". On any error the store is left without the
// image (objects already written stay as garbage for gc, or for a later
// pull of the same layers).
func Pull(ctx context.Context, store *objstore.Store, ref string, opts ...Option) (res Result, err error) {
	o := defaultOptions()
	for _, fn := range opts {
		fn(&o)
	}
	o.known = nil // a pull needs the config whatever the caller has
	lim := o.limits.withDefaults()
	plat, err := parsePlatform(o.platform)
	if err != nil {
		return res, err
	}
	img, closeSrc, err := open(ctx, ref, plat, lim, &o)
	if err != nil {
		return res, err
	}
	defer closeSrc()
	res = Result{Source: img.source, Manifest: img.manifestDigest.String(), Config: img.configDigest.String(), Layers: len(img.manifest.Layers),
		Version: trust.VersionOf(img.config.Config.Labels, img.config.Created.Time), TopManifest: img.topDigest.String()}
	o.emit(Event{Kind: "resolved", Ref: img.source, Manifest: res.Manifest, Layers: res.Layers})
	o.log.Info("resolved", "ref", img.source, "manifest", res.Manifest, "layers", res.Layers)

	// The signature policy, before anything is written to the store.
	if res.Trust, err = o.checkTrust(ctx, img); err != nil {
		return res, err
	}
	if o.accept != nil {
		if err := o.accept(res); err != nil {
			return res, err
		}
	}

	alg := store.Algorithm()
	recDir, err := store.StateDir("layers")
	if err != nil {
		return res, err
	}

	// Free space, before anything is fetched.
	sp := Space{Dir: store.Root(), ReusedAll: true}
	for i, l := range img.manifest.Layers {
		if _, err := os.Stat(recordPath(recDir, img.config.RootFS.DiffIDs[i], alg)); err != nil {
			sp.Fetch += l.Size
			sp.ReusedAll = false
		}
	}
	sp.Unpack = sp.Fetch * UnpackFactor
	var sfs unix.Statfs_t
	if err := unix.Statfs(store.Root(), &sfs); err != nil {
		return res, fmt.Errorf("statfs %s: %w", store.Root(), err)
	}
	sp.Free = int64(sfs.Bavail) * int64(sfs.Bsize)
	check := o.spaceCheck
	if check == nil {
		check = CheckSpace
	}
	if err := check(sp); err != nil {
		return res, err
	}

	st, err := store.NewStaging(ctx)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			st.Abort()
		}
	}()
	t := newTree(lim.MaxFiles)
	recorded := map[verity.Digest]int{} // object → a cached layer holding it
	for i, desc := range img.manifest.Layers {
		diffID := img.config.RootFS.DiffIDs[i]
		t.startLayer()
		entries, cached, err := o.layerEntries(ctx, img, i, desc, diffID, st, recDir, alg, lim, &res)
		if err != nil {
			return res, err
		}
		if cached {
			res.LayersCached++
			for _, e := range entries {
				if !e.Digest.IsZero() {
					recorded[e.Digest] = i
				}
			}
		}
		for j := range entries {
			if err := t.apply(&entries[j]); err != nil {
				return res, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err)
			}
		}
	}
	root := t.finish()
	if err := o.linkRecorded(ctx, img, root, recorded, st, lim, &res); err != nil {
		return res, err
	}
	o.emit(Event{Kind: "committing", Ref: img.source})
	extra, err := json.Marshal(Provenance{Trust: &res.Trust, Version: res.Version, Index: res.Index()})
	if err != nil {
		return res, err
	}
	meta := objstore.ImageMeta{Source: img.source, Manifest: res.Manifest, Config: res.Config, Labels: labels(img.config), Extra: extra}
	d, err := st.Commit(ctx, root, meta)
	if err != nil {
		return res, err
	}
	res.Digest = d
	o.emit(Event{Kind: "done", Ref: img.source, Digest: d.Hex(), New: res.ObjectsNew, Reused: res.ObjectsReused})
	return res, nil
}

// CheckSpace is the default free-space check: the estimated unpacked size
// of the layers still to fetch must fit in the store's free space.
func CheckSpace(sp Space) error {
	if sp.Unpack > sp.Free {
		return fmt.Errorf("%w in %s: %d MiB free, about %d MiB needed to unpack %d MiB of layers still to fetch",
			ErrNoSpace, sp.Dir, sp.Free>>20, sp.Unpack>>20, sp.Fetch>>20)
	}
	return nil
}

func (o *options) emit(e Event) {
	if o.progress != nil {
		o.progress(e)
	}
}

// labels keeps the config labels for provenance, skipping huge values.
func labels(c *v1.ConfigFile) map[string]string {
	if len(c.Config.Labels) == 0 {
		return nil
	}
	out := map[string]string{}
	for k, v := range c.Config.Labels {
		if len(k)+len(v) <= 4096 && len(out) < 256 {
			out[k] = v
		}
	}
	return out
}

// layerEntries returns the entries of layer i: from its record when one
// exists (its objects are linked later, by linkRecorded, for the files that
// survive in the final tree), else by fetching and unpacking the layer,
// after which the record is saved.
func (o *options) layerEntries(ctx context.Context, img *image, i int, desc v1.Descriptor, diffID v1.Hash,
	st *objstore.Staging, recDir string, alg verity.Algorithm, lim Limits, res *Result) ([]entry, bool, error) {
	rec, err := loadRecord(recDir, diffID, alg, lim)
	if err != nil {
		o.log.Warn("ignoring unreadable layer record", "err", err)
	}
	if rec != nil {
		o.emit(Event{Kind: "layer-done", Layer: i, Digest: desc.Digest.String(), Size: desc.Size, Files: len(rec.Entries), Cached: true})
		return rec.Entries, true, nil
	}

	entries, stats, err := o.fetchLayer(ctx, img, i, desc, diffID, st, lim, res)
	if err != nil {
		return nil, false, err
	}
	res.ObjectsNew += stats.ObjectsNew
	res.ObjectsReused += stats.ObjectsReused
	o.emit(Event{Kind: "layer-done", Layer: i, Digest: desc.Digest.String(), Size: desc.Size, Bytes: desc.Size,
		Files: stats.Entries, New: stats.ObjectsNew, Reused: stats.ObjectsReused})
	// Make the layer's objects durable and findable, then remember it.
	if cp, ok := any(st).(checkpointer); ok {
		if err := cp.Checkpoint(ctx); err != nil {
			o.log.Warn("checkpoint failed; not recording the layer", "layer", desc.Digest, "err", err)
			return entries, false, nil
		}
	}
	if err := saveRecord(recDir, &layerRecord{Version: recordVersion, DiffID: diffID, Algorithm: alg.String(), Entries: entries}, alg); err != nil {
		o.log.Warn("cannot save layer record", "layer", desc.Digest, "err", err)
	}
	return entries, false, nil
}

// fetchLayer downloads and unpacks layer i, retrying transfer failures.
func (o *options) fetchLayer(ctx context.Context, img *image, i int, desc v1.Descriptor, diffID v1.Hash,
	st *objstore.Staging, lim Limits, res *Result) ([]entry, layerStats, error) {
	var entries []entry
	var stats layerStats
	attempt := 0
	err := withRetry(ctx, o, "layer "+desc.Digest.String(), func() error {
		attempt++
		o.emit(Event{Kind: "layer-start", Layer: i, Digest: desc.Digest.String(), Size: desc.Size, Attempt: attempt})
		rc, err := img.from.blob(ctx, desc.Digest, desc.Size)
		if err != nil {
			return &permanentError{err} // the request was retried already
		}
		defer rc.Close()
		var lastEmit time.Time
		var n int64
		entries, stats, err = unpackLayer(ctx, rc, desc, diffID, st, lim, func(b int64, s layerStats) {
			n = b
			if now := time.Now(); now.Sub(lastEmit) >= 100*time.Millisecond {
				lastEmit = now
				o.emit(Event{Kind: "layer-progress", Layer: i, Digest: desc.Digest.String(), Size: desc.Size, Bytes: b,
					Files: s.Entries, New: s.ObjectsNew, Reused: s.ObjectsReused})
			}
		})
		if err == nil {
			n = desc.Size
		}
		res.BytesFetched += n
		return err
	})
	if err != nil {
		return nil, stats, fmt.Errorf("layer %d: %w", i, err)
	}
	return entries, stats, nil
}

// linkRecorded links the objects of the final tree that came from layer
// records. Objects deleted by gc since the record was written are fetched
// again by unpacking their layer once more (its entries are already known;
// only the content is needed).
func (o *options) linkRecorded(ctx context.Context, img *image, root *erofs.Node, recorded map[verity.Digest]int,
	st *objstore.Staging, lim Limits, res *Result) error {
	refetch := map[int]bool{}
	var ds []verity.Digest
	var sizes []int64
	seen := map[verity.Digest]bool{}
	err := root.Walk(func(n *erofs.Node) error {
		if n.Link != nil || n.Digest.IsZero() || seen[n.Digest] || st.Has(n.Digest) {
			return nil
		}
		if _, ok := recorded[n.Digest]; !ok {
			return nil // Commit reports it
		}
		seen[n.Digest] = true
		ds = append(ds, n.Digest)
		sizes = append(sizes, int64(n.Size))
		return nil
	})
	if err != nil {
		return err
	}
	// In batches, on a few goroutines: each batch is one pass under the
	// store's shared gc lock, and the links of different batches run in
	// parallel.
	const batch = 512
	found := make([]bool, len(ds))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for lo := 0; lo < len(ds); lo += batch {
		hi := min(lo+batch, len(ds))
		g.Go(func() error {
			f, err := st.LinkObjects(gctx, ds[lo:hi], sizes[lo:hi])
			copy(found[lo:hi], f)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, d := range ds {
		if found[i] {
			res.ObjectsReused++
			continue
		}
		l := recorded[d]
		if !refetch[l] {
			o.log.Info("object of a recorded layer is gone; fetching the layer again", "layer", img.manifest.Layers[l].Digest, "object", d)
		}
		refetch[l] = true
	}
	for i := range refetch {
		desc := img.manifest.Layers[i]
		_, stats, err := o.fetchLayer(ctx, img, i, desc, img.config.RootFS.DiffIDs[i], st, lim, res)
		if err != nil {
			return err
		}
		res.ObjectsNew += stats.ObjectsNew
		res.LayersCached--
	}
	return nil
}

// open resolves ref to a verified manifest and config.
func open(ctx context.Context, ref string, plat v1.Platform, lim Limits, o *options) (*image, func(), error) {
	var local func(string) (*ociFetcher, string, func(), error)
	var arg, transport string
	switch {
	case strings.HasPrefix(ref, "oci:"):
		local, arg, transport = openOCIDir, strings.TrimPrefix(ref, "oci:"), trust.TransportOCI
	case strings.HasPrefix(ref, "oci-archive:"):
		local, arg, transport = openOCIArchive, strings.TrimPrefix(ref, "oci-archive:"), trust.TransportOCIArchive
	}
	if local != nil {
		f, tag, closeFn, err := local(arg)
		if err != nil {
			return nil, nil, err
		}
		img, err := resolveOCI(ctx, f, tag, ref, plat, lim)
		if err == nil && !o.knows(img) {
			err = img.fetchConfig(ctx, lim)
		}
		if err != nil {
			closeFn()
			return nil, nil, err
		}
		img.transport, img.policyRef = transport, arg
		return img, closeFn, nil
	}
	img, err := openRegistry(ctx, ref, plat, lim, o)
	return img, func() {}, err
}

// openRegistry resolves a registry reference: a short name through
// registries.conf's aliases or search registries, then each name through
// its mirrors before the registry itself.
func openRegistry(ctx context.Context, ref string, plat v1.Platform, lim Limits, o *options) (*image, error) {
	s := strings.TrimPrefix(ref, "docker://")
	if strings.Contains(s, "://") {
		return nil, fmt.Errorf("%w: %q (want docker://, oci: or oci-archive:)", ErrBadReference, ref)
	}
	sys := o.systemContext()
	// Read registries.conf afresh: c/image caches it per process.
	if _, err := sysregistriesv2.TryUpdatingCache(sys); err != nil {
		return nil, fmt.Errorf("registries.conf (%s): %w", sysregistriesv2.ConfigurationSourceDescription(sys), err)
	}
	cands, err := candidates(sys, s)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, c := range cands {
		img, err := openCandidate(ctx, c, sys, plat, lim, o)
		if err == nil {
			if len(cands) > 1 || c.ref.String() != s {
				o.log.Info("resolved name", "ref", ref, "as", c.ref.String())
			}
			return img, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(cands) == 1 {
			return nil, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.ref, err))
	}
	return nil, errors.Join(errs...)
}

// openCandidate resolves one fully qualified name, trying its endpoints in
// order.
func openCandidate(ctx context.Context, c candidate, sys *types.SystemContext, plat v1.Platform, lim Limits, o *options) (*image, error) {
	host := reference.Domain(c.ref)
	if o.noVerify {
		o.insecure = append(o.insecure, host)
	}
	identifier := ""
	if d, ok := c.ref.(reference.Digested); ok {
		identifier = d.Digest().String()
	} else if t, ok := c.ref.(reference.Tagged); ok {
		identifier = t.Tag()
	}
	source := "docker://" + c.ref.String()
	var errs []error
	for i, ep := range c.endpoints {
		auth := func(repo string) (authn.Authenticator, error) { return credentials(sys, o.authFiles, repo) }
		f, err := newRegistryFetcher(ctx, ep, i == len(c.endpoints)-1, o, auth)
		if err == nil {
			var img *image
			// The config from the same endpoint, so that one that fails
			// it moves on to the next like any other failure.
			if img, err = resolve(ctx, f, identifier, source, plat, lim); err == nil && !o.knows(img) {
				err = img.fetchConfig(ctx, lim)
			}
			if err == nil {
				if ep.mirror {
					o.log.Info("using mirror", "mirror", ep.repo, "ref", source)
				}
				img.transport, img.policyRef = trust.TransportDocker, c.ref.String()
				return img, nil
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(c.endpoints) == 1 {
			return nil, err
		}
		o.log.Warn("endpoint failed", "endpoint", ep.repo, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", ep.repo, err))
	}
	return nil, errors.Join(errs...)
}

// checkTrust evaluates the signature policy for the image's top-level
// manifest, before anything is written to the store.
func (o *options) checkTrust(ctx context.Context, img *image) (trust.Verdict, error) {
	sys := o.systemContext()
	host, _, _ := strings.Cut(img.policyRef, "/")
	if img.transport == trust.TransportDocker && slices.Contains(o.insecure, host) {
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolTrue
	}
	// c/image finds what containers-auth.json and the credential helpers
	// hold by itself; hand it what only sync knows (--authfile,
	// /etc/containers/auth.json), when it reads signatures.
	creds := func() (*types.DockerAuthConfig, error) {
		repo := img.policyRef
		if i := strings.IndexByte(repo, '@'); i >= 0 {
			repo = repo[:i]
		} else if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
			repo = repo[:i]
		}
		a, own, err := credentialsFrom(sys, o.authFiles, repo)
		if err != nil || !own || a == authn.Anonymous {
			return nil, err
		}
		cfg, err := a.Authorization()
		if err != nil {
			return nil, err
		}
		return &types.DockerAuthConfig{Username: cfg.Username, Password: cfg.Password, IdentityToken: cfg.IdentityToken}, nil
	}
	v, err := trust.Check(ctx, trust.Image{
		Transport: img.transport, Reference: img.policyRef,
		Digest: img.topDigest.String(), Manifest: img.top, MediaType: string(img.topMediaType),
	}, trust.Options{PolicyPath: o.policy, RegistriesDir: o.registriesD, Enforce: o.enforce, System: sys, Credentials: creds})
	if err != nil {
		return v, err
	}
	o.log.Info("signature policy", "ref", img.source, "manifest", img.topDigest.String(), "verdict", v.String())
	return v, nil
}
