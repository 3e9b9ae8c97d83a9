package sync

import (
	"context"
	"time"
)

// Resolved is what a reference names right now: the manifest and config a
// pull would use, without any layer.
type Resolved struct {
	Source   string            // reference, for provenance (docker://host/repo:tag, oci:DIR:tag, ...)
	Manifest string            // manifest digest (sha256:...)
	Config   string            // config digest
	Labels   map[string]string // config labels (as Pull records them)
	Created  time.Time         // the config's creation time (zero when absent)
	Layers   int               // number of layers
	Size     int64             // compressed bytes of all layers
	// Known is true when WithKnownManifest said the caller has Manifest:
	// the config was not fetched (Config, Labels, Created are empty).
	Known bool
}

// Resolve fetches and verifies the manifest (through any index, for the
// platform) and the config that ref names, and nothing else: no layer is
// requested. It takes the same options as Pull (registries.conf, mirrors,
// credentials, platform, retries); progress and space checks do not apply.
// It is what "is there an update?" costs: one manifest request (two through
// an index) and one config blob, or no blob when WithKnownManifest says
// the caller has that manifest already.
func Resolve(ctx context.Context, ref string, opts ...Option) (Resolved, error) {
	o := defaultOptions()
	for _, fn := range opts {
		fn(&o)
	}
	lim := o.limits.withDefaults()
	plat, err := parsePlatform(o.platform)
	if err != nil {
		return Resolved{}, err
	}
	img, closeSrc, err := open(ctx, ref, plat, lim, &o)
	if err != nil {
		return Resolved{}, err
	}
	defer closeSrc()
	r := Resolved{
		Source:   img.source,
		Manifest: img.manifestDigest.String(),
		Layers:   len(img.manifest.Layers),
	}
	if img.config == nil {
		r.Known = true
	} else {
		r.Config, r.Labels, r.Created = img.configDigest.String(), labels(img.config), img.config.Created.Time
	}
	for _, l := range img.manifest.Layers {
		r.Size += l.Size
	}
	return r, nil
}
