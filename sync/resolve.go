package sync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fetcher is one place images come from: a registry repository, an OCI
// layout directory or an OCI archive. Nothing it returns is trusted; the
// resolver and unpackLayer verify digests and sizes.
type fetcher interface {
	// manifest returns the manifest or index named by ref, a tag or a
	// "sha256:..." digest, reading at most max bytes (more is an error).
	manifest(ctx context.Context, ref string, max int64) ([]byte, error)
	// blob opens a blob (config or layer) by digest; size is the
	// descriptor's (-1 unknown).
	blob(ctx context.Context, d v1.Hash, size int64) (io.ReadCloser, error)
	// String names the place for messages and provenance.
	String() string
}

// image is a resolved image: a verified manifest and config, and where its
// layers come from.
type image struct {
	source string // reference for provenance
	// The top-level manifest the reference resolved to (an index or the
	// image manifest itself): what signatures sign.
	top          []byte
	topDigest    v1.Hash
	topMediaType types.MediaType
	// transport and policyRef name the image for the signature policy.
	transport      string
	policyRef      string
	manifestDigest v1.Hash
	manifest       *v1.Manifest
	configDigest   v1.Hash
	config         *v1.ConfigFile
	from           fetcher
}

// parsePlatform parses "os/arch[/variant]"; "" is the running machine.
func parsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		p := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
		if p.Architecture == "arm64" {
			p.Variant = "v8"
		}
		return p, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return v1.Platform{}, fmt.Errorf("%w: platform %q (want os/arch[/variant])", ErrBadReference, s)
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// platformMatches reports whether an index entry's platform satisfies want.
// An arm64 entry without variant matches want variant "v8" and vice versa.
func platformMatches(have *v1.Platform, want v1.Platform) bool {
	if have == nil || have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	hv, wv := have.Variant, want.Variant
	if want.Architecture == "arm64" {
		if hv == "" {
			hv = "v8"
		}
		if wv == "" {
			wv = "v8"
		}
	}
	return wv == "" || hv == wv
}

// choosePlatform picks the manifest for want from an index.
func choosePlatform(idx *v1.IndexManifest, want v1.Platform) (v1.Descriptor, error) {
	var have []string
	for _, d := range idx.Manifests {
		if platformMatches(d.Platform, want) {
			return d, nil
		}
		if d.Platform != nil {
			have = append(have, d.Platform.String())
		}
	}
	return v1.Descriptor{}, fmt.Errorf("%w: want %s, the index has [%s]", ErrNoPlatform, want.String(), strings.Join(have, " "))
}

