// Package sync gets OS images into the object store: it resolves a
// reference (a registry, an OCI layout directory or an OCI archive), fetches
// and verifies the manifest, config and layers, streams each layer through
// decompression and tar parsing into store objects and an in-memory merged
// tree, and commits the tree as a composefs image.
//
// Layer content never becomes a path on the host: the merged tree lives in
// memory and regular files go to digest-named objects, so a hostile layer
// cannot write outside the store. Every blob is checked against its
// descriptor's digest and size, and every layer's uncompressed digest
// against the config's rootfs.diff_ids, before anything derived from it is
// applied to the tree.
package sync

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"time"
)

// Errors returned by Pull, wrapped with the reference, digest or path.
var (
	ErrBadReference   = errors.New("sync: invalid image reference")
	ErrUnsafeLayer    = errors.New("sync: unsafe layer entry")
	ErrBadLayer       = errors.New("sync: malformed layer")
	ErrLimit          = errors.New("sync: limit exceeded")
	ErrDigestMismatch = errors.New("sync: digest mismatch")
	ErrBadManifest    = errors.New("sync: malformed manifest or config")
	ErrNoPlatform     = errors.New("sync: no image for this platform")
	ErrInsecure       = errors.New("sync: registry not configured insecure")
	ErrNotFound       = errors.New("sync: not found")
	ErrFetch          = errors.New("sync: fetch failed")
	ErrNoSpace        = errors.New("sync: not enough free space")
	ErrBadRecord      = errors.New("sync: malformed layer record")
	// ErrUnauthorized: the registry refused the request for lack of (or
	// with wrong) credentials (HTTP 401/403, also wrapped by ErrFetch).
	ErrUnauthorized = errors.New("sync: registry refused the credentials")
	// ErrUnreachable: no connection to the registry (refused, no route,
	// DNS, timeout), also wrapped by ErrFetch.
	ErrUnreachable = errors.New("sync: registry unreachable")
)

// Limits bound what one image can make a pull do. Zero fields take the
// values of DefaultLimits.
type Limits struct {
	MaxManifestSize int64 // bytes of a manifest, index or config
	MaxLayerSize    int64 // uncompressed bytes of one layer
	MaxFiles        int   // entries of one layer and files of the merged tree
	MaxXattrSize    int   // composefs's per-inode xattr budget: 12 + sum(7 + len(name) + len(value))
	MaxWindow       int   // zstd decoder window
}