// mediaTypeOf returns the mediaType field of a manifest or index.
func mediaTypeOf(raw []byte) (types.MediaType, error) {
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Layers    json.RawMessage `json:"layers"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadManifest, err)
	}
	if m.MediaType == "" { // optional in OCI: guess from the fields
		switch {
		case m.Manifests != nil:
			return types.OCIImageIndex, nil
		case m.Layers != nil:
			return types.OCIManifestSchema1, nil
		}
	}
	return m.MediaType, nil
}

func sha256Of(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// checkDigest verifies that content has the descriptor's digest and size.
func checkDigest(what string, b []byte, d v1.Hash, size int64) error {
	if d.Algorithm != "sha256" {
		return fmt.Errorf("%w: %s %s: unsupported digest algorithm", ErrBadManifest, what, d)
	}
	if got := sha256Of(b); got != d {
		return fmt.Errorf("%w: %s %s has digest %s", ErrDigestMismatch, what, d, got)
	}
	if size >= 0 && int64(len(b)) != size {
		return fmt.Errorf("%w: %s %s has %d bytes, its descriptor says %d", ErrDigestMismatch, what, d, len(b), size)
	}
	return nil
}

// readLimited reads all of r, failing when it holds more than max bytes.
func readLimited(r io.Reader, max int64, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: %s larger than %d bytes", ErrLimit, what, max)
	}
	return b, nil
}

// resolve follows ref (a tag or digest at from) through any index to the
// image manifest for the platform, then fetches the config. Everything
// fetched by digest is verified; a manifest fetched by tag gets its digest
// computed.
func resolve(ctx context.Context, from fetcher, ref, source string, want v1.Platform, lim Limits) (*image, error) {
	raw, err := from.manifest(ctx, ref, lim.MaxManifestSize)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(ref, "sha256:") {
		d, err := v1.NewHash(ref)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadReference, err)
		}
		if err := checkDigest("manifest", raw, d, -1); err != nil {
			return nil, err
		}
	}
	img, err := resolveRaw(ctx, from, raw, source, want, lim)
	if err != nil {
		return nil, err
	}
	img.setTop(raw)
	return img, nil
}

// setTop records the top-level manifest.
func (img *image) setTop(raw []byte) {
	img.top, img.topDigest = raw, sha256Of(raw)
	img.topMediaType, _ = mediaTypeOf(raw)
}

// resolveRaw continues resolve from a manifest or index already read.
func resolveRaw(ctx context.Context, from fetcher, raw []byte, source string, want v1.Platform, lim Limits) (*image, error) {
	for depth := 0; ; depth++ {
		if depth > 3 {
			return nil, fmt.Errorf("%w: indexes nested too deep", ErrBadManifest)
		}
		mt, err := mediaTypeOf(raw)
		if err != nil {
			return nil, err
		}
		switch mt {
		case types.OCIImageIndex, types.DockerManifestList:
			idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
			if err != nil {
				return nil, fmt.Errorf("%w: index: %w", ErrBadManifest, err)
			}
			d, err := choosePlatform(idx, want)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", source, err)
			}
			if d.Size > lim.MaxManifestSize {
				return nil, fmt.Errorf("%w: manifest %s of %d bytes", ErrLimit, d.Digest, d.Size)
			}
			if raw, err = from.manifest(ctx, d.Digest.String(), lim.MaxManifestSize); err != nil {
				return nil, err
			}
			if err := checkDigest("manifest", raw, d.Digest, d.Size); err != nil {
				return nil, err
			}
		case types.OCIManifestSchema1, types.DockerManifestSchema2:
			return imageFromManifest(ctx, from, raw, source, lim)
		default:
			return nil, fmt.Errorf("%w: unsupported manifest media type %q", ErrBadManifest, mt)
		}
	}
}

// layerMediaTypes are the layer types Pull unpacks.
var layerMediaTypes = map[types.MediaType]bool{
	types.OCILayer: true, types.OCILayerZStd: true, types.OCIUncompressedLayer: true,
	types.DockerLayer: true, types.DockerUncompressedLayer: true,
}

func imageFromManifest(ctx context.Context, from fetcher, raw []byte, source string, lim Limits) (*image, error) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrBadManifest, err)
	}
	img := &image{source: source, manifestDigest: sha256Of(raw), manifest: m, configDigest: m.Config.Digest, from: from}
	for i, l := range m.Layers {
		if len(l.URLs) > 0 {
			return nil, fmt.Errorf("%w: layer %d (%s) has foreign URLs; only registry-served layers are pulled", ErrBadManifest, i, l.Digest)
		}
		if !layerMediaTypes[l.MediaType] {
			return nil, fmt.Errorf("%w: layer %d (%s) has unsupported media type %q", ErrBadManifest, i, l.Digest, l.MediaType)
		}
		if l.Digest.Algorithm != "sha256" || l.Size < 0 {
			return nil, fmt.Errorf("%w: layer %d descriptor %s size %d", ErrBadManifest, i, l.Digest, l.Size)
		}
	}
	if m.Config.Size > lim.MaxManifestSize {
		return nil, fmt.Errorf("%w: config %s of %d bytes", ErrLimit, m.Config.Digest, m.Config.Size)
	}
	return img, nil
}

// fetchConfig fetches, verifies and parses the image's config, which
// every use of an image but a Resolve of a known manifest needs. It is
// separate from the manifest so that a check that finds a manifest it
// already has costs one request, not two.
func (img *image) fetchConfig(ctx context.Context, lim Limits) error {
	m := img.manifest
	rc, err := img.from.blob(ctx, m.Config.Digest, m.Config.Size)
	if err != nil {
		return fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	cfgRaw, err := readLimited(rc, lim.MaxManifestSize, "config")
	rc.Close()
	if err != nil {
		return fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	if err := checkDigest("config", cfgRaw, m.Config.Digest, m.Config.Size); err != nil {
		return err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(cfgRaw))
	if err != nil {
		return fmt.Errorf("%w: config: %w", ErrBadManifest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("%w: %d layers but %d diff_ids", ErrBadManifest, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, d := range cfg.RootFS.DiffIDs {
		if d.Algorithm != "sha256" {
			return fmt.Errorf("%w: diff_id %d: %s", ErrBadManifest, i, d)
		}
	}
	img.config = cfg
	return nil
}