// DefaultLimits returns limits generous for OS images and small enough to
// stop decompression bombs.
func DefaultLimits() Limits {
	return Limits{
		MaxManifestSize: 4 << 20,
		MaxLayerSize:    64 << 30,
		MaxFiles:        4_000_000,
		MaxXattrSize:    32767,
		MaxWindow:       64 << 20,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxManifestSize > 0 {
		d.MaxManifestSize = l.MaxManifestSize
	}
	if l.MaxLayerSize > 0 {
		d.MaxLayerSize = l.MaxLayerSize
	}
	if l.MaxFiles > 0 {
		d.MaxFiles = l.MaxFiles
	}
	if l.MaxXattrSize > 0 {
		d.MaxXattrSize = l.MaxXattrSize
	}
	if l.MaxWindow > 0 {
		d.MaxWindow = l.MaxWindow
	}
	return d
}

// Space describes what a pull is about to write, for a free-space check.
type Space struct {
	Dir       string // the store root
	Fetch     int64  // compressed bytes still to download
	Unpack    int64  // estimated bytes of new objects (Fetch × UnpackFactor)
	Free      int64  // free bytes in Dir's filesystem (statfs, for unprivileged use)
	ReusedAll bool   // every layer is already unpacked
}

// UnpackFactor estimates uncompressed bytes from compressed bytes for the
// free-space check (the true size is only known after unpacking).
const UnpackFactor = 3

// Option configures Pull.
type Option func(*options)

type options struct {
	log         *slog.Logger
	platform    string
	insecure    []string
	regConf     string
	regConfDir  string
	policy      string
	registriesD string
	enforce     bool
	accept      func(Result) error
	authFiles   []string
	limits      Limits
	progress    func(Event)
	retries     int
	backoff     time.Duration
	stall       time.Duration
	spaceCheck  func(Space) error
	userAgent   string
	env         func(string) string
	noVerify    bool
	known       func(manifest string) bool
}

// knows reports whether the caller of Resolve already has img's manifest.
func (o *options) knows(img *image) bool {
	return o.known != nil && o.known(img.manifestDigest.String())
}

func defaultOptions() options {
	return options{
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		retries:   4,
		backoff:   time.Second,
		stall:     60 * time.Second,
		userAgent: "twinroot",
		env:       os.Getenv,
	}
}

// WithKnownManifest makes Resolve skip the config when known says the
// caller already has the manifest (sha256:...) it resolved: Resolved.Known
// is true then, and Config, Labels and Created are empty. Asking whether
// anything is new then costs one manifest request (two through an index).
// Pull ignores it.
func WithKnownManifest(known func(manifest string) bool) Option {
	return func(o *options) { o.known = known }
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithPlatform selects the image of an index for "os/arch[/variant]"
// instead of the running machine's platform.
func WithPlatform(p string) Option { return func(o *options) { o.platform = p } }

// WithInsecureRegistries allows plain HTTP and skips TLS verification for
// the named registries ("host[:port]"), on top of those registries.conf
// marks insecure.
func WithInsecureRegistries(hosts ...string) Option {
	return func(o *options) { o.insecure = append(o.insecure, hosts...) }
}

// WithTLSVerify(false) allows plain HTTP and skips TLS verification for
// the registry the reference names (not its mirrors): the --tls-verify=false
// of skopeo and podman.
func WithTLSVerify(verify bool) Option { return func(o *options) { o.noVerify = !verify } }

// WithRegistriesConf reads mirrors and insecure settings from path instead
// of $CONTAINERS_REGISTRIES_CONF or /etc/containers/registries.conf; ""
// keeps the default, "-" reads none.
func WithRegistriesConf(path string) Option { return func(o *options) { o.regConf = path } }

// WithRegistriesConfDir reads registries.conf drop-in files from dir
// instead of the default registries.conf.d directories.
func WithRegistriesConfDir(dir string) Option { return func(o *options) { o.regConfDir = dir } }

// WithPolicy evaluates the containers-policy.json at path instead of
// /etc/containers/policy.json (skopeo's and podman's --policy). A missing
// default file counts as insecureAcceptAnything; a missing named file is
// an error.
func WithPolicy(path string) Option { return func(o *options) { o.policy = path } }

// WithRegistriesD reads lookaside signature stores and
// use-sigstore-attachments from the registries.d directory dir instead of
// /etc/containers/registries.d (skopeo's --registries.d).
func WithRegistriesD(dir string) Option { return func(o *options) { o.registriesD = dir } }

// WithEnforceSignaturePolicy refuses an image that the policy accepts
// without verifying a signature (insecureAcceptAnything), as bootc's
// --enforce-container-sigpolicy does; images the policy rejects are
// refused either way.
func WithEnforceSignaturePolicy(enforce bool) Option { return func(o *options) { o.enforce = enforce } }

// WithAccept is called once the image is resolved and the signature policy
// has accepted it, before anything is fetched into the store; an error
// stops the pull. The updater checks versions here (trust.CheckReplace).
func WithAccept(fn func(Result) error) Option { return func(o *options) { o.accept = fn } }

// WithAuthFiles puts containers-auth.json files before the default ones.
func WithAuthFiles(paths ...string) Option {
	return func(o *options) { o.authFiles = append(o.authFiles, paths...) }
}

// WithLimits overrides the limits on untrusted input.
func WithLimits(l Limits) Option { return func(o *options) { o.limits = l } }

// WithProgress receives progress events. It is called from the pulling
// goroutine and must not block for long.
func WithProgress(fn func(Event)) Option { return func(o *options) { o.progress = fn } }

// WithRetry sets how often a failed request or layer download is tried
// again, and the first wait (doubled each time).
func WithRetry(retries int, backoff time.Duration) Option {
	return func(o *options) { o.retries, o.backoff = retries, backoff }
}

// WithStallTimeout aborts a download that receives nothing for d (then
// retried like other network failures).
func WithStallTimeout(d time.Duration) Option { return func(o *options) { o.stall = d } }

// WithSpaceCheck replaces the free-space check done before fetching. The
// default fails with ErrNoSpace when Fetch+Unpack exceeds Free; a caller
// adds the boot partition here.
func WithSpaceCheck(fn func(Space) error) Option { return func(o *options) { o.spaceCheck = fn } }

// WithUserAgent sets the HTTP User-Agent.
func WithUserAgent(ua string) Option { return func(o *options) { o.userAgent = ua } }

// WithEnv replaces os.Getenv for REGISTRY_AUTH_FILE and
// CONTAINERS_REGISTRIES_CONF (tests); the other variables
// containers-auth.json(5) names are read by go.podman.io/image itself.
func WithEnv(getenv func(string) string) Option { return func(o *options) { o.env = getenv } }

// Event is one progress report of a pull. Kind tells which fields are set.
type Event struct {
	Kind     string `json:"kind"` // "resolved", "layer-start", "layer-progress", "layer-done", "committing", "done"
	Ref      string `json:"ref,omitempty"`
	Manifest string `json:"manifest,omitempty"`
	Layers   int    `json:"layers,omitempty"` // number of layers (resolved)
	Layer    int    `json:"layer"`            // 0-based layer index
	Digest   string `json:"digest,omitempty"` // layer (compressed) digest, or the image's composefs digest for "done"
	Size     int64  `json:"size,omitempty"`   // compressed size
	Bytes    int64  `json:"bytes,omitempty"`  // compressed bytes read so far
	Files    int    `json:"files,omitempty"`
	New      int    `json:"objects_new,omitempty"`
	Reused   int    `json:"objects_reused,omitempty"`
	Cached   bool   `json:"cached,omitempty"` // layer replayed from its record, not fetched
	Attempt  int    `json:"attempt,omitempty"`
}
